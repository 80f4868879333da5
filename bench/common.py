"""Shared bench helpers: the mail stack, a gateway subprocess, a seeded mailbox."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mailstack_env import ensure_mailstack, fresh_address  # noqa: E402


def stack() -> dict[str, str]:
    return ensure_mailstack()


def seed(env: dict[str, str], address: str, count: int, body: bytes | None = None) -> None:
    ctx = ssl.create_default_context(cafile=env["MAILSTACK_CA_FILE"])
    conn = imaplib.IMAP4_SSL("localhost", int(env["MAILSTACK_IMAPS_PORT"]), ssl_context=ctx)
    conn.login(address, env["MAILSTACK_PASSWORD"])
    for i in range(count):
        if body is None:
            msg = EmailMessage()
            msg["From"] = "Bench Sender <bench@example.test>"
            msg["To"] = address
            msg["Subject"] = f"bench message {i} * (subject"
            msg["Message-ID"] = f"<bench-{i}@example.test>"
            msg.set_content("hello\n" * 20)
            raw = msg.as_bytes()
        else:
            raw = body
        conn.append("INBOX", None, None, raw)
    conn.logout()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GATEWAY_CPU = 0  # the core `mailgate serve` is pinned to (when the machine has two or more)
CLIENT_CPU = 1  # the core of the load generator and the direct clients


def pin_self() -> None:
    """Pin this process (load generator, direct clients) to its own core, away from the
    gateway's, as the issue's measurements did; a no-op on a single core."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextmanager
def gateway(
    env: dict[str, str], workers: int = 1, *, pin: bool = False, **settings: str
) -> Iterator[tuple[str, int]]:
    """Run `mailgate serve` as a subprocess (pinned to GATEWAY_CPU if ``pin``); yield
    (base URL, pid)."""
    port = free_port()
    child_env = dict(os.environ)
    child_env.update(
        MAILGATE_SMTP_URL=f"smtp://localhost:{env['MAILSTACK_SUBMISSION_PORT']}",
        MAILGATE_IMAP_URL=f"imaps://localhost:{env['MAILSTACK_IMAPS_PORT']}",
        MAILGATE_POP3_URL=f"pop3s://localhost:{env['MAILSTACK_POP3S_PORT']}",
        MAILGATE_CA_FILE=env["MAILSTACK_CA_FILE"],
        MAILGATE_PORT=str(port),
        MAILGATE_WORKERS=str(workers),
        MAILGATE_LOG_LEVEL="warning",
    )
    child_env.update({f"MAILGATE_{k.upper()}": v for k, v in settings.items()})
    exe = str(Path(sys.executable).parent / "mailgate")
    cmd = [exe, "serve"]
    if pin and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", str(GATEWAY_CPU), *cmd]
    proc = subprocess.Popen(cmd, env=child_env, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("gateway did not start") from None
            time.sleep(0.01)
    try:
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


async def rate(clients: int, seconds: float, once: Callable[[], Awaitable[None]]) -> float:
    """Run ``once`` in a loop from ``clients`` concurrent tasks for ``seconds``; per second."""
    done = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < end:
            await once()
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.monotonic() - start)


__all__ = [
    "basic_auth",
    "cpu_seconds",
    "fresh_address",
    "gateway",
    "pin_self",
    "rate",
    "seed",
    "stack",
]
