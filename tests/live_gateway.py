"""`mailgate serve` as an operator runs it: a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

MAILGATE = str(Path(sys.executable).parent / "mailgate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stack_env(stack: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a gateway on the test mail stack (no other MAILGATE_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MAILGATE_", "OTEL_"))}
    return {
        **clean,
        "MAILGATE_SMTP_URL": f"smtp://localhost:{stack['MAILSTACK_SUBMISSION_PORT']}",
        "MAILGATE_IMAP_URL": f"imaps://localhost:{stack['MAILSTACK_IMAPS_PORT']}",
        "MAILGATE_POP3_URL": f"pop3s://localhost:{stack['MAILSTACK_POP3S_PORT']}",
        "MAILGATE_CA_FILE": stack["MAILSTACK_CA_FILE"],
        **extra,
    }


@contextlib.contextmanager
def serve(env: dict[str, str], log: Path, *args: str) -> Iterator[str]:
    """Run ``mailgate serve ARGS`` (stderr to ``log``) until /healthz answers; yield its URL;
    stop it with SIGTERM (SIGKILL after 20 s)."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [MAILGATE, "serve", "--port", str(port), *args],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mailgate serve exited: {log.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mailgate serve did not answer: {log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
