"""create_app(): routers, lifespan (session pool), problem handlers, offline docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from service import __version__
from service.api.edge import EdgeMiddleware
from service.api.openapi_doc import DOCS_CSP, document_openapi, offline_redoc_js
from service.api.pagejson import PageEncoder
from service.api.peer import attach_peer
from service.api.problems import install_problem_handlers
from service.api.routes import folders, health, messages, send, sync
from service.api.routes.send import body_limit
from service.api.warmup import warm_up
from service.config import Settings, load_settings
from service.observability import tracing, watch_sessions
from service.protocols.imap.reader import new_imap_pool
from service.protocols.pool import PooledSession, PoolStats, SessionPool
from service.protocols.smtp import SmtpSession
from service.protocols.summary_cache import SummaryCache
from service.state import open_state
from service.sync.fanout import Hub, end_streams_on_signal

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
    tracing.configure_from_env()  # per worker process; a no-op unless OTEL_* asks

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.imap_pool = new_imap_pool(settings)
        app.state.smtp_pool = SessionPool[SmtpSession](settings)
        app.state.pop3_pool = SessionPool[PooledSession](settings)  # a budget of slots only
        app.state.event_hub = Hub(buffer=settings.events_buffer)
        restore = end_streams_on_signal(app.state.event_hub)
        if settings.warm_up:
            await warm_up(app, settings)
        try:
            async with watch_sessions(app.state.session_stats):
                yield
        finally:
            restore()
            await app.state.event_hub.close()
            await app.state.imap_pool.close_all()
            await app.state.pop3_pool.close_all()
            await app.state.smtp_pool.close_all()
            await app.state.state.close()

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
    app.state.session_stats = lambda: session_stats(app)
    app.state.state = open_state(settings)
    app.state.summary_cache = SummaryCache(settings.summary_cache_entries)
    app.state.page_encoder = PageEncoder(settings.summary_cache_entries)
    install_problem_handlers(app)
    for router in (send.router, folders.router, messages.router, sync.router):
        app.include_router(router, prefix="/v1")  # each route takes the mail context
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="mailgate – docs",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.png",
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc.js", include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(
            offline_redoc_js(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title="mailgate – reference",
            redoc_js_url="/redoc.js",
            redoc_favicon_url="/static/favicon.png",
            with_google_fonts=False,
        )
        # and should anything else point elsewhere, the policy keeps the page to this origin
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    document_openapi(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-Mail-User", "X-Mail-Provider", "X-API-Key",
                           "Idempotency-Key", "Range", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Mail-Mode", "Content-Range", "Idempotent-Replayed",
                            "Retry-After"],
        )  # fmt: skip
    if tracing.enabled():
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        app.add_middleware(
            OpenTelemetryMiddleware,
            tracer_provider=tracing.provider(),
            exclude_spans=["receive", "send"],
        )
    # outermost: request id, metrics and access line, body limit (tracing, when on,
    # inside it, so that the observer names the server span)
    app.add_middleware(EdgeMiddleware, limit_for=partial(body_limit, settings))
    return app


def session_stats(app: FastAPI) -> dict[str, PoolStats]:
    """The session budget by protocol, as the metrics publish it."""
    state = app.state
    pools = {name: getattr(state, f"{name}_pool", None) for name in ("imap", "pop3", "smtp")}
    return {name: pool.stats() for name, pool in pools.items() if pool is not None}
