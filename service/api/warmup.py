"""Start-up warm-up: pay the first request's one-time costs before the first caller does.

Measured on a fresh process (2026-11-30), a first listing spent about 40 ms in
FastAPI building its included routes' dependency plans (done lazily, on the first
request that matches them), a few ms creating the TLS context, and 10-15 ms in a
garbage collection that walked every object the imports had made. :func:`warm_up`
runs in the lifespan, before the server accepts connections: it builds the TLS
contexts, sends every /v1 operation one in-process request without credentials
(each stops at the 401/403 check, before any mail server is involved, and skips
the middleware so that no metric counts it), runs the header parser once, and then
moves the start-up objects out of the collector's way (:func:`gc.freeze`).
"""

from __future__ import annotations

import gc
import logging
from contextlib import AsyncExitStack
from typing import Any

from fastapi import FastAPI
from starlette.types import Message

from service.config import Settings
from service.mime import summary_fields

log = logging.getLogger("mailgate")

_SAMPLE_HEADER = (
    b"From: =?utf-8?q?Warm_Up?= <warm@example.invalid>\r\nTo: a@example.invalid\r\n"
    b"Subject: warm up\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
)


async def warm_up(app: FastAPI, settings: Settings) -> None:
    """Build TLS contexts and FastAPI's route plans, exercise the parsers, freeze the GC's
    view of start-up objects. Never raises: a failed warm-up only costs the first call."""
    try:
        for provider in settings.providers.values():
            for service in ("imap", "pop3", "smtp"):
                settings.ssl_context(provider, service)
        for method, path in _operations(app):
            await _request_without_credentials(app, method, path)
        summary_fields(_SAMPLE_HEADER)
    except Exception as exc:  # pragma: no cover - defensive: start-up must not fail here
        log.warning("warm-up incomplete: %s", type(exc).__name__)
    gc.collect()
    gc.freeze()


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) of every /v1 operation in the OpenAPI document."""
    out = []
    for template, ops in app.openapi().get("paths", {}).items():
        if not template.startswith("/v1/"):
            continue
        path = template.replace("{id}", "i").replace("{attachment_id}", "1")
        out += [(method.upper(), path) for method in ops]
    return out


async def _request_without_credentials(app: FastAPI, method: str, path: str) -> None:
    """One request straight into the router (no middleware: nothing is counted or
    logged); the missing credentials end it before any mail server is contacted."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"warm-up")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "app": app,
        "state": {},
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    try:
        # FastAPI's own middleware puts this stack in the scope; its handlers require it.
        async with AsyncExitStack() as stack:
            scope["fastapi_middleware_astack"] = stack
            await app.router(scope, receive, send)
    except Exception:  # noqa: S110 - the expected 401/403 is raised past the router here
        pass


__all__ = ["warm_up"]
