"""Every exception → application/problem+json (RFC 9457), rendered in one place."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from service.api.bodylimit import BodyTooLarge
from service.errors import MailGatewayError, TooLarge
from service.observability import current_request_id

log = logging.getLogger("mailgate")

PROBLEM_TYPE_BASE = "https://mailgate.dev/problems/"
_HTTP_CODES = {
    400: "bad-request",
    401: "auth-required",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "validation-failed",
    429: "rate-limited",
}


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        "request_id": current_request_id(),
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return ProblemResponse(body, status_code=status, headers=headers)


def render_error(request: Request, exc: MailGatewayError) -> ProblemResponse:
    upstream = (
        {"protocol": exc.upstream.protocol, "reply": exc.upstream.reply} if exc.upstream else None
    )
    if exc.status >= 500:
        log.warning("%s %s -> %s %s: %s", request.method, request.url.path, exc.status,
                    exc.code, exc.detail)  # fmt: skip
    return problem(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers(),
        upstream=upstream,
        **exc.extra,
    )


def _safe_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the offending input (it may hold a secret)."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    return out


def _allowed_methods(request: Request) -> str:
    """Every method the OpenAPI document gives this path (Starlette names only the first
    route whose path matches, e.g. POST alone for /v1/messages/delete, which the
    GET/DELETE/PATCH of /v1/messages/{id} match as well)."""
    app = request.app
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for template, ops in app.openapi().get("paths", {}).items():
            regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            table.append((re.compile(regex), {m.upper() for m in ops}))
        app.state.allow_table = table
    methods: set[str] = set()
    for pattern, ops in table:
        if pattern.fullmatch(request.url.path):
            methods |= ops
    return ", ".join(sorted(methods))  # no HEAD: no route answers it (405 too)


def _json_body_refused(request: Request, errors: list[dict[str, Any]]) -> bool:
    """A JSON body route's body errors come from a body that is not JSON by its type:
    a Content-Type other than application/json (or ``+json``), or none with a body
    (415 then, as POST /v1/send answers; RFC 9110 §15.5.16). No body and no type
    is left to the 422 that says the body is required."""
    body_errors = [e for e in errors if e["loc"][:1] == ["body"]]
    if not body_errors:
        return False
    ctype = request.headers.get("content-type")
    if ctype is None:
        return any(e["type"] != "missing" for e in body_errors)
    media = ctype.partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return not (main == "application" and (sub == "json" or sub.endswith("+json")))


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error through the problem renderer; nothing leaks internals."""

    @app.exception_handler(MailGatewayError)
    async def _gateway(request: Request, exc: MailGatewayError) -> ProblemResponse:
        return render_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ProblemResponse:
        errors = _safe_errors(exc.errors())
        if _json_body_refused(request, errors):
            return problem(
                request,
                status=415,
                code="unsupported-media-type",
                title="Unsupported media type",
                detail="Send the body as application/json.",
            )
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(
                request,
                status=400,
                code="bad-request",
                title="Bad request",
                detail="The request body is not valid JSON.",
            )
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(p for p in first["loc"] if p not in ("body",))
        return problem(
            request,
            status=422,
            code="validation-failed",
            title="Validation failed",
            detail=f"{where}: {first['msg']}" if where else str(first["msg"]),
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        if isinstance(exc, BodyTooLarge):
            return render_error(request, TooLarge(str(exc.detail)))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        code = _HTTP_CODES.get(exc.status_code, "error")
        return problem(
            request,
            status=exc.status_code,
            code=code,
            title=str(exc.detail) if isinstance(exc.detail, str) else "Error",
            detail=str(exc.detail) if isinstance(exc.detail, str) else "Error",
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
        # One record (one JSON line) with the traceback; uvicorn's copy is filtered out.
        log.error(
            "unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )  # fmt: skip
        request_id = current_request_id()
        return problem(
            request,
            status=500,
            code="internal-error",
            title="Internal error",
            detail="The gateway failed unexpectedly; the error was logged.",
            # this handler runs outside the middleware that adds the header to the rest
            headers={"X-Request-ID": request_id} if request_id else None,
        )
