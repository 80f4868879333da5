"""The ASGI middleware that observes each HTTP request: histogram sample and access line."""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability.logs import ACCESS_LOGGER
from service.observability.mail import request_protocols
from service.observability.metrics import HTTP_REQUEST_SECONDS

access_log = logging.getLogger(ACCESS_LOGGER)


class RequestObserver:
    """Times each HTTP request by its route template (never its path: ids stay out of
    labels) and writes one access line with method, route, status, duration and the
    mail protocols the request spoke. A request that raised is counted as 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        protocols: set[str] = set()
        token = request_protocols.set(protocols)

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                _name_server_span(scope)  # routed by now; the span ends with the body
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            request_protocols.reset(token)
            elapsed = time.perf_counter() - start
            route = route_label(scope)
            method = str(scope.get("method", ""))
            HTTP_REQUEST_SECONDS.labels(method, route, str(status)).observe(elapsed)
            access_log.info(
                "%s %s %s %.1fms", method, route, status, elapsed * 1000,
                extra={"method": method, "route": route, "status": status,
                       "duration_ms": round(elapsed * 1000, 1),
                       "protocols": sorted(protocols)},
            )  # fmt: skip


def _name_server_span(scope: Scope) -> None:
    """Name the tracing server span by the route template, not the path (ids stay out)."""
    span = trace.get_current_span()
    if span.is_recording():
        route = route_label(scope)
        span.set_attribute("http.route", route)
        span.update_name(f"{scope.get('method', '')} {route}")


def route_label(scope: Scope) -> str:
    """The route's template with the prefix it was included under (``/v1/messages/{id}``);
    a mounted app (the docs' static files) is ``/static/{path}``; no match: ``unmatched``."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        mounted = scope.get("root_path", "")
        app_root = scope.get("app_root_path", "")
        if isinstance(mounted, str) and mounted and mounted != app_root:
            return mounted.removeprefix(str(app_root)) + "/{path}"
        return "unmatched"
    path = str(scope.get("path", ""))
    extra = path.count("/") - template.count("/")
    prefix = "/".join(path.split("/")[: extra + 1]) if extra > 0 else ""
    return prefix + template
