"""GET /v1/changes: does its cost follow the changes, not the folder? And vs re-listing.

Two mailboxes, 100 and 100,000 messages (bench/bigfolder.py: written straight into the
private test stack's Maildirs, then indexed by Dovecot once; both are kept and reused
by later runs). Each round takes a state, makes 10 changes with a plain IMAP client (6 flag
changes, 2 arrivals, 2 expunges), then times `/changes` since that state. Prints the
median latency per folder, the 100k/100 ratio (goal: at most 2x) and the time of
listing the whole folder page by page, which is what a client without /changes does.
For comparison, a direct imaplib session on the same folder times
``UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE m VANISHED)`` (RFC 7162 §3.2.6) since the same
MODSEQ: what /changes costs the server when its session has not been told of the changes
(Dovecot looks at every message's MODSEQ), against what the session's change journal
(service/protocols/imap/journal.py) costs; the counts of each are printed.

Usage: bench/changes_cost.py [rounds]   (as root: it writes into the stack's Maildirs)
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from bigfolder import ensure, imap
from common import stack
from prometheus_client import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Settings  # noqa: E402
from service.main import create_app  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
SIZES = (100, 100_000)


def message(i: int) -> bytes:
    return (
        f"From: Bench <bench@example.test>\r\nTo: box@example.test\r\n"
        f"Subject: bench {i}\r\nMessage-ID: <bench-{i}@example.test>\r\n"
        f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nhello {i}\r\n"
    ).encode()


class Direct:
    """A plain QRESYNC session timing the CHANGEDSINCE FETCH that /changes sends."""

    def __init__(self, env: dict[str, str], user: str) -> None:
        self.conn = imap(env, user)
        typ, _ = self.conn.enable("QRESYNC")
        assert typ == "OK"
        self.conn.select("INBOX")

    def modseq(self) -> int:
        typ, data = self.conn.status("INBOX", "(HIGHESTMODSEQ)")
        assert typ == "OK"
        return int(data[0].split(b"HIGHESTMODSEQ ")[1].rstrip(b")"))

    def changed_since(self, modseq: int) -> float:
        self.conn.noop()  # the session sees the other client's changes first, as ours does
        t0 = time.perf_counter()
        typ, _ = self.conn.uid("FETCH", "1:*", f"(UID FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
        elapsed = time.perf_counter() - t0
        assert typ == "OK"
        return elapsed


class Changer:
    """Another client making the 10 changes of a round."""

    def __init__(self, env: dict[str, str], user: str) -> None:
        self.conn = imap(env, user)
        self.conn.select("INBOX")
        self.env = env
        self.appended: list[int] = []
        self.round = 0

    def uids(self) -> list[int]:
        typ, data = self.conn.uid("SEARCH", None, "ALL")
        return [int(u) for u in data[0].split()]

    def prepare(self) -> None:
        for _ in range(2):
            self.append()

    def append(self) -> None:
        typ, data = self.conn.append("INBOX", None, None, message(10**7 + self.round))
        assert typ == "OK"
        self.appended.append(int(data[0].split(b"APPENDUID ")[1].split(b" ")[1].rstrip(b"]")))

    def ten_changes(self) -> None:
        self.round += 1
        uids = self.uids()
        old = random.Random(self.round).sample(uids[:-4], 6)
        for uid in old:  # 6 flag changes: \Seen flipped
            typ, data = self.conn.uid("FETCH", str(uid), "(FLAGS)")
            op = "-FLAGS" if b"\\Seen" in data[0] else "+FLAGS"
            assert self.conn.uid("STORE", str(uid), op, "(\\Seen)")[0] == "OK"
        gone, self.appended = self.appended[:2], self.appended[2:]
        for uid in gone:  # 2 expunges
            self.conn.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
            self.conn.uid("EXPUNGE", str(uid))
        self.append()  # 2 arrivals
        self.append()


async def measure(env: dict[str, str], client: httpx.AsyncClient, user: str) -> dict[str, Any]:
    auth = (user, env["MAILSTACK_PASSWORD"])
    changer = Changer(env, user)
    changer.prepare()
    direct = Direct(env, user)
    times: list[float] = []
    repeats: list[float] = []
    directs: list[float] = []
    entries = 0
    for _ in range(ROUNDS):
        r = await client.get("/v1/messages", params={"limit": 1}, auth=auth)
        state = r.json()["state"]
        modseq = direct.modseq()
        changer.ten_changes()
        t0 = time.perf_counter()
        r = await client.get("/v1/changes", params={"since": state}, auth=auth)
        times.append(time.perf_counter() - t0)
        body = r.json()
        assert r.status_code == 200, r.text
        entries = len(body["created"]) + len(body["updated"]) + len(body["destroyed"])
        for _ in range(3):  # the same question again: Dovecot has synced its Maildir by now
            t0 = time.perf_counter()
            r = await client.get("/v1/changes", params={"since": state}, auth=auth)
            repeats.append(time.perf_counter() - t0)
            assert r.json() == body
            directs.append(direct.changed_since(modseq))
    changer.conn.logout()
    direct.conn.logout()
    t0 = time.perf_counter()
    cursor, pages, listed = None, 0, 0
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/messages", params=params, auth=auth)
        body = r.json()
        pages, listed = pages + 1, listed + len(body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            break
    relist = time.perf_counter() - t0
    return {"median": statistics.median(times), "repeat": statistics.median(repeats),
            "direct": statistics.median(directs),
            "entries": entries, "relist": relist, "pages": pages, "listed": listed}  # fmt: skip


async def main() -> None:
    env = stack()
    # changed by every round (2 arrivals, 2 expunges), so kept while about that size
    users = {size: ensure(env, size, name="bench-sync", changed=10) for size in SIZES}
    settings = Settings(
        imap_url=f"imaps://localhost:{env['MAILSTACK_IMAPS_PORT']}",
        pop3_url=f"pop3s://localhost:{env['MAILSTACK_POP3S_PORT']}",
        smtp_url=f"smtp://localhost:{env['MAILSTACK_SUBMISSION_PORT']}",
        ca_file=env["MAILSTACK_CA_FILE"],
        summary_cache_entries=0,  # re-listing as a first listing does
        log_level="warning",
    )
    app = create_app(settings)
    results = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=300) as c:
            for size, user in users.items():
                results[size] = await measure(env, c, user)
    print(f"/changes with 10 changes, median of {ROUNDS} rounds (in-process gateway):")
    for size, res in results.items():
        print(
            f"  {size:>7,} messages: first ask {res['median'] * 1000:6.1f} ms, again "
            f"{res['repeat'] * 1000:5.1f} ms ({res['entries']} entries); re-listing the whole "
            f"folder: {res['relist']:.2f} s ({res['pages']} pages, {res['listed']:,} summaries)"
        )
        direct_ms = res["direct"] * 1000
        print(f"  {'':>7}           direct CHANGEDSINCE FETCH (imaplib): {direct_ms:5.1f} ms")
    small, big = results[SIZES[0]], results[SIZES[1]]
    for what in ("median", "repeat"):
        ratio = big[what] / small[what]
        label = "first ask" if what == "median" else "again"
        print(f"  ratio 100k/100 ({label}): {ratio:.2f}x (goal <= 2x)")
    print(
        f"  growth from 100 to 100k messages: the direct CHANGEDSINCE FETCH "
        f"{(big['direct'] - small['direct']) * 1000:.1f} ms, "
        f"/changes asked again {(big['repeat'] - small['repeat']) * 1000:.1f} ms"
    )
    print(f"  re-listing 100k / /changes on 100k: {big['relist'] / big['median']:,.0f}x")
    sources = {s: REGISTRY.get_sample_value("mailgate_imap_changes_total", {"source": s}) or 0
               for s in ("journal", "server")}  # fmt: skip
    print(f"  answered from a session's change journal: {sources['journal']:.0f}, by the server's "
          f"CHANGEDSINCE: {sources['server']:.0f} (each folder's first round: its session "
          "selected the folder after that state)")  # fmt: skip
    print("  (the first ask after the changes includes Dovecot's Maildir resync of the folder,")
    print("   which any client pays once; 'again' is /changes' own cost)")


if __name__ == "__main__":
    asyncio.run(main())
