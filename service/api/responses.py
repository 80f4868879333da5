"""Responses whose side effect (mode=remove) runs only after the last byte was written."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from service.errors import BadRequest, MailGatewayError, RangeNotSatisfiable
from service.observability import record_removal, record_stream_bytes
from service.observability.http import route_label
from service.observability.metrics import RemovalOutcome

log = logging.getLogger("mailgate")


class _ClientGone(Exception):
    pass


class CommitAfterSendResponse(Response):
    """Streams ``chunks``; then, only if every byte was handed to the server, commits.

    ``on_complete`` (the deletion of mode=remove) runs after the final body
    message was sent and no disconnect was seen. ``on_finish(ok)`` always runs
    last (it releases the mail session; ``ok`` false discards it without
    committing anything). A client that disconnects, or an error while
    reading from the mail server, skips ``on_complete``.
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
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.on_complete = on_complete
        self.on_finish = on_finish
        self.stall_timeout = stall_timeout
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        async def write(message: Message) -> None:
            # A client that stops reading must not hold a mail session for ever.
            async with asyncio.timeout(self.stall_timeout):
                await send(message)

        watcher = asyncio.create_task(watch())
        ok = False
        removal: RemovalOutcome = "aborted"
        sent = 0
        try:
            await write(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            async for chunk in self.chunks:
                if gone.is_set():
                    raise _ClientGone
                await write({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
            await asyncio.sleep(0)  # let the watcher see a disconnect that already happened
            if gone.is_set():
                raise _ClientGone
            watcher.cancel()
            await write({"type": "http.response.body", "body": b"", "more_body": False})
            ok = True
        except (_ClientGone, OSError):
            log.info("client went away before the end of %s; nothing committed", scope["path"])
        except TimeoutError:
            log.info("client stopped reading %s; connection dropped, nothing committed",
                     scope["path"])  # fmt: skip
        except MailGatewayError as exc:
            # The status line is gone already: the connection is cut (uvicorn closes
            # it when the response is left incomplete), so the client sees a failure.
            log.warning("mail server failed in the middle of %s: %s %s", scope["path"],
                        exc.code, exc.detail)  # fmt: skip
        finally:
            watcher.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None and not ok:
                try:
                    await aclose()
                except Exception:  # noqa: S110 - the session is discarded below anyway
                    pass
            try:
                if ok and self.on_complete is not None:
                    try:
                        await self.on_complete()
                        removal = "committed"
                    except Exception as exc:
                        ok = False
                        removal = "failed"
                        log.warning(
                            "commit after response failed on %s: %s", scope["path"],
                            type(exc).__name__,
                        )  # fmt: skip
            finally:
                record_stream_bytes(route_label(scope), sent)
                if self.on_complete is not None:
                    record_removal(removal)
                if self.on_finish is not None:
                    await self.on_finish(ok)


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
