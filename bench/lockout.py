"""Lockout scenario: 50 clients guess one mailbox's password while its owner's 5 apps
keep working. Each client has its own loopback address (127.0.1.N), as distinct
clients on the internet would.

For SECONDS (default 60), the 5 right clients (whose app had logged in before the
attack) and the 50 wrong ones call GET /v1/messages in loops. Printed: the share of
the right clients' calls that were served (goal ≥ 99 %), the wrong clients' answers,
and how many refused logins reached Dovecot during the run (its auth log): at most
MAILGATE_AUTH_FAILURES_MAX (20) per window (60 s) is the goal.

    .venv/bin/python bench/lockout.py [SECONDS] [--redis]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from common import fresh_address, gateway, stack

SECONDS = float(next((a for a in sys.argv[1:] if not a.startswith("--")), 60))
REDIS = "--redis" in sys.argv
RIGHT, WRONG = 5, 50
LIMIT, PER_CLIENT, WINDOW = 20, 5, 60


def refused_logins(env: dict[str, str], user: str) -> int:
    log = Path(env["MAILSTACK_DIR"]) / "log" / "dovecot.log"
    needle = f"passwd-file({user},"
    return sum(
        1 for line in log.read_text(errors="replace").splitlines()
        if needle in line and "Password mismatch" in line
    )  # fmt: skip


async def client_loop(
    base: str, address: str, auth: tuple[str, str], end: float, tally: Counter[int]
) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=base, transport=transport, timeout=30) as http:
        while time.monotonic() < end:
            r = await http.get("/v1/messages", params={"limit": 5}, auth=auth)
            tally[r.status_code] += 1
            if r.status_code == 429:  # a polite client would wait; an attacker does not
                await asyncio.sleep(0.05)


async def run(base: str, env: dict[str, str], user: str) -> None:
    password = env["MAILSTACK_PASSWORD"]
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:  # the apps' last login
        r = await http.get("/v1/messages", params={"limit": 5}, auth=(user, password))
        assert r.status_code == 200, r.text
    before = refused_logins(env, user)
    right: Counter[int] = Counter()
    wrong: Counter[int] = Counter()
    end = time.monotonic() + SECONDS
    tasks = [client_loop(base, f"127.0.1.{i + 1}", (user, password), end, right)
             for i in range(RIGHT)]  # fmt: skip
    tasks += [client_loop(base, f"127.0.2.{i + 1}", (user, f"guess-{i}"), end, wrong)
              for i in range(WRONG)]  # fmt: skip
    started = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)
    reached = refused_logins(env, user) - before
    served = right[200] / max(1, sum(right.values()))
    windows = max(1.0, elapsed / WINDOW)
    print(f"{elapsed:.0f} s, store: {'redis' if REDIS else 'memory'}, limits: {LIMIT} per "
          f"mailbox and {PER_CLIENT} per client per {WINDOW} s")  # fmt: skip
    print(f"right clients: {sum(right.values())} calls, {100 * served:.2f} % served "
          f"(goal ≥ 99 %): {dict(sorted(right.items()))}")  # fmt: skip
    print(f"wrong clients: {sum(wrong.values())} calls: {dict(sorted(wrong.items()))}")
    ok = reached <= LIMIT * windows
    print(f"refused logins that reached Dovecot: {reached} (goal ≤ {LIMIT} per window): "
          f"{'OK' if ok and served >= 0.99 else 'MISSED'}")  # fmt: skip


def main() -> None:
    env = stack()
    user = fresh_address("lockout")
    settings = {"auth_failures_max": str(LIMIT), "auth_failures_per_client": str(PER_CLIENT),
                "auth_failures_window_seconds": str(WINDOW)}  # fmt: skip
    if REDIS:
        settings |= {"redis_url": env["MAILSTACK_REDIS_URL"],
                     "state_key": "bench-state-key-0123456789abcdef0123"}  # fmt: skip
    with gateway(env, **settings) as (base, _pid):
        asyncio.run(run(base, env, user))


if __name__ == "__main__":
    main()
