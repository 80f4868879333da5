"""Every exception → application/problem+json (RFC 9457), rendered in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from service.errors import AuthFailed, MailGatewayError
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


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error through the problem renderer; nothing leaks internals."""

    @app.exception_handler(MailGatewayError)
    async def _gateway(request: Request, exc: MailGatewayError) -> ProblemResponse:
        login_key = getattr(request.state, "login_key", None)
        if isinstance(exc, AuthFailed) and login_key is not None:
            request.app.state.login_limiter.failed(login_key)
        return render_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ProblemResponse:
        errors = _safe_errors(exc.errors())
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
        code = _HTTP_CODES.get(exc.status_code, "error")
        return problem(
            request,
            status=exc.status_code,
            code=code,
            title=str(exc.detail) if isinstance(exc.detail, str) else "Error",
            detail=str(exc.detail) if isinstance(exc.detail, str) else "Error",
            headers=dict(exc.headers or {}),
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
