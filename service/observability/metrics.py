"""The Prometheus families of the gateway and the scrape (prometheus_client).

With several worker processes (``mailgate serve --workers N``) the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client: each
worker then writes its samples to files there and a scrape of any worker
aggregates them all (counters and histograms summed, session gauges summed
over live workers). In one process the default registry is used, with the
process and platform collectors.

No label ever holds a user name, an address, a message id or a path: routes
are templates (``/v1/messages/{id}``) and commands are protocol verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_MAIL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0, 60.0, 120.0)  # fmt: skip

HTTP_REQUEST_SECONDS = Histogram(
    "mailgate_http_request_duration_seconds",
    "HTTP requests by method, route template and status: time until the last byte was "
    "written (its _count is the number of requests).",
    ["method", "route", "status"],
    buckets=_HTTP_BUCKETS,
)
MAIL_COMMAND_SECONDS = Histogram(
    "mailgate_mail_command_duration_seconds",
    "Mail server commands by protocol (smtp, imap, pop3), command and outcome "
    "(ok, refused, timeout, error, aborted).",
    ["protocol", "command", "outcome"],
    buckets=_MAIL_BUCKETS,
)
SESSIONS = Gauge(
    "mailgate_sessions",
    "Mail server sessions of the session budget by protocol and state (in_use, idle).",
    ["protocol", "state"],
    multiprocess_mode="livesum",
)
SESSION_WAITING = Gauge(
    "mailgate_session_waiting_requests",
    "Requests waiting for a session of their mailbox's budget, by protocol.",
    ["protocol"],
    multiprocess_mode="livesum",
)
STREAM_BYTES = Counter(
    "mailgate_stream_bytes",
    "Body bytes streamed to clients (raw messages, attachments), by route template.",
    ["route"],
)
REMOVALS = Counter(
    "mailgate_remove_mode",
    "mode=remove responses by outcome: committed (deleted after the last byte was "
    "acknowledged), aborted (response not completed: nothing deleted), failed (the "
    "deletion itself failed: the message stays).",
    ["outcome"],
)
BUILD_INFO = Gauge(
    "mailgate_build_info", "The running version (value 1).", ["version"], multiprocess_mode="max"
)
BUILD_INFO.labels(__version__).set(1)

RemovalOutcome = Literal["committed", "aborted", "failed"]


class SessionStats(Protocol):
    """What a session pool or budget reports (``PoolStats`` today)."""

    @property
    def idle(self) -> int: ...

    @property
    def leased(self) -> int: ...

    @property
    def waiting(self) -> int: ...


SessionSource = Callable[[], Mapping[str, SessionStats]]


def observe_sessions(stats: Mapping[str, SessionStats]) -> None:
    """Publish ``{protocol: stats}`` to the session gauges (this process's share)."""
    for protocol, s in stats.items():
        # sessions held outside the pool (a POP3 request's own connection) are in use too
        SESSIONS.labels(protocol, "in_use").set(s.leased + getattr(s, "unpooled", 0))
        SESSIONS.labels(protocol, "idle").set(s.idle)
        SESSION_WAITING.labels(protocol).set(s.waiting)


@contextlib.asynccontextmanager
async def watch_sessions(source: SessionSource, every: float = 1.0) -> AsyncIterator[None]:
    """While the block runs, publish ``source()`` every ``every`` seconds (and once at the
    end, when the process leaves: its live gauges are then removed in multiprocess mode)."""

    async def loop() -> None:
        while True:
            observe_sessions(source())
            await asyncio.sleep(every)

    task = asyncio.get_running_loop().create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def record_stream_bytes(route: str, n: int) -> None:
    """``n`` body bytes were handed to the server for a response of ``route``."""
    STREAM_BYTES.labels(route).inc(n)


def record_removal(outcome: RemovalOutcome) -> None:
    """One mode=remove response ended this way."""
    REMOVALS.labels(outcome).inc()


def render_metrics(sessions: Mapping[str, SessionStats] | None = None) -> tuple[bytes, str]:
    """The scrape body and its content type: every worker's samples in multiprocess mode."""
    if sessions is not None:
        observe_sessions(sessions)
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
