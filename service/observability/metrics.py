"""The Prometheus families of the gateway and the scrape (prometheus_client).

With several worker processes (``mailgate serve --workers N``) the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client: each
worker then writes its samples to files there and a scrape of any worker
aggregates them all (counters and histograms summed, session gauges summed
over live workers). In one process the default registry is used, with the
process and platform collectors; in multiprocess mode the default process
collector would see only the worker answering the scrape, so
:class:`WorkerProcessCollector` reports each live worker's, labelled by pid.

No label ever holds a user name, an address, a message id or a path: routes
are templates (``/v1/messages/{id}``) and commands are protocol verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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
IMAP_CHANGES = Counter(
    "mailgate_imap_changes",
    "IMAP change computations (/v1/changes pages, /v1/events rounds) by source: journal "
    "(what a session with the folder selected was told since its SELECT, plus one FETCH "
    "of the UIDs it names: the cost follows the changes) or server (CHANGEDSINCE, "
    "which the server answers by looking at every message, or the fallbacks without "
    "QRESYNC).",
    ["source"],
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


# prometheus_client's files of live gauges (the session gauges every worker sets from
# its start): one per live worker process, removed by mark_process_dead when it leaves.
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


class WorkerProcessCollector(Collector):
    """CPU seconds, memory and open fds of every live worker of this ``mailgate serve``,
    labelled by ``pid`` (the families of prometheus_client's ProcessCollector, read from
    ``/proc/PID`` by it). Workers are the pids with live gauge files in the multiprocess
    directory that are still children of this worker's parent; a file of a worker that
    died without leaving (SIGKILL, OOM) is removed, so its session gauges stop counting."""

    def __init__(self, directory: str, proc: str = "/proc") -> None:
        self._directory = Path(directory)
        self._proc = Path(proc)
        self._collectors: dict[int, ProcessCollector] = {}

    def worker_pids(self) -> list[int]:
        pids = set()
        for path in self._directory.glob("gauge_live*.db"):
            found = _LIVE_FILE.fullmatch(path.name)
            if found:
                pids.add(int(found.group(1)))
        parent = os.getppid()
        live = []
        for pid in sorted(pids):
            if pid == os.getpid() or self._parent_of(pid) == parent:
                live.append(pid)
            else:  # gone, or its pid now belongs to another process
                multiprocess.mark_process_dead(pid, str(self._directory))  # type: ignore[no-untyped-call]
                self._collectors.pop(pid, None)
        return live

    def _parent_of(self, pid: int) -> int | None:
        try:
            stat = (self._proc / str(pid) / "stat").read_bytes()
            return int(stat.rsplit(b")", 1)[1].split()[1])  # the field after the state
        except (OSError, IndexError, ValueError):
            return None

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.worker_pids():
            collector = self._collectors.get(pid)
            if collector is None:
                proc = str(self._proc)
                collector = ProcessCollector(pid=_constant(pid), proc=proc, registry=None)
                self._collectors[pid] = collector
            for family in collector.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    labels = {**sample.labels, "pid": str(pid)}
                    merged.add_sample(sample.name, labels, sample.value)
        yield from families.values()


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


@functools.cache
def _worker_collector(directory: str) -> WorkerProcessCollector:
    return WorkerProcessCollector(directory)


def render_metrics(sessions: Mapping[str, SessionStats] | None = None) -> tuple[bytes, str]:
    """The scrape body and its content type: every worker's samples in multiprocess mode."""
    if sessions is not None:
        observe_sessions(sessions)
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        # first: it drops the files of workers that died before the others are read
        registry.register(_worker_collector(os.environ[MULTIPROC_ENV]))
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
