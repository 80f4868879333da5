"""The `mailgate` command: `serve` runs the gateway, `openapi` prints the spec."""

from __future__ import annotations

import argparse
import json
import os
import sys

from service.config import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP gateway (uvicorn)")
    serve.add_argument("--host", help="bind address (MAILGATE_HOST)")
    serve.add_argument("--port", type=int, help="port (MAILGATE_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (MAILGATE_WORKERS)")
    sub.add_parser("openapi", help="print the OpenAPI document as JSON")
    args = parser.parse_args(argv)

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

    import uvicorn

    from service.serving import uvicorn_options

    for key, value in overrides.items():  # let worker processes see the flags
        os.environ[f"MAILGATE_{key.upper()}"] = str(value)
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        **uvicorn_options(),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
