"""A raw HTTP/1.1 client that reads exactly what it is told, for mode=remove tests and
benchmarks: bytes it has not asked for stay in its kernel's receive queue, as in a real
client that hangs up before reading them (the kernel then answers its close with a
reset). Blocking sockets: run them in threads of their own (:func:`in_client_thread`)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
SIZES = {"4KB": 4_000, "300KB": 300_000, "10MB": 10_000_000}
KINDS = ("parsed", "raw", "attachment")
# How a client leaves: after the status line, after the header section (0 % of the body),
# after half or 99 % of the body, with a tiny receive buffer after the header section
# and 2 s of reading nothing, or after the header section with a half-close (its FIN says
# nothing about what it read) and 0.2 s before it closes.
EARLY = ("status-line", "headers", "50%", "99%", "tiny-buffer-2s", "half-close")


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
        if how == "half-close":
            client.sock.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
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


_CLIENTS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="raw-client")


async def in_client_thread(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking client in a thread of its own pool: a gateway under test in the same
    process uses the loop's default executor (parsing large messages), which the clients
    must not fill."""
    return await asyncio.get_running_loop().run_in_executor(_CLIENTS, func, *args)
