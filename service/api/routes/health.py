"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from service.api.deps import SettingsDep
from service.errors import UpstreamUnavailable
from service.models.health import Health, Readiness
from service.models.problem import problem_responses
from service.observability import render_metrics

router = APIRouter(tags=["health"])
_READY_503 = problem_responses(503)[503]
_READY_503["content"]["application/problem+json"]["schema"] = {
    "allOf": [
        _READY_503["content"]["application/problem+json"]["schema"],
        {"properties": {"checks": Readiness.model_json_schema()["properties"]["checks"]}},
    ]
}


@router.get(
    "/healthz",
    operation_id="getHealth",
    summary="Liveness: the process answers",
    response_model=Health,
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _reachable(host: str, port: int, wait: float) -> bool:
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


@router.get(
    "/readyz",
    operation_id="getReadiness",
    summary="Readiness: settings loaded and the mail servers' ports reachable",
    response_model=Readiness,
    description="503 (problem+json `upstream-unavailable`, with the same `checks`) when a "
    "configured server's port cannot be reached within MAILGATE_READY_TIMEOUT. Only a TCP "
    "connect: no login, no credentials. `checks.state` tells whether the shared state "
    "store (Redis) answers; it does not make the gateway unready, because only sends "
    "with an Idempotency-Key need it (they answer 503 meanwhile).",
    responses={503: _READY_503},
)
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    checks = {}
    targets = []
    for provider in settings.providers.values():
        for proto in ("smtp", "imap", "pop3"):
            server = provider.server(proto)
            if server is not None:
                targets.append((f"{provider.name}.{proto}", server.host, server.port))
    results = await asyncio.gather(
        *(_reachable(h, p, settings.ready_timeout) for _, h, p in targets)
    )
    for (name, _, _), ok in zip(targets, results, strict=True):
        checks[name] = "ok" if ok else "unreachable"
    store = request.app.state.state.store
    if store.name != "memory":
        checks["state"] = "ok" if await store.available() else "unavailable"
    if not all(results):
        raise UpstreamUnavailable(
            "A configured mail server cannot be reached.",
            retry_after=5,
            extra={"checks": checks},
        )
    return JSONResponse({"status": "ready", "checks": checks})


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    description="Prometheus text format; with several workers one scrape covers them all.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    body, content_type = render_metrics(request.app.state.session_stats())
    return Response(body, media_type=content_type)
