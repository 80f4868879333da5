"""Oversized chunked uploads to POST /v1/send (JSON, raw message/rfc822, multipart): each
is refused with 413 while it streams, and the gateway's peak RSS barely moves.

For each kind, a 200 MB body (chunked: no Content-Length to refuse it early) is sent
with WRONG credentials to a gateway whose MAILGATE_MAX_MESSAGE_BYTES is 25 MiB. Printed:
the status and problem code, how many bytes went out before the answer, and the
gateway process's peak RSS growth (VmHWM reset through /proc/PID/clear_refs before
each upload, against VmRSS before it). Goal: growth ≤ 2 MiB over the limit.

    .venv/bin/python bench/upload_memory.py [MEGABYTES]
"""

from __future__ import annotations

import base64
import json
import select
import socket
import sys
import time
from collections.abc import Iterator

from common import gateway, stack

TOTAL = (int(sys.argv[1]) if len(sys.argv) > 1 else 200) * 1000 * 1000
LIMIT = 25 * 1024 * 1024
CHUNK = 64 * 1024
AUTH = "Basic " + base64.b64encode(b"victim@example.test:wrong-password").decode()


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def filler(total: int, byte: bytes = b"a") -> Iterator[bytes]:
    block = byte * CHUNK
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield block[:n]
        sent += n


def json_body(total: int) -> tuple[str, Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        yield b'{"to": ["x@example.test"], "subject": "big", "text": "'
        yield from filler(total)
        yield b'"}'

    return "application/json", gen()


def raw_body(total: int) -> tuple[str, Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        yield b"From: victim@example.test\r\nTo: x@example.test\r\nSubject: big\r\n\r\n"
        line = b"a" * 76 + b"\r\n"
        sent = 0
        while sent < total:
            yield line * 800
            sent += len(line) * 800

    return "message/rfc822", gen()


def multipart_body(total: int) -> tuple[str, Iterator[bytes]]:
    boundary = "bench-boundary-7f3a"
    draft = json.dumps({"to": ["x@example.test"], "subject": "big", "text": "file"})

    def gen() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\n'
            f'{draft}\r\n--{boundary}\r\nContent-Disposition: form-data; name="attachments"; '
            f'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        yield from filler(total, b"\x00")
        yield f"\r\n--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", gen()


def upload(port: int, ctype: str, body: Iterator[bytes]) -> tuple[int, str, int, float]:
    """Send a chunked POST /v1/send; stop sending as soon as an answer arrives.
    Returns (status, problem code, bytes sent, seconds)."""
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            "POST /v1/send HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: {ctype}\r\nAuthorization: {AUTH}\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    sent = 0
    try:
        for chunk in body:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                break
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    sock.settimeout(30)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    try:
        code = json.loads(payload).get("code", "")
    except ValueError:
        code = payload[:60].decode("latin-1")
    return status, code, sent, time.monotonic() - start


def main() -> None:
    env = stack()
    print(f"{TOTAL / 1e6:.0f} MB chunked uploads, wrong credentials, limit {LIMIT >> 20} MiB")
    worst = 0.0
    with gateway(env, max_message_bytes=str(LIMIT)) as (base, pid):
        port = int(base.rsplit(":", 1)[1])
        for kind, make in (("json", json_body), ("raw", raw_body), ("multipart", multipart_body)):
            upload(port, *make(2 * 1024 * 1024))  # warm-up: code paths, buffers
            time.sleep(0.2)
            before = status_kib(pid, "VmRSS")
            reset_peak(pid)
            status, code, sent, seconds = upload(port, *make(TOTAL))
            time.sleep(0.2)
            growth = (status_kib(pid, "VmHWM") - before) / 1024
            worst = max(worst, growth)
            print(
                f"{kind:9} -> {status} {code:12} after {sent / 1e6:6.1f} MB sent, "
                f"{seconds:5.2f} s; peak RSS growth {growth:6.2f} MiB"
            )
    verdict = "OK" if worst <= 2 else "over the goal"
    print(f"worst growth {worst:.2f} MiB (goal: at most 2 MiB over the limit): {verdict}")


if __name__ == "__main__":
    main()
