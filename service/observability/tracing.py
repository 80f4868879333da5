"""OpenTelemetry set-up: off unless the standard ``OTEL_*`` environment asks for an exporter.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``,
``console``, or any installed ``opentelemetry_traces_exporter`` entry point), or
when it is unset and ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (then ``otlp``, which needs the
``opentelemetry-exporter-otlp-proto-http`` package). ``OTEL_SDK_DISABLED=true``
or ``OTEL_TRACES_EXPORTER=none`` keep it off. The service name comes from
``OTEL_SERVICE_NAME`` (default ``mailgate``), other resource attributes from
``OTEL_RESOURCE_ATTRIBUTES``; sampling from ``OTEL_TRACES_SAMPLER``.

Spans: one server span per HTTP request (opentelemetry-instrumentation-asgi),
and one client span per mail command (:func:`service.observability.mail_command`)
with ``mail.protocol``, ``mail.command``, ``mail.outcome``, ``server.address``
and ``server.port``. Never a credential, an address or a message.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer

_ALIASES = {"otlp": "otlp_proto_http"}
_provider: trace.TracerProvider | None = None


def exporters_from_env(env: dict[str, str] | None = None) -> list[str]:
    """The exporter names the environment asks for (empty: tracing stays off)."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = env.get("OTEL_TRACES_EXPORTER")
    if names is None:
        wanted = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        return ["otlp"] if wanted else []
    return [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]


def _exporter_class(name: str) -> type[SpanExporter]:
    found = entry_points(group="opentelemetry_traces_exporter", name=_ALIASES.get(name, name))
    for ep in found:
        cls: type[SpanExporter] = ep.load()
        return cls
    raise ValueError(
        f"OTEL_TRACES_EXPORTER={name}: no such exporter installed "
        "(otlp needs opentelemetry-exporter-otlp-proto-http)"
    )


def check_env() -> list[str]:
    """The exporters the environment asks for, each one checked to be installed;
    ValueError (one line) names the missing one. Nothing is started."""
    names = exporters_from_env()
    for name in names:
        _exporter_class(name)
    return names


def configure_from_env() -> None:
    """Install a tracer provider when ``OTEL_*`` asks for one; ValueError for an unknown
    exporter. Idempotent: a second call keeps the first provider."""
    if _provider is not None:
        return
    names = exporters_from_env()
    if not names:
        return
    exporters = [_exporter_class(n)() for n in names]
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "mailgate")})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)


def use_provider(provider: trace.TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (None: off). Tests pass an in-memory one."""
    global _provider
    _provider = provider


def enabled() -> bool:
    """True when spans are recorded (apps built now get the HTTP middleware)."""
    return _provider is not None


def provider() -> trace.TracerProvider | None:
    return _provider


def tracer() -> Tracer:
    """The gateway's tracer: a no-op one while tracing is off."""
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer("mailgate")
