"""Greeting probe for the mailgate test mail stack (stdlib only).

Usage: probe.py [--wait SECONDS] HOST CAFILE NAME:PROTO:PORT...
  PROTO is one of imap, imaps, pop3, pop3s, smtp, smtps, redis.

Checks that every port answers a real greeting ("* OK", "+OK", "220"; Redis,
which does not greet, must answer PING with "+PONG"); the
implicit-TLS ports after a verified TLS handshake with CAFILE (and the
server name "localhost"). Without --wait: one pass (with a short retry),
exit 0 if all answer, 1 otherwise. With --wait: first wait until each port
is in LISTEN state (no bare connects that would only log handshake errors),
then retry the greetings until all answer or the time is up.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time

QUIT = {
    "imap": b"a LOGOUT\r\n",
    "imaps": b"a LOGOUT\r\n",
    "pop3": b"QUIT\r\n",
    "pop3s": b"QUIT\r\n",
    "smtp": b"QUIT\r\n",
    "smtps": b"QUIT\r\n",
    "redis": b"QUIT\r\n",
}

GREETING = {
    "imap": b"* OK",
    "imaps": b"* OK",
    "pop3": b"+OK",
    "pop3s": b"+OK",
    "smtp": b"220",
    "smtps": b"220",
    "redis": b"+PONG",
}


def listening_ports() -> set[int]:
    """Ports in LISTEN state, from /proc/net/tcp and tcp6."""
    ports: set[int] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def greet(host: str, cafile: str, proto: str, port: int, timeout: float) -> str:
    """Return "" when the greeting is right, else a short reason."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return f"connect: {e}"
    try:
        if proto in ("imaps", "pop3s", "smtps"):
            ctx = ssl.create_default_context(cafile=cafile)
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        sock.settimeout(timeout)
        if proto == "redis":
            sock.sendall(b"PING\r\n")
        data = b""
        while b"\n" not in data and len(data) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        line = data.split(b"\n", 1)[0].strip()
        if line.startswith(GREETING[proto]):
            try:  # say goodbye, so the server logs no lost connection
                sock.sendall(QUIT[proto])
                sock.recv(4096)
            except OSError:
                pass
            return ""
        return f"unexpected greeting {line[:80]!r}"
    except (OSError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main(argv: list[str]) -> int:
    wait = 0.0
    if argv[:1] == ["--wait"]:
        wait = float(argv[1])
        argv = argv[2:]
    host, cafile, specs = argv[0], argv[1], argv[2:]
    targets = []
    for spec in specs:
        name, proto, port_s = spec.split(":")
        targets.append((name, proto, int(port_s)))

    if not wait:
        # Health check of a running stack: one pass, one retry for a port that
        # was momentarily busy (never restart a healthy stack by mistake).
        for _attempt in range(2):
            bad = [(n, r) for n, p, port in targets if (r := greet(host, cafile, p, port, 5.0))]
            if not bad:
                return 0
            time.sleep(0.2)
        for n, r in bad:
            print(f"probe: {n}: {r}", file=sys.stderr)
        return 1

    deadline = time.monotonic() + wait
    pending = list(targets)
    reasons: dict[str, str] = {}
    while pending:
        up = listening_ports()
        still = []
        for name, proto, port in pending:
            if port not in up:
                reasons[name] = f"port {port} not listening"
                still.append((name, proto, port))
                continue
            r = greet(host, cafile, proto, port, 3.0)
            if r:
                reasons[name] = r
                still.append((name, proto, port))
        pending = still
        if not pending:
            return 0
        if time.monotonic() > deadline:
            for name, proto, port in pending:
                print(f"probe: {name} ({proto} {host}:{port}): {reasons[name]}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
