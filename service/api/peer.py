"""What the HTTP peer has acknowledged: the TCP socket under the ASGI server.

mode=remove may delete a message only once the peer has every byte of the answer. An
ASGI server's ``send()`` says nothing about that: it returns quietly after the peer has
gone, and a drained transport only means the bytes reached the kernel. What the kernel
knows is the truth: on Linux the socket's unacknowledged send queue (``SIOCOUTQ``, the
same ioctl number as ``TIOCOUTQ``: bytes written but not yet acknowledged by the peer's
TCP) and its TCP state (``TCP_INFO``: a reset connection is ``TCP_CLOSE``).

The socket is found through the server that runs the app: :func:`attach_peer` reads the
transport of uvicorn's request cycle (the owner of the ``send`` callable it hands to the
app, for both of its HTTP implementations) and stores it in the ASGI scope's
``extensions`` under :data:`EXTENSION`, where a server can also put it itself. Where no
transport is found (another server, an in-process test client), where the transport is
TLS (its own buffer hides bytes from the kernel's count: terminate TLS in front of the
gateway) or the socket is not TCP on Linux, mode=remove is refused (422
``not-supported``) rather than guessed.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
from typing import Any, Protocol

from starlette.types import Scope, Send

__all__ = ["EXTENSION", "PeerSocket", "attach_peer", "can_confirm_delivery", "peer_of"]

EXTENSION = "mailgate.peer_transport"

log = logging.getLogger("mailgate")

try:  # Linux: the ioctl number of SIOCOUTQ is that of TIOCOUTQ
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _OUTQ = None
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_ESTABLISHED, _CLOSE_WAIT = 1, 8  # include/net/tcp_states.h
_LINGER_LOOKS = 5
_ACKED_AT, _INFO_LEN = 120, 128  # struct tcp_info: __u64 tcpi_bytes_acked at byte 120
_STATES = {1: "ESTABLISHED", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE",
           8: "CLOSE_WAIT", 9: "LAST_ACK", 11: "CLOSING"}  # fmt: skip


class _Transport(Protocol):
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


def attach_peer(scope: Scope, send: Send) -> None:
    """Put the transport of the connection that ``send`` writes to into ``scope``
    (ASGI ``extensions``), when the server lets it be found; call it once per request,
    with the ``send`` the server itself passed to the app."""
    extensions = scope.setdefault("extensions", {})
    if extensions is None or EXTENSION in extensions:
        return
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and all(
        callable(getattr(transport, name, None))
        for name in ("get_extra_info", "get_write_buffer_size", "is_closing")
    ):
        extensions[EXTENSION] = transport


def _tcp_socket(scope: Scope) -> tuple[_Transport, Any] | None:
    transport = (scope.get("extensions") or {}).get(EXTENSION)
    if transport is None or _OUTQ is None or _TCP_INFO is None or sys.platform != "linux":
        return None
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if (
        sock is None
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
    ):
        return None
    try:  # tcpi_bytes_acked is there since Linux 4.1
        if len(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_LEN)) < _INFO_LEN:
            return None
    except (OSError, ValueError):  # ValueError: uvloop's socket of a closed connection (fd -1)
        return None
    return transport, sock


def can_confirm_delivery(scope: Scope) -> bool:
    """Whether the server in use lets the gateway learn what the peer acknowledged on this
    request's connection (see the module docstring); mode=remove needs it."""
    return _tcp_socket(scope) is not None


def peer_of(scope: Scope) -> PeerSocket | None:
    """A watch on the peer's acknowledgements for this request's connection, or None when
    the server in use cannot tell what the peer acknowledged. The caller must
    :meth:`PeerSocket.close` it."""
    found = _tcp_socket(scope)
    if found is None:
        return None
    transport, sock = found
    try:
        fd = os.dup(sock.fileno())
    except (OSError, ValueError):  # the connection closed meanwhile
        return None
    return PeerSocket(transport, fd)


class PeerSocket:
    """The kernel's view of one connection's send side, held through a duplicate of its
    descriptor (so it stays readable after the server closes its own, e.g. for
    ``Connection: close``; the TCP close then waits for :meth:`close`)."""

    def __init__(self, transport: _Transport, fd: int) -> None:
        self._transport = transport
        self._fd = fd
        self._sock = socket.socket(fileno=fd)
        # Every byte handed to the connection so far: acknowledged, in the kernel's
        # send queue, or still in the server's transport buffer.
        self._written_before = (
            self.bytes_acknowledged() + self.unacknowledged() + transport.get_write_buffer_size()
        )

    def unacknowledged(self) -> int:
        """Bytes written to the socket that the peer's TCP has not acknowledged yet."""
        buf = array.array("i", [0])
        fcntl.ioctl(self._fd, _OUTQ or 0, buf, True)
        return int(buf[0])

    def tcp_state(self) -> int:
        """The connection's TCP state (``tcpi_state``: 1 ESTABLISHED, 7 CLOSE, …)."""
        info = self._sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO or 0, 8)
        return info[0]

    def bytes_acknowledged(self) -> int:
        """Bytes of this connection the peer's TCP has acknowledged (``tcpi_bytes_acked``)."""
        info = self._sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO or 0, _INFO_LEN)
        return int.from_bytes(info[_ACKED_AT : _ACKED_AT + 8], sys.byteorder)

    async def acknowledged(
        self, at_least: int, *, stall_timeout: float, linger: float
    ) -> str | None:
        """Wait until the peer has acknowledged the answer: ``at_least`` bytes (a lower
        bound of its size on the wire) written since this watch began.

        None when it has: the server's transport buffer is empty, the kernel's
        unacknowledged send queue is 0, the peer acknowledged ``at_least`` bytes more
        than before the answer (an ASGI server drops writes quietly once it has seen
        the peer leave: they never reach the kernel), the connection is neither reset
        nor closed, and it stays so for ``linger`` seconds (a client that hangs up right
        after reading part of the answer resets the connection within that time). The
        peer's FIN does not end that wait: a client that half-closes
        (``shutdown(SHUT_WR)``) sends it before reading, and still resets when it then
        closes with bytes unread. Else the reason, for the log: a reset or close, bytes
        that never left, or no progress (fewer bytes unacknowledged) for
        ``stall_timeout`` seconds. Never raises.
        """
        loop = asyncio.get_running_loop()
        try:
            last = None
            progress_at = loop.time()
            delay = 0.001
            while True:  # every byte out of the server's buffer and acknowledged
                state = self.tcp_state()
                if state not in (_ESTABLISHED, _CLOSE_WAIT):
                    name = _STATES.get(state, state)
                    return f"connection {name} before every byte was acknowledged"
                pending = self._transport.get_write_buffer_size() + self.unacknowledged()
                if pending == 0:
                    acked = self.bytes_acknowledged() - self._written_before
                    if acked < at_least:
                        return f"only {acked} of {at_least}+ bytes reached the peer"
                    break
                if last is None or pending < last:
                    last, progress_at, delay = pending, loop.time(), 0.001
                elif loop.time() - progress_at > stall_timeout:
                    return f"{pending} bytes still unacknowledged after {stall_timeout:g} s"
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
            until = loop.time() + linger
            looks = 0
            while True:  # and no reset right after (looked at often enough, even when
                state = self.tcp_state()  # this loop was busy and woke up late)
                if state not in (_ESTABLISHED, _CLOSE_WAIT):
                    return f"connection {_STATES.get(state, state)} right after the answer"
                looks += 1
                if loop.time() >= until and looks >= _LINGER_LOOKS:
                    return None
                await asyncio.sleep(0.01)
        except Exception as exc:  # a socket or transport that broke meanwhile
            return f"socket error ({type(exc).__name__})"

    def close(self) -> None:
        """Close the duplicate descriptor; idempotent, never raises."""
        with contextlib.suppress(OSError):
            self._sock.close()
