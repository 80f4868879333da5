"""create_app(): routers, lifespan (session pool), problem handlers, offline docs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from service import __version__
from service.api.deps import CONTEXT_HEADERS
from service.api.peer import attach_peer
from service.api.problems import install_problem_handlers
from service.api.routes import folders, health, messages, send
from service.api.warmup import warm_up
from service.config import Settings, load_settings
from service.idempotency import IdempotencyStore
from service.metrics import Metrics, MetricsMiddleware
from service.models.problem import Problem
from service.models.send import Draft
from service.protocols.imap import new_imap_pool
from service.protocols.pool import PooledSession, SessionPool
from service.protocols.smtp import SmtpSession
from service.protocols.summary_cache import SummaryCache
from service.ratelimit import FailedLoginLimiter

DESCRIPTION = """\
mailgate turns HTTP calls into SMTP, IMAP and POP3 sessions. It stores nothing:
mailbox credentials travel with every request (`Authorization: Basic` for
LOGIN/AUTH PLAIN/USER-PASS, or `Bearer` + `X-Mail-User` for XOAUTH2).

**Mode flag** on fetch, raw and attachment: `keep` leaves the server's copy;
`remove` deletes it only once the peer's TCP has acknowledged every byte of the
answer and did not reset the connection right after (see the `mode` parameter:
behind a proxy the peer is the proxy; for an application-level receipt use `keep`,
then `DELETE`).

Errors are `application/problem+json` (RFC 9457) with a stable `code`.
"""


def _static_dir() -> str:
    return str(files("fastapi_offline") / "static")


class MailgateApp(FastAPI):
    """FastAPI, plus the one thing the server knows and the app needs: the connection's
    transport, for mode=remove's delivery check (:mod:`service.api.peer`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            attach_peer(scope, send)  # the server's own send, before any middleware
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; settings come from the environment unless given."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.imap_pool = new_imap_pool(settings)
        app.state.smtp_pool = SessionPool[SmtpSession](settings)
        app.state.pop3_pool = SessionPool[PooledSession](settings)  # a budget of slots only
        if settings.warm_up:
            await warm_up(app, settings)
        try:
            yield
        finally:
            await app.state.imap_pool.close_all()
            await app.state.pop3_pool.close_all()
            await app.state.smtp_pool.close_all()

    app = MailgateApp(
        title="mailgate",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        license_info={"name": "GPL-3.0-only", "identifier": "GPL-3.0-only"},
    )
    app.state.settings = settings
    app.state.idempotency = IdempotencyStore(settings.idempotency_ttl_seconds)
    app.state.metrics = Metrics()
    app.state.summary_cache = SummaryCache(settings.summary_cache_entries)
    app.state.login_limiter = FailedLoginLimiter(
        settings.auth_failures_max, settings.auth_failures_window_seconds
    )
    install_problem_handlers(app)
    for router in (send.router, folders.router, messages.router):
        app.include_router(router, prefix="/v1")  # each route takes the mail context
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="mailgate – docs",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="mailgate – reference",
            redoc_js_url="/static/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.png",
            with_google_fonts=False,
        )

    _document_security(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-Mail-User", "X-Mail-Provider", "X-API-Key",
                           "Idempotency-Key", "Range", "Content-Type"],
            expose_headers=["X-Mail-Mode", "Content-Range", "Idempotent-Replayed",
                            "Retry-After"],
        )  # fmt: skip
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    logging.getLogger("mailgate").setLevel(settings.log_level.upper())
    return app


SECURITY_SCHEMES = {
    "mailboxBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "Mailbox user and password: IMAP LOGIN, SMTP/POP3 AUTH PLAIN or "
        "USER/PASS. Sent on every request; never stored or logged.",
    },
    "mailboxBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "OAuth 2 access token for SASL XOAUTH2; needs X-Mail-User.",
    },
    "mailUser": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Mail-User",
        "description": "The mailbox address that goes with a Bearer token.",
    },
}


def _document_security(app: FastAPI) -> None:
    """Declare the mailbox credentials as security schemes (the docs' Authorize button),
    and the headers every /v1 operation reads through the mail context."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {})
            components["securitySchemes"] = SECURITY_SCHEMES
            schemas = components.setdefault("schemas", {})
            for model in (Problem, Draft):  # referenced by hand (problem+json, send's body)
                found = model.model_json_schema(
                    ref_template="#/components/schemas/{model}", mode="validation"
                )
                for name, sub in found.pop("$defs", {}).items():
                    schemas.setdefault(name, sub)
                schemas[model.__name__] = found
            for path, ops in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["parameters"] = [*op.get("parameters", []), *CONTEXT_HEADERS]
                        op["security"] = [{"mailboxBasic": []},
                                          {"mailboxBearer": [], "mailUser": []}]  # fmt: skip
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
