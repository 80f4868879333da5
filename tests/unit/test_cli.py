"""The `mailgate` command as the Dockerfile's ENTRYPOINT runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from service.serving import uvicorn_options

ROOT = Path(__file__).resolve().parents[2]
MAILGATE = str(Path(sys.executable).parent / "mailgate")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    return subprocess.run(
        [MAILGATE, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_openapi_command_prints_the_spec() -> None:
    out = run("openapi")
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)
    assert spec["info"]["title"] == "mailgate" and "/v1/send" in spec["paths"]


def test_bad_setting_stops_start_up_with_one_line_naming_it() -> None:
    out = run("serve", MAILGATE_POP3_URL="pop3+plain://mail.example.com:110")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "MAILGATE_POP3_URL" in lines[0], out.stderr
    out = run("serve", MAILGATE_COMMAND_TIMEOUT="soon")
    assert out.returncode == 2 and "MAILGATE_COMMAND_TIMEOUT" in out.stderr


def test_dockerfile_entrypoint_is_the_installed_command() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["mailgate"\]$', text, re.M)
    assert re.search(r'^CMD \["serve"\]$', text, re.M)
    assert re.search(r"^USER \d+$", text, re.M)  # never root
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'mailgate = "service.cli:main"' in pyproject


def test_version() -> None:
    from service import __version__

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"mailgate {__version__}"


def test_unknown_mailgate_variable_is_one_warning_line_with_a_suggestion() -> None:
    out = run("openapi", MAILGATE_POOL_SIZE_PER_USR="3", MAILGATE_COLOUR="blue")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "mailgate: warning: unknown setting MAILGATE_COLOUR is ignored",
        "mailgate: warning: unknown setting MAILGATE_POOL_SIZE_PER_USR is ignored; "
        "did you mean MAILGATE_POOL_SIZE_PER_USER?",
    ]


def test_unknown_otel_exporter_stops_start_up_with_one_line() -> None:
    out = run("serve", OTEL_TRACES_EXPORTER="nosuch")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "OTEL_TRACES_EXPORTER=nosuch" in line


def test_readme_configuration_table_is_generated_from_the_settings() -> None:
    from service.settings_table import settings_table, with_table

    readme = (ROOT / "README.md").read_text()
    assert with_table(readme) == readme, "README's table is stale: run 'make readme'"
    table = settings_table()
    from service.config import Settings

    for name in Settings.model_fields:
        assert f"| `MAILGATE_{name.upper()}` |" in table


async def test_the_tests_run_on_the_event_loop_of_mailgate_serve() -> None:
    """`mailgate serve` runs on uvloop with httptools; so does every async test."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    options = uvicorn_options()
    assert options["loop"] == "uvloop" and issubclass(options["http"], HttpToolsProtocol)
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == "uvloop"
