"""One mail server command observed: a latency histogram sample and a client span."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

from opentelemetry.trace import SpanKind, Status, StatusCode

from service.errors import UpstreamTimeout
from service.observability import tracing
from service.observability.metrics import MAIL_COMMAND_SECONDS

# The protocols one HTTP request spoke, for its access log line (set by the middleware).
request_protocols: ContextVar[set[str] | None] = ContextVar("request_protocols", default=None)


class MailCall:
    """The outcome of one command: ``ok`` unless the adapter or an exception says otherwise.

    Outcomes: ``ok``; ``refused`` (IMAP NO, POP3 -ERR, an SMTP 4xx/5xx reply);
    ``timeout``; ``error`` (connection lost, protocol violation); ``aborted`` (the
    request was cancelled or the client went away mid-command).
    """

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome = "ok"

    def refused(self) -> None:
        """The server answered, but said no."""
        self.outcome = "refused"


def _outcome(exc: BaseException) -> str:
    marked = getattr(exc, "mail_outcome", None)
    if isinstance(marked, str):
        return marked
    if isinstance(exc, TimeoutError | UpstreamTimeout):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "aborted"
    return "error"


@contextlib.contextmanager
def mail_command(
    protocol: str, command: str, host: str | None = None, port: int | None = None
) -> Iterator[MailCall]:
    """Time one ``command`` (an upper-case verb such as ``FETCH``, ``RETR``, ``AUTH``) of
    ``protocol`` (``smtp``, ``imap``, ``pop3``) into
    ``mailgate_mail_command_duration_seconds`` and a client span. An exception leaving
    the block sets the outcome (unless the adapter called ``refused()``: the
    exception's ``mail_outcome`` attribute, else timeout/aborted/error) and is
    re-raised unchanged. Usable across ``yield`` in an async generator: the span
    is never made current."""
    call = MailCall()
    attributes: dict[str, str | int] = {"mail.protocol": protocol, "mail.command": command}
    if host is not None:
        attributes["server.address"] = host
    if port is not None:
        attributes["server.port"] = port
    span = tracing.tracer().start_span(
        f"{protocol.upper()} {command}", kind=SpanKind.CLIENT, attributes=attributes
    )
    seen = request_protocols.get()
    if seen is not None:
        seen.add(protocol)
    start = time.perf_counter()
    try:
        yield call
    except BaseException as exc:
        if call.outcome == "ok":  # an adapter's call.refused() before raising stays
            call.outcome = _outcome(exc)
        raise
    finally:
        MAIL_COMMAND_SECONDS.labels(protocol, command, call.outcome).observe(
            time.perf_counter() - start
        )
        span.set_attribute("mail.outcome", call.outcome)
        if call.outcome not in ("ok", "refused"):
            span.set_status(Status(StatusCode.ERROR, call.outcome))
        span.end()
