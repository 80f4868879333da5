"""SMTP behaviour a real Postfix will not show, from a scripted server at the socket:
a relay that offers no AUTH, a server that hangs, a temporary refusal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mailboxes import Mailbox
from scripted import serving


@asynccontextmanager
async def fake_smtp(
    *,
    hang_on: str | None = None,
    rcpt_reply: bytes = b"250 ok\r\n",
    data_reply: bytes = b"250 queued as 1\r\n",
    hang_up_after_data: bool = False,
    auth: bool = False,
    auth_reply: bytes = b"235 2.7.0 Authentication successful\r\n",
    greeting: bytes = b"220 fake ESMTP\r\n",
) -> AsyncIterator[tuple[int, list[str]]]:
    """An SMTP server without AUTH or STARTTLS; records the commands it gets."""
    received: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        if not greeting.startswith(b"220"):
            await writer.drain()
            return
        while line := await reader.readline():
            cmd = line.decode().strip()
            verb = cmd.split(" ")[0].upper()
            received.append(cmd)
            if verb == hang_on:
                await asyncio.sleep(30)
            if verb == "EHLO":
                offer = b"250-AUTH XOAUTH2 PLAIN\r\n" if auth else b""
                writer.write(b"250-fake\r\n" + offer + b"250-SIZE 1000000\r\n250 8BITMIME\r\n")
            elif verb == "AUTH":
                writer.write(auth_reply)
            elif verb == "RCPT":
                writer.write(rcpt_reply)
            elif verb == "DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                while (data := await reader.readline()) != b".\r\n":
                    if not data:  # the client left mid-DATA; at EOF readline never waits
                        return
                    received.append("> " + data.decode(errors="replace").rstrip("\r\n"))
                writer.write(data_reply)
                if hang_up_after_data:  # as a server that times idle clients out would
                    await writer.drain()
                    writer.transport.abort()
                    return
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    async with serving(handle) as port:
        yield port, received


DRAFT = {"to": ["rcpt@elsewhere.test"], "bcc": ["hidden@elsewhere.test"], "subject": "hi",
         "text": "body"}  # fmt: skip


async def test_relay_without_auth_sends_without_credentials(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_smtp() as (port, received):
        async with make_client(smtp_url=f"smtp+plain://127.0.0.1:{port}") as client:
            r = await client.post("/v1/send", json=DRAFT, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["accepted"]) == ["hidden@elsewhere.test", "rcpt@elsewhere.test"]
    assert not [c for c in received if c.upper().startswith("AUTH")]
    assert "RCPT TO:<hidden@elsewhere.test>" in received
    assert "> Subject: hi" in received and not [c for c in received if c.startswith("> Bcc")]


async def test_hanging_server_is_504_within_the_deadline(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_smtp(hang_on="DATA") as (port, _):
        async with make_client(
            smtp_url=f"smtp+plain://127.0.0.1:{port}", send_timeout=1.0, command_timeout=5.0
        ) as client:
            start = time.monotonic()
            r = await client.post("/v1/send", json=DRAFT, headers=mailbox.auth)
            elapsed = time.monotonic() - start
    assert r.status_code == 504 and r.json()["code"] == "upstream-timeout"
    assert elapsed < 3


async def test_every_recipient_refused_is_422_with_reasons(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_smtp(rcpt_reply=b"550 5.1.1 no such user\r\n") as (port, received):
        async with make_client(smtp_url=f"smtp+plain://127.0.0.1:{port}") as client:
            r = await client.post("/v1/send", json=DRAFT, headers=mailbox.auth)
    assert r.status_code == 422 and r.json()["code"] == "recipient-rejected"
    assert "no such user" in r.json()["rejected"]["rcpt@elsewhere.test"]
    assert r.json()["upstream"] == {"protocol": "smtp", "reply": "550 5.1.1 no such user"}
    assert "DATA" not in received


@pytest.mark.parametrize(
    ("script", "words"),
    [
        ({"auth_reply": b"454 4.7.0 Temporary authentication failure\r\n"}, "454 4.7.0"),
        ({"greeting": b"421 4.3.2 Service shutting down, try later\r\n"}, "421 4.3.2"),
        ({"rcpt_reply": b"451 4.7.1 Greylisted, try again later\r\n"}, "451 4.7.1"),
        ({"data_reply": b"452 4.3.1 Insufficient system storage\r\n"}, "452 4.3.1"),
    ],
    ids=["sasl-outage", "greeting-421", "rcpt-451", "data-452"],
)
async def test_temporary_smtp_refusals_are_503_with_retry_after_and_the_words(
    script: dict[str, bytes], words: str, make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_smtp(auth=True, **script) as (port, received):
        async with make_client(smtp_url=f"smtp+plain://127.0.0.1:{port}") as client:
            r = await client.post("/v1/send", json=DRAFT, headers=mailbox.auth)
    assert r.status_code == 503, r.text
    problem = r.json()
    assert problem["code"] == "upstream-unavailable"
    assert int(r.headers["retry-after"]) > 0
    assert problem["upstream"]["protocol"] == "smtp"
    assert problem["upstream"]["reply"].startswith(words)
    assert mailbox.password not in r.text
    if "data_reply" not in script:
        assert not [c for c in received if c.startswith("> ")]  # no message data went out


async def test_refusal_of_the_message_is_502_with_the_servers_words(
    make_client: Any, mailbox: Mailbox
) -> None:
    refusal = b"554 5.7.1 Message rejected: looks like spam\r\n"
    async with fake_smtp(data_reply=refusal) as (port, _):
        async with make_client(smtp_url=f"smtp+plain://127.0.0.1:{port}") as client:
            r = await client.post("/v1/send", json=DRAFT, headers=mailbox.auth)
    assert r.status_code == 502 and r.json()["code"] == "upstream-error"
    assert r.json()["upstream"] == {
        "protocol": "smtp", "reply": "554 5.7.1 Message rejected: looks like spam",
    }  # fmt: skip


async def test_connections_are_reused_and_a_dead_one_is_replaced_without_resending(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_smtp() as (port, received):
        async with make_client(smtp_url=f"smtp+plain://127.0.0.1:{port}") as client:
            for _ in range(3):
                r = await client.post("/v1/send", json=DRAFT, headers=mailbox.auth)
                assert r.status_code == 200, r.text
    verbs = [c.split(" ")[0].upper() for c in received if not c.startswith(">")]
    assert verbs.count("EHLO") == 1 and verbs.count("MAIL") == 3  # one connection, 3 sends

    async with fake_smtp(hang_up_after_data=True) as (port, received):
        async with make_client(smtp_url=f"smtp+plain://127.0.0.1:{port}") as client:
            for _ in range(2):
                r = await client.post("/v1/send", json=DRAFT, headers=mailbox.auth)
                assert r.status_code == 200, r.text
    verbs = [c.split(" ")[0].upper() for c in received if not c.startswith(">")]
    assert verbs.count("DATA") == 2 and verbs.count("EHLO") == 2  # each message sent once


async def test_bearer_token_authenticates_with_xoauth2(make_client: Any) -> None:
    import base64

    async with fake_smtp(auth=True) as (port, received):
        async with make_client(smtp_url=f"smtp+plain://127.0.0.1:{port}") as client:
            r = await client.post("/v1/send", json={**DRAFT, "from": "u@example.test"}, headers={
                "Authorization": "Bearer ya29.tok", "X-Mail-User": "u@example.test"})  # fmt: skip
    assert r.status_code == 200, r.text
    [auth] = [c for c in received if c.upper().startswith("AUTH")]
    verb, mech, payload = auth.split(" ")
    assert mech == "XOAUTH2"
    assert base64.b64decode(payload) == b"user=u@example.test\x01auth=Bearer ya29.tok\x01\x01"
