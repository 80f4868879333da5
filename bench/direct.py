"""The direct clients the gateway is measured against: aioimaplib and poplib doing the job
a caller of the gateway wants done, on the same mail stack, in the same run."""

from __future__ import annotations

import poplib
import ssl

import aioimaplib

SUMMARY = (
    "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS "
    "(MESSAGE-ID SUBJECT FROM TO CC DATE CONTENT-TYPE CONTENT-DISPOSITION)])"
)


def tls(env: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=env["MAILSTACK_CA_FILE"])


class DirectImap:
    """One aioimaplib session, logged in with INBOX selected; commands in series."""

    def __init__(self, conn: aioimaplib.IMAP4_SSL) -> None:
        self.conn = conn

    @classmethod
    async def open(
        cls, env: dict[str, str], user: str, ctx: ssl.SSLContext | None = None
    ) -> DirectImap:
        """Connect + TLS + LOGIN + SELECT INBOX."""
        conn = aioimaplib.IMAP4_SSL(
            "localhost", int(env["MAILSTACK_IMAPS_PORT"]), ssl_context=ctx or tls(env)
        )
        await conn.wait_hello_from_server()
        r = await conn.login(user, env["MAILSTACK_PASSWORD"])
        assert r.result == "OK", r
        r = await conn.select("INBOX")
        assert r.result == "OK", r
        return cls(conn)

    async def newest(self, limit: int = 50) -> int:
        """A newest-first page as a plain client gets it: UID SEARCH ALL, then one UID
        FETCH of the highest ``limit`` UIDs with the summary items; how many came."""
        r = await self.conn.uid_search("ALL")
        assert r.result == "OK", r
        uids = r.lines[0].decode().split()[-limit:]
        if not uids:
            return 0
        r = await self.conn.uid("fetch", ",".join(uids), SUMMARY)
        assert r.result == "OK", r
        return len(uids)

    async def uids(self) -> list[int]:
        r = await self.conn.uid_search("ALL")
        assert r.result == "OK", r
        return [int(u) for u in r.lines[0].decode().split()]

    async def body(self, uid: int) -> int:
        """One UID FETCH of the whole message (BODY.PEEK[]); its size in bytes."""
        r = await self.conn.uid("fetch", str(uid), "(BODY.PEEK[])")
        assert r.result == "OK", r
        return len(r.lines[1])

    async def close(self) -> None:
        await self.conn.logout()


async def cold_newest(env: dict[str, str], user: str, ctx: ssl.SSLContext, limit: int) -> None:
    """A first call as a direct client makes it: connect + TLS + LOGIN + SELECT + SEARCH +
    FETCH on a new connection (then LOGOUT, not timed by the caller's clock if it stops
    before)."""
    client = await DirectImap.open(env, user, ctx)
    await client.newest(limit)
    client.conn.protocol.transport.close()


def pop3_newest(env: dict[str, str], user: str, ctx: ssl.SSLContext, limit: int) -> int:
    """What the gateway's POP3 listing does, with poplib: connect + TLS + CAPA + login +
    UIDL + LIST + TOP n 0 of the newest ``limit`` + QUIT."""
    pop = poplib.POP3_SSL("localhost", int(env["MAILSTACK_POP3S_PORT"]), context=ctx)
    try:
        pop.capa()
        pop.user(user)
        pop.pass_(env["MAILSTACK_PASSWORD"])
        _, uidls, _ = pop.uidl()
        pop.list()
        numbers = sorted((int(line.split()[0]) for line in uidls), reverse=True)[:limit]
        for n in numbers:
            pop.top(n, 0)
    finally:
        pop.quit()
    return len(numbers)


def pop3_retr(env: dict[str, str], user: str, ctx: ssl.SSLContext, n: int) -> int:
    """What the gateway's POP3 /raw does, with poplib: connect + TLS + CAPA + login + UIDL +
    LIST + RETR + QUIT; the message size."""
    pop = poplib.POP3_SSL("localhost", int(env["MAILSTACK_POP3S_PORT"]), context=ctx)
    try:
        pop.capa()
        pop.user(user)
        pop.pass_(env["MAILSTACK_PASSWORD"])
        pop.uidl()
        pop.list()
        _, lines, size = pop.retr(n)
    finally:
        pop.quit()
    return size
