"""Responses whose side effect (mode=remove) runs only after the last byte was written."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from service.api.peer import peer_of
from service.errors import BadRequest, MailGatewayError, RangeNotSatisfiable
from service.observability import record_removal, record_stream_bytes
from service.observability.http import route_label
from service.observability.metrics import RemovalOutcome

log = logging.getLogger("mailgate")


class _ClientGone(Exception):
    pass


class CommitAfterSendResponse(Response):
    """Streams ``chunks``; then, only if the peer has every byte, commits.

    ``on_complete`` (the deletion of mode=remove, or keep mode's ``\\Seen``) runs only
    when the answer ran to its end: every chunk was handed to the server, and no
    disconnect, error or cancellation was seen; with
    ``confirm_delivery`` (mode=remove) also only once the kernel reports that the peer
    acknowledged every byte, and the connection was not reset within
    ``linger`` seconds after that (:meth:`service.api.peer.PeerSocket.acknowledged`).
    The client's disconnect is watched for from the first byte; with nothing to commit
    and ``watch_at_once`` false (a read in keep mode: a disconnect then only saves the
    rest of the work), from the second chunk on, so a one-chunk answer costs no task.
    ``on_finish(streamed)`` always runs last (it releases the mail session; ``streamed``
    false, when the stream stopped in the middle, discards it). Anything that skips the
    commit is logged with its reason. A client that reads nothing for
    ``stall_timeout`` seconds is cut: one timer per response, moved on at each write.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        on_complete: Callable[[], Awaitable[None]] | None = None,
        on_finish: Callable[[bool], Awaitable[None]] | None = None,
        stall_timeout: float = 60.0,
        confirm_delivery: bool = False,
        linger: float = 0.5,
        watch_at_once: bool = True,
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.on_complete = on_complete
        self.on_finish = on_finish
        self.stall_timeout = stall_timeout
        self.confirm_delivery = confirm_delivery
        self.linger = linger
        self.watch_at_once = watch_at_once
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        loop = asyncio.get_running_loop()
        peer = None
        # Watched from the start when something is committed (or asked for): else from
        # the second chunk on, so that a one-chunk answer costs no task.
        early = self.on_complete is not None or self.confirm_delivery or self.watch_at_once
        watcher = asyncio.create_task(watch()) if early else None
        streamed = False
        # Nothing is committed unless the answer ran to its end: an exception that none
        # of the handlers below knows, or a cancellation (a server's graceful-shutdown
        # timeout), keeps this reason.
        why: str | None = "the answer was interrupted"
        removal: RemovalOutcome = "aborted"
        sent = 0
        # A lower bound of the answer's size on the wire: status line, headers, body.
        wire = len("HTTP/1.1 200 \r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in self.raw_headers)
        try:
            # Taken before the first byte: the server may close its own descriptor after
            # the last one (Connection: close), the kernel's counters must stay readable.
            # Inside the try: whatever happens from here on, on_finish runs.
            if self.confirm_delivery:
                peer = peer_of(scope)
            async with asyncio.timeout(None) as timer:

                async def write(message: Message) -> None:
                    timer.reschedule(loop.time() + self.stall_timeout)
                    await send(message)

                await write(
                    {"type": "http.response.start", "status": self.status_code,
                     "headers": self.raw_headers}
                )  # fmt: skip
                async for chunk in self.chunks:
                    if watcher is None and sent:
                        watcher = asyncio.create_task(watch())
                    if gone.is_set():
                        raise _ClientGone
                    await write({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent += len(chunk)
                streamed = True
                if watcher is not None:
                    await asyncio.sleep(0)  # let the watcher see a disconnect that happened
                    if gone.is_set():
                        raise _ClientGone
                    watcher.cancel()
                await write({"type": "http.response.body", "body": b"", "more_body": False})
                timer.reschedule(None)
            why = None
            if self.confirm_delivery:
                why = "the server cannot tell what the peer acknowledged"
                if peer is not None:
                    why = await peer.acknowledged(
                        wire + sent, stall_timeout=self.stall_timeout, linger=self.linger
                    )
        except (_ClientGone, OSError):
            why = "the client went away before the end"
        except TimeoutError:
            why = "the client stopped reading; connection dropped"
        except MailGatewayError as exc:
            # The status line is gone already: the connection is cut (uvicorn closes
            # it when the response is left incomplete), so the client sees a failure.
            streamed = False
            why = f"the mail server failed in the middle ({exc.code})"
            log.warning("mail server failed in the middle of %s: %s %s", scope["path"],
                        exc.code, exc.detail)  # fmt: skip
        finally:
            if watcher is not None:
                watcher.cancel()
            if peer is not None:
                peer.close()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None and not streamed:
                try:
                    await aclose()
                except Exception:  # noqa: S110 - the session is discarded below anyway
                    pass
            try:
                if why is not None:
                    if self.on_complete is not None:
                        log.info("nothing committed for %s: %s", scope["path"], why)
                elif self.on_complete is not None:
                    try:
                        await self.on_complete()
                        removal = "committed"
                    except Exception as exc:
                        streamed = False
                        removal = "failed"
                        log.warning(
                            "commit after response failed on %s: %s", scope["path"],
                            type(exc).__name__,
                        )  # fmt: skip
            finally:
                record_stream_bytes(route_label(scope), sent)
                if self.confirm_delivery:
                    record_removal(removal)
                if self.on_finish is not None:
                    await self.on_finish(streamed)


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` → ``(start, end_exclusive)``; None means the whole body.

    One range only: a list of ranges is answered whole (200), as RFC 9110
    allows. Bad syntax → 400; a range past the end → 416.
    """
    if header is None:
        return None
    header = header.strip()
    if "," in header:
        return None
    m = _RANGE.match(header.replace(" ", ""))
    if not m or (not m.group(1) and not m.group(2)):
        raise BadRequest("The Range header must be bytes=START-END, START- or -SUFFIX.")
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable("An empty suffix range.", size=size)
        return max(0, size - n), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and int(last) < start:
        raise BadRequest("The Range header's end is before its start.")
    if start >= size:
        raise RangeNotSatisfiable(f"The range starts past the end ({size} bytes).", size=size)
    return start, min(end, size)
