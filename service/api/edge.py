"""The one ASGI middleware in front of the routes: request id, observation, body limit.

Each request passes it once: it takes the request id (``X-Request-ID`` when the caller
sent a valid one, else a new one) for the log lines, problem bodies and the response
header; bounds the request body (:func:`service.api.bodylimit.bounded`); and, once the
request is over, records its metrics and access line
(:func:`service.observability.http.observe_request`). One layer rather than three
(asgi-correlation-id's, an observer's, a body limit's): each pure-ASGI layer costs a
coroutine and a wrapped ``send`` per message of every request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from asgi_correlation_id import correlation_id
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.bodylimit import bounded
from service.observability import valid_request_id
from service.observability.http import name_server_span, observe_request
from service.observability.mail import request_protocols

__all__ = ["REQUEST_ID_HEADER", "EdgeMiddleware"]

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")

log = logging.getLogger("asgi_correlation_id")  # the logger asgi-correlation-id warned on


def request_id(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when valid (:func:`valid_request_id`), else a new one."""
    for name, value in scope["headers"]:
        if name == _HEADER:
            sent = str(value.decode("latin-1"))
            if not sent:
                break
            if valid_request_id(sent):
                return sent
            new = uuid.uuid4().hex
            log.warning(
                "Generated new request ID (%s), since request header value failed validation",
                new,
            )
            return new
    return uuid.uuid4().hex


class EdgeMiddleware:
    """Pure ASGI; ``limit_for(scope)`` gives a request's body limit in bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        correlation_id.set(rid)
        echo = (_HEADER, rid.encode("latin-1"))
        start = time.perf_counter()
        status = 500
        protocols: set[str] = set()
        token = request_protocols.set(protocols)

        async def edge_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), echo]
                name_server_span(scope)  # routed by now; the span ends with the body
            await send(message)

        try:
            await self.app(scope, bounded(receive, scope, self.limit_for(scope)), edge_send)
        finally:
            request_protocols.reset(token)
            observe_request(scope, status, time.perf_counter() - start, protocols)
