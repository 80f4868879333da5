"""The connection budget against the real Dovecot (10 connections per user, IP and
protocol): concurrent IMAP and POP3 requests of one mailbox never exceed it, and the
user's own mail apps keep their connections."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from mailboxes import Mailbox
from mailstack_env import connection_limit_refusals

pytestmark = pytest.mark.mailstack


def raw(subject: str) -> bytes:
    return (f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n\r\n"
            "body\r\n").encode()  # fmt: skip


async def test_concurrent_imap_and_pop3_reads_stay_under_the_servers_limit(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    for i in range(3):
        mailbox.append(stack, raw(f"m{i}"))

    async def one(proto: str) -> Any:
        return await client.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)

    results = await asyncio.gather(*(one(("imap", "pop3")[i % 2]) for i in range(60)))
    assert [r.status_code for r in results] == [200] * 60, results[0].text
    assert all(len(r.json()["items"]) == 3 for r in results)
    # The read of a message holds its POP3 session until the answer is written.
    [first] = (await one("pop3")).json()["items"][:1]
    reads = await asyncio.gather(
        *(client.get(f"/v1/messages/{first['id']}/raw", headers=mailbox.auth) for _ in range(30))
    )
    assert {r.status_code for r in reads} == {200}
    assert all(r.content.endswith(b"body\r\n") for r in reads)
    if stack["MAILSTACK_SERVER"] == "dovecot":  # Cyrus logs to syslog only
        assert connection_limit_refusals(stack, mailbox.address) == 0


async def test_pop3_queues_behind_the_users_own_clients(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """The user's mail app holds 8 POP3 connections: the gateway lives with the other 2."""
    mailbox.append(stack, raw("hello"))
    others = [mailbox.pop3(stack) for _ in range(8)]
    try:
        results = await asyncio.gather(
            *(
                client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
                for _ in range(12)
            )  # fmt: skip
        )
    finally:
        for conn in others:
            conn.quit()
    assert [r.status_code for r in results] == [200] * 12, results[0].text
    assert all(r.json()["items"][0]["subject"] == "hello" for r in results)


CYRUS_POP3_COUNT = pytest.mark.dovecot(
    "Cyrus's pop3d counts the login being made and sessions a moment after their LOGOUT: "
    "'all taken' does not hold still (test_cyrus.py has the limit over IMAP + POP3)"
)


@pytest.mark.parametrize("proto", ["imap", pytest.param("pop3", marks=CYRUS_POP3_COUNT)])
async def test_all_connections_taken_by_the_user_waits_then_answers_503(
    proto: str, make_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """The user's own clients hold all 10: the gateway retries within its wait (and gets
    in when one of them leaves), else answers 503 with Retry-After; never a 502."""
    mailbox.append(stack, raw("full"))
    opener = mailbox.imap if proto == "imap" else mailbox.pop3
    others = [opener(stack) for _ in range(10)]

    def bye(conn: Any) -> None:
        if proto == "imap":
            conn.logout()
        else:
            conn.quit()

    try:
        async with make_client(command_timeout=1.5) as c:
            r = await c.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["code"] == "upstream-unavailable"
        async with make_client(command_timeout=10) as c:
            timer = threading.Timer(0.5, bye, (others.pop(),))
            timer.start()
            r = await c.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
            timer.join()
            assert r.status_code == 200, r.text
            assert [i["subject"] for i in r.json()["items"]] == ["full"]
    finally:
        for conn in others:
            bye(conn)


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_spellings_of_one_user_share_its_budget(
    proto: str, client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """Dovecot finds a user whatever the case of the name (and counts its connections
    so): ALICE@ and alice@ are one mailbox, with one budget, not one each."""
    body = b"x" * 998 + b"\r\n"
    mailbox.append(stack, raw("big") + body * 2000)
    shouted = Mailbox(mailbox.address.upper(), mailbox.password)
    boxes = (mailbox, shouted)
    r = await client.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
    [item] = r.json()["items"]

    async def one(box: Mailbox) -> Any:
        return await client.get(f"/v1/messages/{item['id']}/raw", headers=box.auth)

    results = await asyncio.gather(*(one(boxes[i % 2]) for i in range(60)))
    assert [r.status_code for r in results] == [200] * 60, results[0].text
    assert all(r.content.endswith(body) for r in results)
    if stack["MAILSTACK_SERVER"] == "dovecot":  # Cyrus logs to syslog only
        assert connection_limit_refusals(stack, mailbox.address) == 0
