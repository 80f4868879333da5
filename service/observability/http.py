"""What is observed of each HTTP request: histogram sample, access line, span name."""

from __future__ import annotations

import logging

from opentelemetry import trace
from starlette.types import Scope

from service.observability.logs import ACCESS_LOGGER
from service.observability.metrics import HTTP_REQUEST_SECONDS

access_log = logging.getLogger(ACCESS_LOGGER)


def observe_request(scope: Scope, status: int, elapsed: float, protocols: set[str]) -> None:
    """Record one finished HTTP request: a histogram sample by its route template (never
    its path: ids stay out of labels) and one access line with method, route, status,
    duration and the mail protocols the request spoke (collected in
    :data:`~service.observability.mail.request_protocols` while it ran). A request that
    raised is counted with status 500. Called by the one middleware in front of the
    routes (:class:`~service.api.edge.EdgeMiddleware`)."""
    route = route_label(scope)
    method = str(scope.get("method", ""))
    HTTP_REQUEST_SECONDS.labels(method, route, str(status)).observe(elapsed)
    access_log.info(
        "%s %s %s %.1fms", method, route, status, elapsed * 1000,
        extra={"method": method, "route": route, "status": status,
               "duration_ms": round(elapsed * 1000, 1),
               "protocols": sorted(protocols)},
    )  # fmt: skip


def name_server_span(scope: Scope) -> None:
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
