"""Start (or reuse) the real test mail stack and describe it. Stdlib only.

    from tests.mailstack_env import ensure_mailstack, fresh_address
    env = ensure_mailstack()          # {"MAILSTACK_IMAPS_PORT": "31993", ...}
    user = fresh_address()            # "t-3f9c...@example.test", password "secret"

ensure_mailstack() runs tests/mailstack/start.sh, which returns at once when
the stack of $MAILSTACK_DIR (default /tmp/mailgate-stack) is already up, and
parses $MAILSTACK_DIR/env. See tests/mailstack/README.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import uuid
from pathlib import Path

MAILSTACK_HOME = Path(__file__).resolve().parent / "mailstack"
START_SH = MAILSTACK_HOME / "start.sh"
STOP_SH = MAILSTACK_HOME / "stop.sh"

DOMAIN = "example.test"
PASSWORD = "secret"
SINK_ADDRESS = "sink@sink.test"

_cache: dict[str, str] | None = None


def mailstack_dir() -> Path:
    return Path(os.environ.get("MAILSTACK_DIR", "/tmp/mailgate-stack"))


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a file of `export KEY=VALUE` lines."""
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if sep:
            parts = shlex.split(value)
            env[key] = parts[0] if parts else ""
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def ensure_mailstack(refresh: bool = False, timeout: float = 900) -> dict[str, str]:
    """Make sure the mail stack runs; return the contents of its env file.

    Cheap when the stack is up (start.sh answers in a fraction of a second),
    and cached per process unless refresh=True. The first run on a fresh
    machine installs the Debian packages (root needed), hence the long
    timeout. Raises RuntimeError with the tail of the start log on failure.
    """
    global _cache
    if _cache is not None and not refresh:
        return dict(_cache)

    root = mailstack_dir()
    log_path = root / "log" / "start.log"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        open(log_path, "ab").close()
    except OSError:  # not root and the root is root's: log next to it
        log_path = Path(tempfile.gettempdir()) / f"mailstack-start-{os.getuid()}.log"
    # Output goes to a file, never a pipe: Dovecot keeps the stderr it was
    # started with open for its whole life, so a pipe would never close.
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.run(
                ["bash", str(START_SH)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{START_SH} did not finish within {timeout:.0f}s; "
                f"tail of {log_path}:\n{_tail(log_path)}"
            ) from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"{START_SH} failed (exit {proc.returncode}); tail of {log_path}:\n{_tail(log_path)}"
        )
    env_path = root / "env"
    try:
        env = read_env_file(env_path)
    except OSError as e:
        raise RuntimeError(
            f"{START_SH} succeeded but {env_path} is unreadable: {e}; "
            f"tail of {log_path}:\n{_tail(log_path)}"
        ) from None
    _cache = env
    return dict(env)


def stop_mailstack() -> None:
    """Stop the stack (rarely needed: it is meant to outlive test sessions)."""
    global _cache
    _cache = None
    subprocess.run(
        ["bash", str(STOP_SH)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def fresh_address(prefix: str = "t") -> str:
    """A new, unused mailbox: `prefix-<hex>@example.test` (password "secret")."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}@{DOMAIN}"


def connection_limit_refusals(env: dict[str, str], user: str) -> int:
    """How many logins of ``user`` Dovecot has refused for its per-user connection limit
    (its log's "Maximum number of connections" lines)."""
    log = Path(env["MAILSTACK_DIR"]) / "log" / "dovecot.log"
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if "Maximum number of connections" in line and f"user=<{user}>" in line
    )
