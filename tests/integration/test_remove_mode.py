"""mode=remove deletes only after the whole answer was written: a client that hangs up
halfway through leaves the message on the server (real uvicorn, real Dovecot)."""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlsplit

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack


def big_message(size: int) -> bytes:
    head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: big\r\n\r\n"
    line = os.urandom(38).hex().encode() + b"\r\n"  # 78 bytes a line
    return head + line * (size // len(line))


async def _hang_up_halfway(base: str, path: str, auth: dict[str, str], read: int) -> bytes:
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    await writer.drain()
    got = b""
    while len(got) < read:
        chunk = await reader.read(65536)
        assert chunk, "server closed early"
        got += chunk
    writer.transport.abort()  # hang up with most of the body unread
    return got


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_client_that_hangs_up_leaves_the_message(
    proto: str, make_live_gateway: Any, client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    raw = big_message(12_000_000)
    mailbox.append(stack, raw)
    r = await client.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
    [item] = r.json()["items"]
    async with make_live_gateway(fetch_chunk_bytes=65536) as base:
        got = await _hang_up_halfway(
            base, f"/v1/messages/{item['id']}/raw?mode=remove", mailbox.auth, 200_000
        )
        assert got.startswith(b"HTTP/1.1 200")
        assert b"x-mail-mode: remove" in got.lower()
        await asyncio.sleep(0.5)  # give the gateway time to (wrongly) commit
    [(_, stored, _)] = mailbox.messages(stack)
    assert stored == raw
    # The same download, completed, does remove it.
    r = await client.get(f"/v1/messages/{item['id']}/raw", params={"mode": "remove"},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200 and r.content == raw
    assert mailbox.messages(stack) == []


async def test_a_client_that_stops_reading_frees_the_session(
    make_live_gateway: Any, client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """With one session per mailbox, a stalled download must not lock the mailbox out."""
    import time

    import httpx

    mailbox.append(stack, big_message(12_000_000))
    r = await client.get("/v1/messages", headers=mailbox.auth)
    [item] = r.json()["items"]
    async with make_live_gateway(pool_size_per_user=1, stall_timeout=1.0) as base:
        url = urlsplit(base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in mailbox.auth.items())
        writer.write(f"GET /v1/messages/{item['id']}/raw?mode=remove HTTP/1.1\r\n"
                     f"Host: x\r\n{head}\r\n".encode())  # fmt: skip
        await writer.drain()
        await reader.read(1000)  # the answer has started; now read nothing more
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            r = await http.get("/v1/messages", headers=mailbox.auth)
        waited = time.monotonic() - start
        writer.transport.abort()
    assert r.status_code == 200 and len(r.json()["items"]) == 1
    assert waited < 8  # freed by the stall timeout, not by the 10 s pool wait
    assert len(mailbox.messages(stack)) == 1  # and nothing was removed
