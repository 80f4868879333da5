"""Metrics, logs and traces in one place; routes and adapters only call these functions.

- :mod:`.metrics`: the Prometheus families (multiprocess-safe) and the scrape.
- :mod:`.mail`: :func:`mail_command` times one SMTP/IMAP/POP3 command (histogram + span).
- :mod:`.http`: the ASGI middleware that times each request and writes its access line.
- :mod:`.logs`: the logging configuration (JSON or text) with the request id.
- :mod:`.tracing`: OpenTelemetry, off unless the standard ``OTEL_*`` variables ask for it.
"""

from service.observability.logs import current_request_id, logging_config, valid_request_id
from service.observability.mail import mail_command
from service.observability.metrics import (
    record_removal,
    record_stream_bytes,
    render_metrics,
    watch_sessions,
)

__all__ = [
    "current_request_id",
    "logging_config",
    "mail_command",
    "record_removal",
    "record_stream_bytes",
    "render_metrics",
    "valid_request_id",
    "watch_sessions",
]
