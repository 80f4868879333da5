"""The `mailgate` command: `serve` runs the gateway, `openapi` prints the spec."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from service import __version__
from service.config import Settings, SettingsError, load_settings, unknown_variables

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client at import


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mailgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP gateway (uvicorn)")
    serve.add_argument("--host", help="bind address (MAILGATE_HOST)")
    serve.add_argument("--port", type=int, help="port (MAILGATE_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (MAILGATE_WORKERS)")
    sub.add_parser("openapi", help="print the OpenAPI document as JSON")
    args = parser.parse_args(argv)

    for name, suggestion in unknown_variables(os.environ):
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        print(f"mailgate: warning: unknown setting {name} is ignored{hint}", file=sys.stderr)
    overrides = {
        k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port",
        None)), ("workers", getattr(args, "workers", None))) if v is not None
    }  # fmt: skip
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return 2

    if args.command == "openapi":
        from service.main import create_app

        json.dump(create_app(settings).openapi(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    return serve_forever(settings, overrides)


def serve_forever(settings: Settings, overrides: dict[str, object]) -> int:
    """Run uvicorn with the gateway's logging, metrics directory and tracing checked."""
    metrics_dir = _metrics_dir(settings.workers)  # before prometheus_client is imported
    from service.observability import logging_config, tracing

    try:
        tracing.check_env()
    except ValueError as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return 2
    for key, value in overrides.items():  # let worker processes see the flags
        os.environ[f"MAILGATE_{key.upper()}"] = str(value)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(
        f"mailgate {__version__} on http://{host}:{settings.port} (docs: /docs), "
        f"{settings.workers} worker{'s' if settings.workers > 1 else ''}",
        file=sys.stderr,
        flush=True,
    )
    import uvicorn

    from service.api.httpserver import ProblemH11Protocol

    try:
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            log_config=logging_config(settings.log_format, settings.log_level),
            access_log=False,  # the gateway writes its own access line (route, duration)
            proxy_headers=True,
            server_header=False,
            http=ProblemH11Protocol,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _metrics_dir(workers: int) -> Path | None:
    """With several workers, give prometheus_client a directory shared by all of them
    (the operator's ``PROMETHEUS_MULTIPROC_DIR``, emptied, or a new temporary one, removed
    at exit), so that one scrape covers every worker. Returns the directory to remove."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # samples of an earlier run
            stale.unlink()
        return None
    if workers <= 1:
        return None
    path = Path(tempfile.mkdtemp(prefix="mailgate-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
