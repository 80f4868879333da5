"""The logging configuration `mailgate serve` hands to uvicorn: JSON lines with the id."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest
from asgi_correlation_id import correlation_id

from service.observability import logging_config, valid_request_id


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_lines_carry_time_level_logger_and_request_id(fmt: str) -> None:
    logging.config.dictConfig(logging_config(fmt, "info"))  # type: ignore[arg-type]
    handler = logging.getLogger("mailgate").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    token = correlation_id.set("req-77")
    try:
        logging.getLogger("mailgate.access").info(
            "GET /v1/messages 200", extra={"route": "/v1/messages", "status": 200}
        )
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("mailgate").exception("unhandled")
        logging.getLogger("uvicorn.error").error("Exception in ASGI application\n")
        logging.getLogger("uvicorn.error").info(  # as uvicorn logs its start
            "Started server process [%d]", 4711,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
        )  # fmt: skip
    finally:
        correlation_id.reset(token)
        plain = {"handlers": [], "propagate": True}
        logging.config.dictConfig({
            "version": 1, "disable_existing_loggers": False,
            "loggers": {"mailgate": plain, "uvicorn": plain, "asgi_correlation_id": plain},
        })  # fmt: skip
    out = stream.getvalue()
    if fmt == "json":
        records = [json.loads(line) for line in out.splitlines()]
        assert len(records) == 3  # uvicorn's copy of the traceback is dropped
        access, error, started = records
        assert access["level"] == "INFO" and access["logger"] == "mailgate.access"
        assert access["request_id"] == "req-77" and access["route"] == "/v1/messages"
        assert access["status"] == 200 and access["time"]
        assert error["level"] == "ERROR" and "RuntimeError: boom" in error["exc_info"]
        assert started["message"] == "Started server process [4711]"
        assert "\x1b" not in out and "color_message" not in started  # no terminal codes
    else:
        assert " INFO mailgate.access [req-77] GET /v1/messages 200" in out
        assert "Exception in ASGI application" not in out


def test_request_id_validation() -> None:
    for good in ("4f0c2a8e9b7d4e61a2c3d4e5f6a7b8c9", "lb-1.2:3", "Root=1-5759e988-bd862e3fe"):
        assert valid_request_id(good)
    for bad in ("", "two words", "x" * 129, "-leading", "new\nline", "é"):
        assert not valid_request_id(bad)
