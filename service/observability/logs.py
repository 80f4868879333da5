"""Logging: JSON lines or text, every line with the request id (contract §3).

The request id comes from ``X-Request-ID`` when the caller sent a valid one
(:func:`valid_request_id`), else a new one is generated (:mod:`service.api.edge`);
it is echoed in the response header, in problem bodies as ``request_id``, and
in each log line. ``MAILGATE_LOG_FORMAT=json`` (the default of ``mailgate
serve``) writes one JSON object per line with ``time``, ``level``, ``logger``,
``message``, ``request_id`` and, for access lines, ``method``, ``route``,
``status``, ``duration_ms`` and ``protocols``; ``text`` writes the same as a
readable line for ``make run``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from asgi_correlation_id import correlation_id
from pythonjsonlogger.core import RESERVED_ATTRS

LogFormat = Literal["json", "text"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/-]{0,127}")
ACCESS_LOGGER = "mailgate.access"


def valid_request_id(value: str) -> bool:
    """1-128 characters of letters, digits and ``._:=+/-``, starting with a letter or digit
    (UUIDs, nginx and load balancer ids); anything else is replaced by a generated id."""
    return _REQUEST_ID.fullmatch(value) is not None


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return correlation_id.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (or ``-``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = correlation_id.get() or "-"
        return True


class UvicornErrorDuplicate(logging.Filter):
    """Drops uvicorn's own traceback of an exception the gateway already logged and
    answered (one line per unhandled error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "uvicorn.error"
            and str(record.msg).startswith("Exception in ASGI application")
        )


_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s %(request_id)s"
# uvicorn adds its message again with terminal colour codes to some records
_NOT_LOGGED = [*RESERVED_ATTRS, "color_message"]


def logging_config(fmt: LogFormat, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary for the gateway and uvicorn (passed to
    uvicorn as ``log_config``, so that every worker applies it)."""
    formatter: dict[str, Any]
    if fmt == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": _JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
            "reserved_attrs": _NOT_LOGGED,
        }
    else:
        formatter = {"format": _TEXT}
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "one_traceback": {"()": UvicornErrorDuplicate},
        },
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["request_id", "one_traceback"],
            }
        },
        "loggers": {
            "mailgate": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "asgi_correlation_id": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }
