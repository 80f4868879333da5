"""Abuse cases against the real stack: identity-bound idempotency, auth first, login
limits counted at Dovecot itself, strict addresses, contract codes, Redis down."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack

STATE_KEY = "test-state-key-0123456789abcdef-0123"


def failed_logins(stack: dict[str, str], user: str, settle: float = 0.3) -> int:
    """Refused logins of ``user`` that reached Dovecot (its auth log), any protocol."""
    time.sleep(settle)
    log = Path(stack["MAILSTACK_DIR"]) / "log" / "dovecot.log"
    needle = f"passwd-file({user},"
    return sum(
        1 for line in log.read_text(errors="replace").splitlines()
        if needle in line and "Password mismatch" in line
    )  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_idempotent_replay_needs_the_same_credentials(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    draft = {"to": [other_mailbox.address], "subject": "once", "text": "only once"}
    key = {"Idempotency-Key": "bound-to-identity"}
    first = await client.post("/v1/send", json=draft, headers={**mailbox.auth, **key})
    assert first.status_code == 200, first.text
    wrong = Mailbox(mailbox.address, "wrong-password").auth
    # Same key and body, wrong password: a new key for this identity; the server says 401.
    r = await client.post("/v1/send", json=draft, headers={**wrong, **key})
    assert r.status_code == 401 and r.json()["code"] == "auth-failed"
    assert "idempotent-replayed" not in r.headers
    # Another body, wrong password: still 401, never a 409 that reveals the key exists.
    r = await client.post("/v1/send", json={**draft, "text": "x"}, headers={**wrong, **key})
    assert r.status_code == 401
    # The owner still gets the replay, whatever the case of the user name (the server
    # finds the same mailbox: a retry spelt otherwise sent a second copy).
    for user in (mailbox.address, mailbox.address.upper()):
        owner = Mailbox(user, mailbox.password).auth
        again = await client.post("/v1/send", json=draft, headers={**owner, **key})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
    assert len(other_mailbox.wait_for(stack)) == 1
    await asyncio.sleep(0.5)
    assert len(other_mailbox.messages(stack)) == 1


async def test_concurrent_sends_with_one_key_send_once(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    draft = {"to": [other_mailbox.address], "subject": "race", "text": "once"}
    headers = {**mailbox.auth, "Idempotency-Key": "race-1"}
    answers = await asyncio.gather(
        *(client.post("/v1/send", json=draft, headers=headers) for _ in range(6))
    )
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert len({r.json()["message_id"] for r in answers}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 5
    other_mailbox.wait_for(stack)
    await asyncio.sleep(0.5)
    assert len(other_mailbox.messages(stack)) == 1


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_batch_delete_of_malformed_ids_checks_credentials_first(
    protocol: str, client: Any, mailbox: Mailbox
) -> None:
    body = {"ids": ["not-an-id", "zzzz"]}
    wrong = Mailbox(mailbox.address, "wrong-password").auth
    r = await client.post(
        "/v1/messages/delete", json=body, params={"protocol": protocol}, headers=wrong
    )
    assert r.status_code == 401 and r.json()["code"] == "auth-failed"
    r = await client.post(
        "/v1/messages/delete", json=body, params={"protocol": protocol}, headers=mailbox.auth
    )
    assert r.status_code == 200
    assert [(x["status"], x["code"]) for x in r.json()["results"]] == [(400, "invalid-id")] * 2


async def test_pop3_folders_check_credentials(client: Any, mailbox: Mailbox) -> None:
    wrong = Mailbox(mailbox.address, "wrong-password").auth
    r = await client.get("/v1/folders", params={"protocol": "pop3"}, headers=wrong)
    assert r.status_code == 401
    r = await client.get("/v1/folders", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 200 and r.json()["items"][0]["name"] == "INBOX"


@pytest.mark.dovecot("counts the refused logins in Dovecot's log")
async def test_guessers_reach_dovecot_at_most_the_limit_and_the_owner_is_served(
    stack: dict[str, str], make_client: Any, mailbox: Mailbox
) -> None:
    async with make_client(auth_failures_max=5, auth_failures_per_client=5) as client:
        # The owner's app logs in first: its unproven secret costs one of the five.
        owner = await client.get("/v1/folders", headers=mailbox.auth)
        assert owner.status_code == 200
        wrong = Mailbox(mailbox.address, "wrong-password").auth

        async def guess(protocol: str) -> int:
            r = await client.get("/v1/messages", params={"protocol": protocol}, headers=wrong)
            assert r.headers["content-type"] == "application/problem+json"
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) > 0
            return int(r.status_code)

        codes = await asyncio.gather(*(guess(("imap", "pop3")[i % 2]) for i in range(30)))
        assert sorted(codes) == [401] * 4 + [429] * 26
        served = await asyncio.gather(
            *(client.get("/v1/messages", headers=mailbox.auth) for _ in range(10))
        )
        assert [r.status_code for r in served] == [200] * 10
        # A new secret (e.g. another device of the owner with a new password) waits.
        r = await client.get("/v1/folders", headers=Mailbox(mailbox.address, "new").auth)
        assert r.status_code == 429
    assert failed_logins(stack, mailbox.address) == 4


async def test_address_entries_are_one_mailbox_each(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    for entry in [
        f"{other_mailbox.address}, carol@example.test",
        f"{other_mailbox.address}> NOTIFY=NEVER",
    ]:
        r = await client.post(
            "/v1/send", json={"to": ["ok@example.test", entry], "text": "x"}, headers=mailbox.auth
        )
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["code"] == "validation-failed"
        assert problem["detail"].startswith("to.1:")
    r = await client.post(
        "/v1/send",
        content=b"From: a@example.test\r\nTo: b@example.test\r\n\r\nhi\r\n",
        params={"rcpt_to": f"{other_mailbox.address}> NOTIFY=NEVER"},
        headers={**mailbox.auth, "Content-Type": "message/rfc822"},
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("rcpt_to.0:")
    await asyncio.sleep(0.5)
    assert other_mailbox.messages(stack) == []


async def test_contract_codes(client: Any, mailbox: Mailbox) -> None:
    r = await client.get("/v1/messages", params={"cursor": "garbage"}, headers=mailbox.auth)
    assert r.status_code == 422 and r.json()["code"] == "validation-failed"
    listed = await client.get("/v1/messages", headers=mailbox.auth)
    assert listed.status_code == 200
    r = await client.get("/v1/messages/abc/attachments/x.y", headers=mailbox.auth)
    assert r.status_code == 400 and r.json()["code"] == "invalid-id"
    r = await client.put("/v1/messages/delete", headers=mailbox.auth)
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["allow"] == "DELETE, GET, PATCH, POST"
    # HEAD is not served (nor can it ever remove): its 405 does not offer HEAD either
    for path in ("/v1/messages", "/v1/messages/abc/raw?mode=remove"):
        r = await client.head(path, headers=mailbox.auth)
        assert r.status_code == 405 and r.headers["allow"] == "GET", (path, r.headers)


async def test_redis_down_refuses_idempotent_sends_only(
    stack: dict[str, str], make_client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    async with make_client(
        redis_url=f"redis://127.0.0.1:{_closed_port()}/0", state_key=STATE_KEY
    ) as client:
        draft = {"to": [other_mailbox.address], "subject": "guarded", "text": "x"}
        r = await client.post(
            "/v1/send", json=draft, headers={**mailbox.auth, "Idempotency-Key": "k1"}
        )
        assert r.status_code == 503 and r.json()["code"] == "upstream-unavailable"
        assert int(r.headers["retry-after"]) > 0
        assert "upstream" not in r.json()  # the mail server never spoke
        plain = await client.post(
            "/v1/send", json={**draft, "subject": "unguarded"}, headers=mailbox.auth
        )
        assert plain.status_code == 200, plain.text
        listed = await client.get("/v1/messages", headers=mailbox.auth)
        assert listed.status_code == 200
        ready = await client.get("/readyz")
        assert ready.json()["checks"]["state"] == "unavailable"
        wrong = Mailbox(mailbox.address, "wrong-password").auth
        r = await client.get("/v1/folders", headers=wrong)
        assert r.status_code == 401  # the limiter counts locally meanwhile
    [(_, raw, _)] = other_mailbox.wait_for(stack)
    assert b"Subject: unguarded" in raw
