"""`make bench`: every figure of the performance issue as a ratio against a direct client
measured in the same run, with the gateway's CPU per request, in one table.

The gateway (`mailgate serve`, one worker, the configuration it ships with) is pinned
to one core; this process (load generator and direct clients) to the other; Dovecot
runs where the kernel puts it. The machine is shared, so absolute times are noisy:
each figure is measured in several rounds, direct client and gateway alternating, and
printed as the range over the rounds. Direct clients: one aioimaplib session (commands
in series, as one session must) for IMAP, poplib for POP3.

Usage: bench/run.py [--rounds N] [--seconds S] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import uvloop
from bigfolder import big_message, ensure, ensure_big
from common import basic_auth, cpu_seconds, fresh_address, gateway, pin_self, rate, seed, stack
from direct import DirectImap, cold_newest, pop3_newest, pop3_retr, tls

CLIENTS = 16
LIMIT = 50
SLICES = 4  # direct and gateway take turns this many times within a throughput figure


@dataclass
class Row:
    """One figure: its values over the rounds, the goal, and what was measured."""

    work: str
    figure: str
    goal: str
    met: Callable[[float], bool]
    unit: str = "x"
    values: list[float] = field(default_factory=list)
    detail: str = ""

    def cell(self) -> str:
        if not self.values:
            return "-"
        lo, hi = min(self.values), max(self.values)
        fmt = "{:.2f}" if self.unit == "x" else "{:.1f}"
        text = fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"
        return text + ("x" if self.unit == "x" else f" {self.unit}")

    def verdict(self) -> str:
        if not self.values:
            return ""
        return "yes" if all(self.met(v) for v in self.values) else "NO"


class Table:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def add(
        self,
        work: str,
        figure: str,
        goal: str,
        met: Callable[[float], bool],
        value: float,
        detail: str,
        unit: str = "x",
    ) -> None:
        row = self.rows.setdefault((work, figure), Row(work, figure, goal, met, unit))
        row.values.append(value)
        row.detail = detail
        print(f"  {work} / {figure}: {value:.2f} {unit}  ({detail})", file=sys.stderr)

    def print(self, rounds: int) -> None:
        heads = ("work", "figure", f"range ({rounds} rounds)", "goal", "met", "last round")
        rows = [
            (r.work, r.figure, r.cell(), r.goal, r.verdict(), r.detail) for r in self.rows.values()
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
        line = "| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |"
        print(line)
        print("| " + " | ".join("-" * w for w in widths) + " |")
        for r in rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


async def latencies(count: int, once: Callable[[], Awaitable[object]]) -> list[float]:
    """``count`` calls of ``once`` one after the other; each one's seconds."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        await once()
        out.append(time.perf_counter() - start)
    return out


async def paired(
    count: int, first: Callable[[], Awaitable[object]], second: Callable[[], Awaitable[object]]
) -> tuple[list[float], list[float]]:
    """``count`` calls of each, alternating, so that both meet the same background load
    of the shared machine; each call's seconds."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(count):
        for call, out in ((first, a), (second, b)):
            start = time.perf_counter()
            await call()
            out.append(time.perf_counter() - start)
    return a, b


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


class Gateway:
    """An HTTP client on one running gateway, with its pid for /proc figures."""

    def __init__(self, base: str, pid: int, auth: dict[str, str]) -> None:
        self.pid = pid
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        self.http = aiohttp.ClientSession(base, headers=auth, connector=connector)

    async def get(self, path: str, **params: str) -> bytes:
        async with self.http.get(path, params=params) as r:
            body = await r.read()
            assert r.status == 200, (r.status, body[:300])
            return body

    async def json(self, path: str, **params: str) -> dict[str, object]:
        async with self.http.get(path, params=params) as r:
            assert r.status == 200, (r.status, await r.text())
            return await r.json()  # type: ignore[no-any-return]

    async def rate(
        self, once: Callable[[], Awaitable[object]], seconds: float
    ) -> tuple[float, float]:
        """Requests per second with CLIENTS concurrent callers, and gateway CPU ms each."""
        cpu = cpu_seconds(self.pid)
        count = 0

        async def counted() -> None:
            nonlocal count
            await once()
            count += 1

        per_second = await rate(CLIENTS, seconds, counted)
        return per_second, 1000 * (cpu_seconds(self.pid) - cpu) / max(count, 1)

    async def close(self) -> None:
        await self.http.close()


# --------------------------------------------------------------------------- scenarios


async def small_reads(env: dict[str, str], table: Table, rounds: int, seconds: float) -> None:
    """list 50, a 4 KB message as JSON, the same as raw bytes: 1 client p50 and 16 clients
    throughput against one warm aioimaplib session."""
    user = fresh_address("bench")
    seed(env, user, 60)
    seed(env, user, 1, body=big_message(4096))
    password = env["MAILSTACK_PASSWORD"]
    direct = await DirectImap.open(env, user)
    uid = max(await direct.uids())
    lock = asyncio.Lock()  # one session: commands in series

    async def in_series(call: Callable[[], Awaitable[object]]) -> None:
        async with lock:
            await call()

    with gateway(env, pin=True) as (base, pid):
        gw = Gateway(base, pid, basic_auth(user, password))
        page = await gw.json("/v1/messages", limit=str(LIMIT))
        msg_id = page["items"][0]["id"]  # type: ignore[index]
        jobs: dict[str, tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]] = {
            "list 50": (
                lambda: direct.newest(LIMIT),
                lambda: gw.get("/v1/messages", limit=str(LIMIT)),
            ),
            "4 KB as JSON": (lambda: direct.body(uid), lambda: gw.get(f"/v1/messages/{msg_id}")),
            "4 KB raw": (lambda: direct.body(uid), lambda: gw.get(f"/v1/messages/{msg_id}/raw")),
        }
        goals = {
            "list 50": (1.1, 2.0, 1.0),
            "4 KB as JSON": (1.5, 1.0, 1.5),
            "4 KB raw": (3.0, 0.5, 0.5),
        }
        for _ in range(rounds):
            for work, (by_direct, by_gateway) in jobs.items():
                lat_goal, rate_goal, cpu_goal = goals[work]
                await latencies(20, by_gateway)  # warm
                ds, gs = await paired(150, by_direct, by_gateway)
                d, g = p50(ds), p50(gs)
                table.add(
                    work,
                    "1 client p50",
                    f"<= {lat_goal}x",
                    lambda v, x=lat_goal: v <= x,
                    g / d,
                    f"{g * 1000:.2f} ms vs {d * 1000:.2f} ms",
                )
                # alternating slices of the time, for the same reason as paired()
                d_rates, g_rates, cpus = [], [], []
                for _ in range(SLICES):
                    d_rates.append(
                        await rate(CLIENTS, seconds / SLICES, lambda f=by_direct: in_series(f))
                    )
                    g_one, cpu_one = await gw.rate(by_gateway, seconds / SLICES)
                    g_rates.append(g_one)
                    cpus.append(cpu_one)
                d_rate, g_rate = statistics.mean(d_rates), statistics.mean(g_rates)
                cpu = statistics.mean(cpus)
                table.add(
                    work,
                    f"{CLIENTS} clients throughput",
                    f">= {rate_goal}x",
                    lambda v, x=rate_goal: v >= x,
                    g_rate / d_rate,
                    f"{g_rate:.0f}/s vs {d_rate:.0f}/s",
                )
                table.add(
                    work,
                    "gateway CPU per request",
                    f"<= {cpu_goal} ms",
                    lambda v, x=cpu_goal: v <= x,
                    cpu,
                    f"at {CLIENTS} clients",
                    unit="ms",
                )
        await gw.close()
    await direct.close()


async def download(gw: Gateway, msg_id: str) -> tuple[int, float]:
    """One /raw download: its size and the seconds to the first body byte."""
    start = time.perf_counter()
    first = 0.0
    n = 0
    async with gw.http.get(f"/v1/messages/{msg_id}/raw") as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            if not n:
                first = time.perf_counter() - start
            n += len(chunk)
    return n, first


async def big_raw(env: dict[str, str], table: Table, rounds: int) -> None:
    """25 MiB through /raw against one aioimaplib FETCH; first byte; RSS growth. Then ten
    parallel downloads of a 50 MB message and the RSS growth they cause together."""
    password = env["MAILSTACK_PASSWORD"]
    for size, parallel in ((25 * 1024 * 1024, 1), (50 * 1000 * 1000, 10)):
        user = ensure_big(env, size)
        direct = await DirectImap.open(env, user)
        uid = max(await direct.uids())
        for _ in range(rounds if parallel == 1 else 1):
            with gateway(env, pin=True) as (base, pid):
                gw = Gateway(base, pid, basic_auth(user, password))
                msg_id = str((await gw.json("/v1/messages"))["items"][0]["id"])  # type: ignore[index]
                await gw.get("/v1/messages", limit="1")
                before = vm_hwm_kib(pid)
                start = time.perf_counter()
                got = await asyncio.gather(*(download(gw, msg_id) for _ in range(parallel)))
                took = time.perf_counter() - start
                assert [n for n, _ in got] == [size] * parallel, got
                firsts = [first for _, first in got]
                growth = (vm_hwm_kib(pid) - before) / 1024
                await gw.close()
            if parallel == 1:
                start = time.perf_counter()
                assert await direct.body(uid) >= size
                d = time.perf_counter() - start
                table.add(
                    "25 MiB raw",
                    "time",
                    "<= 1.2x",
                    lambda v: v <= 1.2,
                    took / d,
                    f"{took:.2f} s vs {d:.2f} s",
                )
                table.add(
                    "25 MiB raw",
                    "first byte",
                    "<= 30 ms",
                    lambda v: v <= 30,
                    firsts[0] * 1000,
                    "gateway",
                    unit="ms",
                )
                table.add(
                    "25 MiB raw",
                    "gateway RSS growth",
                    "<= 8 MiB",
                    lambda v: v <= 8,
                    growth,
                    "VmHWM",
                    unit="MiB",
                )
            else:
                goal = "<= 95.4 MiB (100 MB)"
                table.add(
                    "10 x 50 MB raw in parallel",
                    "gateway RSS growth",
                    goal,
                    lambda v: v <= 95.4,
                    growth,
                    f"all in {took:.1f} s",
                    unit="MiB",
                )
        await direct.close()


async def cold_call(env: dict[str, str], table: Table, rounds: int, starts: int = 6) -> None:
    """The first listing of a new gateway process against connect + TLS + LOGIN + SELECT +
    SEARCH + FETCH on a new aioimaplib connection (process start-up not counted)."""
    user = fresh_address("cold")
    seed(env, user, 60)
    password = env["MAILSTACK_PASSWORD"]
    ctx = tls(env)
    for _ in range(rounds):
        gws, ds, ratios = [], [], []
        for _ in range(starts):
            start = time.perf_counter()
            await cold_newest(env, user, ctx, LIMIT)
            ds.append(time.perf_counter() - start)
            with gateway(env, pin=True) as (base, pid):
                await asyncio.sleep(0.3)  # let start-up work finish
                gw = Gateway(base, pid, basic_auth(user, password))
                start = time.perf_counter()
                await gw.get("/v1/messages", limit=str(LIMIT))
                gws.append(time.perf_counter() - start)
                await gw.close()
            ratios.append(gws[-1] / ds[-1])
        g, d = p50(gws), p50(ds)
        table.add(
            "cold first call",
            "time (median of pairs)",
            "<= 1.2x",
            lambda v: v <= 1.2,
            p50(ratios),
            f"{g * 1000:.1f} ms vs {d * 1000:.1f} ms",
        )


async def big_folder(env: dict[str, str], table: Table, rounds: int, pages: int = 40) -> None:
    """The newest page and cursor pages of a 100,000-message folder against the same pages
    of a 100-message folder (the gateway against itself: growth with the folder). The
    summary cache is off, so that every page costs the same work whatever was read
    before (the 100-message folder has one cursor page, read again and again)."""
    small, large = ensure(env, 100), ensure(env, 100_000)
    password = env["MAILSTACK_PASSWORD"]
    with gateway(env, pin=True, summary_cache_entries="0") as (base, pid):
        gws = {u: Gateway(base, pid, basic_auth(u, password)) for u in (small, large)}

        async def walk(gw: Gateway, count: int) -> list[float]:
            """Cursor pages after the newest one: ``count`` of them (fewer if it ends)."""
            out: list[float] = []
            cursor = (await gw.json("/v1/messages", limit=str(LIMIT)))["next_cursor"]
            while cursor and len(out) < count:
                start = time.perf_counter()
                page = await gw.json("/v1/messages", limit=str(LIMIT), cursor=str(cursor))
                out.append(time.perf_counter() - start)
                cursor = page["next_cursor"]
            return out

        for _ in range(rounds):
            newest = {}
            for u, gw in gws.items():
                await latencies(10, lambda gw=gw: gw.get("/v1/messages", limit=str(LIMIT)))
                newest[u] = p50(
                    await latencies(100, lambda gw=gw: gw.get("/v1/messages", limit=str(LIMIT)))
                )
            growth = newest[large] / newest[small]
            table.add(
                "newest page, 100,000 vs 100 messages",
                "growth",
                "<= 2x",
                lambda v: v <= 2,
                growth,
                f"{newest[large] * 1000:.2f} ms vs {newest[small] * 1000:.2f} ms",
            )
            cursor_small = p50([t for _ in range(pages) for t in await walk(gws[small], 1)])
            cursor_large = p50(await walk(gws[large], pages))
            table.add(
                "cursor pages, 100,000 vs 100 messages",
                "growth",
                "<= 2x",
                lambda v: v <= 2,
                cursor_large / cursor_small,
                f"{cursor_large * 1000:.2f} ms vs {cursor_small * 1000:.2f} ms "
                f"({pages} pages deep)",
            )
        for gw in gws.values():
            await gw.close()


async def pop3(env: dict[str, str], table: Table, rounds: int, count: int = 30) -> None:
    """POP3 list 50 and a 4 KB /raw against poplib sending the same commands."""
    user = fresh_address("pop")
    seed(env, user, 60)
    seed(env, user, 1, body=big_message(4096))
    password = env["MAILSTACK_PASSWORD"]
    ctx = tls(env)
    with gateway(env, pin=True) as (base, pid):
        gw = Gateway(base, pid, basic_auth(user, password))
        page = await gw.json("/v1/messages", protocol="pop3", limit=str(LIMIT))
        msg_id = page["items"][0]["id"]  # type: ignore[index]

        async def poplib_call(call: Callable[[], object]) -> None:
            call()

        for _ in range(rounds):
            for work, by_direct, by_gateway in (
                (
                    "POP3 list 50",
                    lambda: pop3_newest(env, user, ctx, LIMIT),
                    lambda: gw.get("/v1/messages", protocol="pop3", limit=str(LIMIT)),
                ),
                (
                    "POP3 4 KB raw",
                    lambda: pop3_retr(env, user, ctx, 61),
                    lambda: gw.get(f"/v1/messages/{msg_id}/raw"),
                ),
            ):
                ds, gs = await paired(count, lambda f=by_direct: poplib_call(f), by_gateway)
                d, g = p50(ds), p50(gs)
                table.add(
                    work,
                    "1 client p50",
                    "<= 1.15x",
                    lambda v: v <= 1.15,
                    g / d,
                    f"{g * 1000:.1f} ms vs {d * 1000:.1f} ms",
                )
        await gw.close()


SCENARIOS = {
    "small": small_reads,
    "big": big_raw,
    "cold": cold_call,
    "folder": big_folder,
    "pop3": pop3,
}


async def main(args: argparse.Namespace) -> None:
    env = stack()
    table = Table()
    for name, scenario in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        print(f"{name}...", file=sys.stderr)
        if name == "small":
            await small_reads(env, table, args.rounds, args.seconds)
        else:
            await scenario(env, table, args.rounds)  # type: ignore[operator]
    print(
        f"\nmailgate vs direct clients, {time.strftime('%Y-%m-%d')}: ratios are gateway / "
        f"direct (times) or gateway / direct (throughput), from {args.rounds} rounds; gateway "
        "pinned to one core, load generator and direct clients on the other, shared machine."
    )
    table.print(args.rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput figure")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    pin_self()
    uvloop.run(main(parser.parse_args()))
