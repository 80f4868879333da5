"""mode=remove deletes a message only once the peer has every byte: raw-socket clients of
a real uvicorn that hang up early, or stall, leave the message on the real Dovecot (IMAP
and POP3; parsed, raw and attachment answers; 4 KB, 300 KB and 10 MB)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from mailboxes import Mailbox
from mailstack_env import fresh_address

pytestmark = pytest.mark.mailstack
T = TypeVar("T")

SIZES = {"4KB": 4_000, "300KB": 300_000, "10MB": 10_000_000}
KINDS = ("parsed", "raw", "attachment")
# How a client leaves: after the status line, after the header section (0 % of the body),
# after half or 99 % of the body, or with a tiny receive buffer after the header section
# and 2 s of reading nothing.
EARLY = ("status-line", "headers", "50%", "99%", "tiny-buffer-2s")


def message(kind: str, size: int) -> bytes:
    """A message whose answer of ``kind`` carries about ``size`` bytes."""
    head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: keep me\r\n"
    line = os.urandom(38).hex().encode() + b"\r\n"  # 78 bytes a line
    if kind != "attachment":
        return head + b"\r\n" + line * max(1, size // len(line))
    blob = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
    return head + (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="blob.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"--b--\r\n"
    )


def path_of(kind: str, msg_id: str) -> str:
    suffix = {"parsed": "", "raw": "/raw", "attachment": "/attachments/2"}[kind]
    return f"/v1/messages/{msg_id}{suffix}?mode=remove"


class RawClient:
    """A plain blocking socket that reads exactly what it is told (no read-ahead): bytes
    it has not asked for stay in its kernel's receive queue, as in a client that hangs up
    before reading them (the kernel then answers its close with a reset)."""

    def __init__(self, base: str, path: str, auth: dict[str, str], rcvbuf: int | None) -> None:
        url = urlsplit(base)
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connect, so that the window starts small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect((url.hostname, url.port))
        head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n{head}\r\n".encode())

    def read_until(self, mark: bytes) -> bytes:
        """Up to and including ``mark``, peeking so that nothing after it is taken."""
        while True:
            seen = self.sock.recv(65536, socket.MSG_PEEK)
            assert seen, "closed early"
            at = seen.find(mark)
            if at >= 0:
                return self.read_exactly(at + len(mark))
            if len(seen) >= 65536:
                raise AssertionError("no end of line")
            time.sleep(0.001)

    def read_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(min(n - len(out), 1 << 20))
            assert chunk, "closed early"
            out += chunk
        return bytes(out)

    def body(self, head: bytes) -> bytes:
        """The whole body after ``head``: Content-Length, or chunked (an estimated size)."""
        length = _content_length(head)
        if length is not None:
            return self.read_exactly(length)
        assert b"transfer-encoding: chunked" in head.lower()
        out = bytearray()
        while True:
            size = int(self.read_until(b"\r\n").split(b";")[0], 16)
            out += self.read_exactly(size + 2)[:-2]
            if size == 0:
                return bytes(out)

    def close(self) -> None:
        self.sock.close()


def _content_length(head: bytes) -> int | None:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return None


def leave_early(base: str, path: str, auth: dict[str, str], how: str, size: int) -> None:
    """GET ``path`` and hang up as ``how`` says (``size``: about the body's length)."""
    client = RawClient(base, path, auth, 2048 if how == "tiny-buffer-2s" else None)
    try:
        got = client.read_until(b"\r\n")
        assert got.startswith(b"HTTP/1.1 200"), got
        if how != "status-line":
            got += client.read_until(b"\r\n\r\n")
            assert b"x-mail-mode: remove" in got.lower()
        if how in ("50%", "99%"):
            length = _content_length(got) or size
            client.read_exactly(length * (50 if how == "50%" else 99) // 100)
        if how == "tiny-buffer-2s":
            time.sleep(2)
    finally:
        client.close()  # unread data pending: the kernel answers with a reset


def read_all_then(base: str, path: str, auth: dict[str, str], close: bool) -> bytes:
    """GET ``path``, read the whole answer, then close at once or keep the connection."""
    client = RawClient(base, path, auth, None)
    try:
        body = client.body(client.read_until(b"\r\n\r\n"))
        if not close:
            time.sleep(1.0)  # keep-alive: the connection stays open, idle
    finally:
        client.close()
    return body


async def _id_of(client: httpx.AsyncClient, mailbox: Mailbox, proto: str) -> str:
    r = await client.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
    [item] = r.json()["items"]
    return str(item["id"])


_CLIENTS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="raw-client")


async def in_client_thread(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking client in a thread of its own pool: the gateway under test uses the
    loop's default executor (parsing large messages), which the clients must not fill."""
    return await asyncio.get_running_loop().run_in_executor(_CLIENTS, func, *args)


async def _gather_limited(jobs: list[Callable[[], Awaitable[None]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(run(j) for j in jobs))


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_no_early_hang_up_or_stall_loses_the_message(
    proto: str, make_live_gateway: Any, stack: dict[str, str], password: str
) -> None:
    cases = [(k, s, h) for k in KINDS for s in SIZES for h in EARLY]
    boxes = {case: Mailbox(fresh_address("rm"), password) for case in cases}
    sent: dict[tuple[str, str, str], bytes] = {}
    for (kind, size, how), box in boxes.items():
        sent[(kind, size, how)] = message(kind, SIZES[size])
        await asyncio.to_thread(box.append, stack, sent[(kind, size, how)])
    async with (
        make_live_gateway(fetch_chunk_bytes=65536) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as client,
    ):

        def job(case: tuple[str, str, str]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                box = boxes[case]
                msg_id = await _id_of(client, box, proto)
                path = path_of(case[0], msg_id)
                await in_client_thread(leave_early, base, path, box.auth, case[2], SIZES[case[1]])

            return run

        await _gather_limited([job(c) for c in cases], 12)
        await asyncio.sleep(1.0)  # time enough for a (wrong) commit to land
    lost = []
    for case, box in boxes.items():
        stored = await asyncio.to_thread(box.messages, stack)
        if [raw for _, raw, _ in stored] != [sent[case]]:
            lost.append((case, len(stored)))
    assert lost == [], repr(lost)


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_a_client_that_reads_everything_gets_it_removed(
    proto: str, make_live_gateway: Any, stack: dict[str, str], password: str
) -> None:
    cases = [(k, s, close) for k in KINDS for s in SIZES for close in (True, False)]
    boxes = {case: Mailbox(fresh_address("rm"), password) for case in cases}
    for (kind, size, _), box in boxes.items():
        await asyncio.to_thread(box.append, stack, message(kind, SIZES[size]))
    bodies: dict[tuple[str, str, bool], bytes] = {}
    async with (
        make_live_gateway(fetch_chunk_bytes=65536) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as client,
    ):

        def job(case: tuple[str, str, bool]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                box = boxes[case]
                msg_id = await _id_of(client, box, proto)
                path = path_of(case[0], msg_id)
                bodies[case] = await in_client_thread(read_all_then, base, path, box.auth, case[2])
                assert await box.after_removal(stack, 0) == [], case

            return run

        await _gather_limited([job(c) for c in cases], 6)
    for (kind, size, _), body in bodies.items():
        if kind == "raw":
            assert len(body) >= SIZES[size]
        elif kind == "attachment":
            assert len(body) == SIZES[size]


async def test_in_process_clients_cannot_use_remove(
    client: httpx.AsyncClient, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """No socket under an in-process (ASGI) client: the gateway cannot tell what the peer
    received, so mode=remove is refused, and nothing is deleted."""
    mailbox.append(stack, message("raw", 4000))
    msg_id = await _id_of(client, mailbox, "imap")
    for kind in KINDS:
        r = await client.get(path_of(kind, msg_id), headers=mailbox.auth)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "not-supported"
        assert "keep" in r.json()["detail"]
    assert len(mailbox.messages(stack)) == 1


async def test_a_client_that_stops_reading_frees_the_session(
    make_live_gateway: Any, client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """With one session per mailbox, a stalled download must not lock the mailbox out."""
    mailbox.append(stack, message("raw", 12_000_000))
    msg_id = await _id_of(client, mailbox, "imap")
    async with make_live_gateway(pool_size_per_user=1, stall_timeout=1.0) as base:
        stalled = await in_client_thread(RawClient, base, path_of("raw", msg_id), mailbox.auth,
                                         None)  # fmt: skip
        await in_client_thread(stalled.read_exactly, 1000)  # started; now read nothing more
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            r = await http.get("/v1/messages", headers=mailbox.auth)
        waited = time.monotonic() - start
        stalled.close()
    assert r.status_code == 200 and len(r.json()["items"]) == 1
    assert waited < 8  # freed by the stall timeout, not by the 10 s pool wait
    assert len(mailbox.messages(stack)) == 1  # and nothing was removed
