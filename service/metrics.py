"""A few Prometheus metrics without dependencies: requests by route and status, latency."""

from __future__ import annotations

import time
from collections import defaultdict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.protocols.pool import PoolStats


class Metrics:
    """Counters kept per process; rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def render(self, pools: dict[str, PoolStats] | None = None) -> str:
        lines = [
            "# HELP mailgate_requests_total HTTP requests by route and status.",
            "# TYPE mailgate_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            lines.append(
                f'mailgate_requests_total{{method="{method}",route="{route}",'
                f'status="{status}"}} {n}'
            )
        lines += [
            "# HELP mailgate_request_seconds_total Time spent answering, by route.",
            "# TYPE mailgate_request_seconds_total counter",
        ]
        for (method, route), s in sorted(self.seconds.items()):
            lines.append(
                f'mailgate_request_seconds_total{{method="{method}",route="{route}"}} {s:.6f}'
            )
        if pools:
            lines += [
                "# HELP mailgate_pool_sessions Mail server sessions held by this process.",
                "# TYPE mailgate_pool_sessions gauge",
            ]
            for name, stats in sorted(pools.items()):
                for state in ("open", "idle", "leased"):
                    value = getattr(stats, state)
                    lines.append(f'mailgate_pool_sessions{{pool="{name}",state="{state}"}} {value}')
            lines += [
                "# HELP mailgate_pool_waiting Requests waiting for a session of their mailbox.",
                "# TYPE mailgate_pool_waiting gauge",
            ]
            for name, stats in sorted(pools.items()):
                lines.append(f'mailgate_pool_waiting{{pool="{name}"}} {stats.waiting}')
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not its path: ids stay out)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            name = _route_label(scope)
            method = scope.get("method", "")
            self.metrics.requests[(method, name, status)] += 1
            self.metrics.seconds[(method, name)] += time.perf_counter() - start


def _route_label(scope: Scope) -> str:
    """The route's template with the prefix it was included under (``/v1/messages/{id}``):
    the scope names the router's own route, so the prefix is read off the real path."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return "unmatched"
    path = str(scope.get("path", ""))
    extra = path.count("/") - template.count("/")
    prefix = "/".join(path.split("/")[: extra + 1]) if extra > 0 else ""
    return prefix + template
