"""One MIME part of a message as the adapters serve it: found, then decoded as it streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

from service.mime import PartCutter, PartDecoder, PartInfo, cut_info

__all__ = ["cut_from", "decoded"]


async def decoded(decoder: PartDecoder, encoded: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``encoded`` pieces decoded by ``decoder`` (its Content-Transfer-Encoding);
    ``encoded`` is closed when this is, however it ends."""
    try:
        async for piece in encoded:
            if out := decoder.feed(piece):
                yield out
        if out := decoder.flush():
            yield out
    finally:
        await _close(encoded)


async def cut_from(
    cutter: PartCutter, message: AsyncIterator[bytes], *, close: bool = True
) -> tuple[PartInfo, AsyncIterator[bytes]] | None:
    """Stream ``message`` (its raw bytes, in order) past ``cutter`` until the part's
    header has been read: None when the message has no such leaf, else its description
    and its decoded bytes, read on from ``message`` as they are asked for and no
    further than the part's end. ``close``: close ``message`` once the part has ended
    or is missing (else its owner finishes or closes it)."""
    first = b""
    async for chunk in message:
        first += cutter.feed(chunk)
        if cutter.part is not None or cutter.missing:
            break
    else:
        first += cutter.feed(b"", final=True)
    if cutter.part is None:
        if close:
            await _close(message)
        return None
    info = cut_info(cutter)

    async def encoded() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            while not cutter.finished:
                try:
                    chunk = await anext(message)
                except StopAsyncIteration:
                    if rest := cutter.feed(b"", final=True):
                        yield rest
                    return
                if data := cutter.feed(chunk):
                    yield data
        finally:
            if close:
                await _close(message)

    return info, decoded(PartDecoder(cutter.part.encoding), encoded())


async def _close(message: AsyncIterator[bytes]) -> None:
    aclose = getattr(message, "aclose", None)
    if aclose is not None:
        await aclose()
