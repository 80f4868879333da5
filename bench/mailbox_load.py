"""One mailbox under load: the connection budget and slow readers (issue: mail sessions
no caller can starve). Prints, against the real Dovecot (10 connections per user, IP and
protocol):

1. 200 concurrent clients mixing IMAP and POP3 reads (list, parsed fetch, raw) of one
   mailbox for 30 s: answers by status, and Dovecot's connection-limit refusals for that
   user (goal: 0).
2. 20 slow readers of one mailbox's large message (`/raw`, 1 byte a second) while that
   mailbox's IMAP listing is asked every 0.5 s: the listing's slowest answer (goal:
   under 2 s) and its statuses.

    .venv/bin/python bench/mailbox_load.py [seconds, default 30]
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import socket
import sys
import time
from urllib.parse import urlsplit

import httpx
from common import fresh_address, gateway, seed, stack
from mailboxes import Mailbox
from mailstack_env import connection_limit_refusals


async def mixed_load(
    base: str, box: Mailbox, clients: int, seconds: float
) -> collections.Counter[str]:
    statuses: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        ids = {}
        for proto in ("imap", "pop3"):
            r = await http.get("/v1/messages", params={"protocol": proto, "limit": 5},
                               headers=box.auth)  # fmt: skip
            ids[proto] = [i["id"] for i in r.json()["items"]]
        end = time.monotonic() + seconds

        async def client(n: int) -> None:
            rnd = random.Random(n)
            while time.monotonic() < end:
                proto = ("imap", "pop3")[rnd.random() < 0.5]
                what = rnd.choice(("list", "fetch", "raw"))
                if what == "list":
                    url = "/v1/messages"
                else:
                    url = f"/v1/messages/{rnd.choice(ids[proto])}" + (
                        "/raw" if what == "raw" else ""
                    )
                r = await http.get(url, params={"protocol": proto, "limit": 5}
                                   if what == "list" else None, headers=box.auth)  # fmt: skip
                statuses[f"{proto} {r.status_code}"] += 1

        await asyncio.gather(*(client(n) for n in range(clients)))
    return statuses


def slow_reader(base: str, path: str, auth: dict[str, str], stop: float) -> int:
    """Read an answer one byte a second until ``stop``; bytes read."""
    url = urlsplit(base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname, url.port))
    head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n{head}\r\n".encode())
    got = 0
    try:
        while time.monotonic() < stop:
            got += len(sock.recv(1))
            time.sleep(1.0)
    finally:
        sock.close()
    return got


async def slow_readers(base: str, box: Mailbox, readers: int, seconds: float) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.get("/v1/messages", headers=box.auth)
        big = next(i["id"] for i in r.json()["items"] if i["size"] > 1_000_000)
        stop = time.monotonic() + seconds
        loop = asyncio.get_running_loop()
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=readers)
        started = [
            loop.run_in_executor(pool, slow_reader, base, f"/v1/messages/{big}/raw", box.auth, stop)
            for _ in range(readers)
        ]
        await asyncio.sleep(1.0)  # every reader has its answer started
        times: list[float] = []
        codes: collections.Counter[int] = collections.Counter()
        while time.monotonic() < stop - 1:
            t0 = time.monotonic()
            r = await http.get("/v1/messages", headers=box.auth)
            times.append(time.monotonic() - t0)
            codes[r.status_code] += 1
            await asyncio.sleep(0.5)
        read = await asyncio.gather(*started)
        pool.shutdown()
    times.sort()
    print(f"2. {readers} slow readers of a {os.environ.get('BIG_MB', '12')} MB /raw, "
          f"1 byte/s, {seconds:.0f} s: the mailbox's listing answered "
          f"{dict(codes)}, p50 {times[len(times) // 2] * 1000:.0f} ms, slowest "
          f"{times[-1] * 1000:.0f} ms (goal < 2000 ms); the readers got {min(read)}-"
          f"{max(read)} bytes each")  # fmt: skip


async def main(seconds: float) -> None:
    env = stack()
    box = Mailbox(fresh_address("load"), env["MAILSTACK_PASSWORD"])
    seed(env, box.address, 20)
    before = connection_limit_refusals(env, box.address)
    with gateway(env, workers=2) as (base, _):
        statuses = await mixed_load(base, box, 200, seconds)
    after = connection_limit_refusals(env, box.address)
    total = sum(statuses.values())
    print(f"1. 200 clients, IMAP + POP3 reads of one mailbox, {seconds:.0f} s, 2 workers: "
          f"{total} answers {dict(sorted(statuses.items()))}; Dovecot refused "
          f"{after - before} logins for its connection limit (goal 0)")  # fmt: skip
    slow = Mailbox(fresh_address("slow"), env["MAILSTACK_PASSWORD"])
    seed(env, slow.address, 5)
    line = os.urandom(38).hex().encode() + b"\r\n"
    slow.append(env, b"Subject: big\r\n\r\n" + line * (12_000_000 // len(line)))
    with gateway(env) as (base, _):
        await slow_readers(base, slow, 20, min(seconds, 20))


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 30))
