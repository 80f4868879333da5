"""Large benchmark folders, built once and kept across bench runs.

A folder of N messages lives in the mailbox ``bench-N@example.test`` (INBOX) of
the test mail stack. It is reused when STATUS reports exactly N messages and
``UIDNEXT`` = N + 1 (nothing added or removed since it was built); otherwise
it is rebuilt. Building writes Maildir files straight into the stack's mail
directory (100,000 messages in a few seconds, then one SELECT lets Dovecot
index them) when that directory is writable by this process, else it appends
over IMAP with MULTIAPPEND (RFC 3502), a thousand messages per command.

Usage: bench/bigfolder.py [N ...]   (default 100000 100)
"""

from __future__ import annotations

import imaplib
import os
import shutil
import ssl
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from common import stack

DOMAIN = "example.test"


def message(i: int, to: str) -> bytes:
    """Message ``i`` of a bench folder: a plain text message of about 600 bytes."""
    when = format_datetime(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i))
    return (
        f"From: Bench Sender {i % 97} <sender{i % 97}@{DOMAIN}>\r\n"
        f"To: {to}\r\n"
        f"Subject: bench message {i} of a big folder\r\n"
        f"Date: {when}\r\n"
        f"Message-ID: <big-{i}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n" + "hello from the benchmark folder\r\n" * 12
    ).encode()


def imap(env: dict[str, str], user: str) -> imaplib.IMAP4_SSL:
    """An imaplib session of ``user`` on the stack's IMAPS port, logged in."""
    ctx = ssl.create_default_context(cafile=env["MAILSTACK_CA_FILE"])
    conn = imaplib.IMAP4_SSL("localhost", int(env["MAILSTACK_IMAPS_PORT"]), ssl_context=ctx)
    conn.login(user, env["MAILSTACK_PASSWORD"])
    return conn


def _status(env: dict[str, str], user: str) -> tuple[int, int]:
    conn = imap(env, user)
    try:
        typ, data = conn.status("INBOX", "(MESSAGES UIDNEXT)")
        assert typ == "OK", data
        words = data[0].decode().replace("(", " ").replace(")", " ").split()
        values = dict(zip(words[1::2], words[2::2], strict=False))
        return int(values["MESSAGES"]), int(values["UIDNEXT"])
    finally:
        conn.logout()


def _maildir(env: dict[str, str], user: str) -> Path:
    local, _, domain = user.partition("@")
    return Path(env["MAILSTACK_DIR"]) / "mail" / domain / local


def _write_maildir(env: dict[str, str], user: str, count: int) -> bool:
    """Write the messages as Maildir files; False when the directory is not ours to write."""
    root = _maildir(env, user)
    parent = root.parent
    if not os.access(parent, os.W_OK):
        return False
    st = parent.stat()
    if root.exists():
        shutil.rmtree(root)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    host = "bench"
    base = 1_700_000_000
    cur = root / "cur"
    for i in range(count):
        raw = message(i, user)
        # time.unique.host,S=size:2,flags - the size lets Dovecot skip a stat per message
        name = f"{base + i}.M{i}P1.{host},S={len(raw)}:2,S"
        path = cur / name
        path.write_bytes(raw)
        os.utime(path, (base + i, base + i))
    for dirpath, _, filenames in os.walk(root):
        os.chown(dirpath, st.st_uid, st.st_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), st.st_uid, st.st_gid)
    conn = imap(env, user)  # the first SELECT indexes the new files
    try:
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == count, data
    finally:
        conn.logout()
    return True


def _multiappend(env: dict[str, str], user: str, count: int) -> None:
    """APPEND the messages over IMAP, a thousand per MULTIAPPEND command."""
    conn = imap(env, user)
    try:
        typ, data = conn.select("INBOX")
        if int(data[0]):
            conn.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
            conn.expunge()
        batch = 1000
        for start in range(0, count, batch):
            parts = []
            for i in range(start, min(count, start + batch)):
                raw = message(i, user)
                parts.append(b"(\\Seen) {%d+}\r\n%s" % (len(raw), raw))
            tag = conn._new_tag()  # noqa: SLF001 - imaplib has no MULTIAPPEND
            conn.send(tag + b" APPEND INBOX " + b" ".join(parts) + b"\r\n")
            typ, data = conn._command_complete("APPEND", tag)  # noqa: SLF001
            assert typ == "OK", data
    finally:
        conn.logout()


def ensure(env: dict[str, str], count: int, *, name: str = "bench", changed: int = 0) -> str:
    """The address (``{name}-{count}@``) of a mailbox whose INBOX holds exactly ``count``
    untouched messages, or, with ``changed``, one that benchmarks have changed since: as
    long as it holds ``count`` messages give or take ``changed``, it is kept as it is."""
    user = f"{name}-{count}@{DOMAIN}"
    messages, uidnext = _status(env, user)
    if messages == count and uidnext == count + 1:
        return user
    if changed and abs(messages - count) <= changed:
        return user
    start = time.monotonic()
    how = "maildir files" if _write_maildir(env, user, count) else "MULTIAPPEND"
    if how == "MULTIAPPEND":
        _multiappend(env, user, count)
    messages, _ = _status(env, user)
    assert messages == count, (messages, count)
    took = time.monotonic() - start
    print(f"built {user}: {count} messages by {how} in {took:.1f} s", file=sys.stderr)
    return user


def big_message(size: int) -> bytes:
    """A message of exactly ``size`` bytes (78-byte lines of hex after a short header)."""
    head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: big\r\n\r\n"
    line = b"0123456789abcdef" * 4 + b"0123456789ab\r\n"
    body = line * ((size - len(head)) // len(line))
    return head + body + b"x" * (size - len(head) - len(body))


def ensure_big(env: dict[str, str], size: int) -> str:
    """The address of a mailbox whose INBOX holds one message of exactly ``size`` bytes."""
    user = f"bench-raw-{size}@{DOMAIN}"
    conn = imap(env, user)
    try:
        typ, data = conn.select("INBOX")
        if int(data[0]) == 1:
            typ, got = conn.fetch("1", "(RFC822.SIZE)")
            if typ == "OK" and f"RFC822.SIZE {size})".encode() in got[0]:
                return user
        if int(data[0]):
            conn.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
            conn.expunge()
        typ, data = conn.append("INBOX", None, None, big_message(size))
        assert typ == "OK", data
    finally:
        conn.logout()
    return user


def main() -> None:
    env = stack()
    for count in [int(a) for a in sys.argv[1:]] or [100_000, 100]:
        print(ensure(env, count))


if __name__ == "__main__":
    main()
