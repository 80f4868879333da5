"""Start (or reuse) the real test mail stack and describe it. Stdlib only.

    from tests.mailstack_env import ensure_mailstack, fresh_address
    env = ensure_mailstack()          # {"MAILSTACK_IMAPS_PORT": "31993", ...}
    user = fresh_address()            # "t-3f9c...@example.test", password "secret"

ensure_mailstack() runs tests/mailstack/start.sh, which returns at once when
the stack of $MAILSTACK_DIR (default /tmp/mailgate-stack) is already up, and
parses $MAILSTACK_DIR/env. See tests/mailstack/README.md.

With MAILSTACK_SERVER=cyrus (`make test-cyrus`), ensure_mailstack() also starts the
private Cyrus IMAP of tests/mailstack/cyrus.sh and points the IMAP and POP3 ports of
the answer (MAILSTACK_IMAP_PORT, MAILSTACK_IMAPS_PORT, MAILSTACK_POP3_PORT,
MAILSTACK_POP3S_PORT) at Cyrus; SMTP, Redis and the Dovecot variants stay as they are.
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
CYRUS_SH = MAILSTACK_HOME / "cyrus.sh"
STOP_SH = MAILSTACK_HOME / "stop.sh"

DOMAIN = "example.test"
PASSWORD = "secret"
SINK_ADDRESS = "sink@sink.test"

_cache: dict[str, str] | None = None


def mailstack_dir() -> Path:
    return Path(os.environ.get("MAILSTACK_DIR", "/tmp/mailgate-stack"))


def mail_server() -> str:
    """The IMAP/POP3 server the tests run against: "dovecot" (default) or "cyrus"."""
    server = os.environ.get("MAILSTACK_SERVER", "dovecot") or "dovecot"
    if server not in ("dovecot", "cyrus"):
        raise RuntimeError(f"MAILSTACK_SERVER must be dovecot or cyrus, not {server!r}")
    return server


CYRUS_PORTS = {
    "MAILSTACK_IMAP_PORT": "MAILSTACK_CYRUS_IMAP_PORT",
    "MAILSTACK_IMAPS_PORT": "MAILSTACK_CYRUS_IMAPS_PORT",
    "MAILSTACK_POP3_PORT": "MAILSTACK_CYRUS_POP3_PORT",
    "MAILSTACK_POP3S_PORT": "MAILSTACK_CYRUS_POP3S_PORT",
}


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
    """Make sure the mail stack runs; return the contents of its env file (with
    MAILSTACK_SERVER=cyrus: Cyrus too, its ports as the IMAP and POP3 ones).

    Cheap when the stack is up (start.sh answers in a fraction of a second),
    and cached per process unless refresh=True. The first run on a fresh
    machine installs the Debian packages (root needed), hence the long
    timeout. Raises RuntimeError with the tail of the start log on failure.
    """
    global _cache
    if _cache is not None and not refresh:
        return dict(_cache)

    root = mailstack_dir()
    script = CYRUS_SH if mail_server() == "cyrus" else START_SH
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
                ["bash", str(script)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{script} did not finish within {timeout:.0f}s; "
                f"tail of {log_path}:\n{_tail(log_path)}"
            ) from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"{script} failed (exit {proc.returncode}); tail of {log_path}:\n{_tail(log_path)}"
        )
    env_path = root / "env"
    try:
        env = read_env_file(env_path)
    except OSError as e:
        raise RuntimeError(
            f"{script} succeeded but {env_path} is unreadable: {e}; "
            f"tail of {log_path}:\n{_tail(log_path)}"
        ) from None
    env["MAILSTACK_SERVER"] = mail_server()
    # Where a user's own folders go: Dovecot at the top, Cyrus (Debian's default
    # altnamespace: no) under "INBOX.", where a CREATE at the top is refused.
    env["MAILSTACK_FOLDER_PREFIX"] = "INBOX." if env["MAILSTACK_SERVER"] == "cyrus" else ""
    if env["MAILSTACK_SERVER"] == "cyrus":
        cyrus = read_env_file(root / "cyrus" / "env")
        env.update(cyrus)
        for port, cyrus_port in CYRUS_PORTS.items():
            env[port] = cyrus[cyrus_port]
    _cache = env
    return dict(env)


def personal(stack: dict[str, str], name: str) -> str:
    """The full name of the user's folder ``name`` on the server in use: "Archive" on
    Dovecot, "INBOX.Archive" on Cyrus."""
    return stack.get("MAILSTACK_FOLDER_PREFIX", "") + name


def deliver(stack: dict[str, str], sender: str, recipient: str, raw: bytes,
            password: str = PASSWORD) -> None:  # fmt: skip
    """Deliver ``raw`` to ``recipient`` as mail arrives: on Dovecot over SMTP submission
    (Postfix, then LMTP), on Cyrus over Cyrus's own LMTP socket (Postfix delivers to
    Dovecot only). Returns once the server took it; Dovecot may still be filing it."""
    import smtplib
    import ssl

    if stack.get("MAILSTACK_SERVER") == "cyrus":
        with smtplib.LMTP(stack["MAILSTACK_CYRUS_LMTP_SOCKET"], timeout=30) as lmtp:
            refused = lmtp.sendmail(sender, [recipient], raw)
        assert not refused, refused
        return
    ctx = ssl.create_default_context(cafile=stack["MAILSTACK_CA_FILE"])
    with smtplib.SMTP("localhost", int(stack["MAILSTACK_SUBMISSION_PORT"]), timeout=30) as s:
        s.starttls(context=ctx)
        s.login(recipient, password)
        s.sendmail(sender, [recipient], raw)


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
