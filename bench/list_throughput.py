"""Listing 50 messages with 16 concurrent clients: gateway vs a bare aioimaplib session.

Prints requests per second for: one bare aioimaplib session (commands in series, as
one session must), eight bare sessions, and the gateway (1 and 2 workers; with its
summary cache, as a repeated listing meets it, and without, as a first listing does),
plus the gateway's ratios. The load generator shares the 2 cores with the gateway.
Bounded in time; loopback only. Usage: bench/list_throughput.py [seconds]
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import sys

import aioimaplib
import httpx
from common import fresh_address, gateway, rate, seed, stack

CLIENTS = 16
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
FIELDS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT FROM TO CC DATE CONTENT-TYPE)]"


async def bare(env: dict[str, str], user: str, sessions: int) -> float:
    ctx = ssl.create_default_context(cafile=env["MAILSTACK_CA_FILE"])
    conns = []
    for _ in range(sessions):
        c = aioimaplib.IMAP4_SSL("localhost", int(env["MAILSTACK_IMAPS_PORT"]), ssl_context=ctx)
        await c.wait_hello_from_server()
        await c.login(user, env["MAILSTACK_PASSWORD"])
        await c.select("INBOX")
        conns.append(c)
    pool: asyncio.Queue[aioimaplib.IMAP4_SSL] = asyncio.Queue()
    for c in conns:
        pool.put_nowait(c)

    async def once() -> None:
        c = await pool.get()
        try:
            r = await c.uid_search("ALL")
            uids = r.lines[0].decode().split()[-50:]
            r = await c.uid("fetch", ",".join(uids), f"(UID FLAGS RFC822.SIZE {FIELDS})")
            assert r.result == "OK"
        finally:
            pool.put_nowait(c)

    per_second = await rate(CLIENTS, SECONDS, once)
    for c in conns:
        await c.logout()
    return per_second


async def through_gateway(base: str, user: str, password: str) -> float:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as http:
        r = await http.get("/v1/messages", params={"limit": 50})  # warm the pool
        assert r.status_code == 200 and len(r.json()["items"]) == 50, r.text

        async def once() -> None:
            r = await http.get("/v1/messages", params={"limit": 50})
            assert r.status_code == 200, r.text

        return await rate(CLIENTS, SECONDS, once)


def main() -> None:
    env = stack()
    user = fresh_address("bench")
    seed(env, user, 60)
    one = asyncio.run(bare(env, user, 1))
    eight = asyncio.run(bare(env, user, 8))
    print(f"bare aioimaplib, 1 session : {one:7.1f} req/s")
    print(f"bare aioimaplib, 8 sessions: {eight:7.1f} req/s")
    for cache in ("20000", "0"):
        label = "summary cache on " if cache != "0" else "summary cache off"
        for workers in (1, 2):
            with gateway(env, workers=workers, summary_cache_entries=cache) as (base, _):
                rate = asyncio.run(through_gateway(base, user, env["MAILSTACK_PASSWORD"]))
            print(
                f"mailgate, {workers} worker(s), {label}: {rate:7.1f} req/s  "
                f"(ratio to 1 bare session {rate / one:.2f}, to 8 sessions {rate / eight:.2f})"
            )


if __name__ == "__main__":
    main()
