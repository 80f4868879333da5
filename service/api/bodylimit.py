"""Request bodies are counted while they stream and refused (413) once over the limit.

Whatever the framing (Content-Length or chunked) and the media type, no route
reads more than its limit: a declared length over it fails the first read, a
chunked body fails the read that passes it. The error is raised from the
ASGI ``receive`` call as a 413 ``HTTPException`` (FastAPI lets those through
its own body parsing) and rendered as problem+json ``too-large``. Nothing
asks a mail server before the body has been read, so the 413 comes before any
credential check there.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope


class BodyTooLarge(HTTPException):
    """The request body passed its limit (413 too-large)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over the limit of {limit} bytes.")
        self.limit = limit


def bounded(receive: Receive, scope: Scope, limit: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` past ``limit`` bytes of body (at the
    first read when the declared Content-Length is over it). Used by
    :class:`~service.api.edge.EdgeMiddleware`, the one middleware in front of the routes."""
    declared = _content_length(scope)
    seen = 0

    async def bounded_receive() -> Message:
        nonlocal seen
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit)
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return bounded_receive


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def media_type(scope: Scope) -> str:
    """The request's media type, lower case, without parameters."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return str(value.decode("latin-1")).split(";")[0].strip().lower()
    return ""
