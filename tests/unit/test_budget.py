"""The connection budget per mailbox and protocol (service.protocols.pool), without a server:
sessions of every secret of one user, and unpooled slots (POP3, IDLE), share one budget."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.config import Settings
from service.errors import MailboxInUse, Upstream, UpstreamUnavailable
from service.protocols.pool import SessionPool, budget_key, is_connection_limit

A = "imap:default:ann@example.test:aaaa"  # two secrets of one user
B = "imap:default:ann@example.test:bbbb"
OTHER = "imap:default:bob@example.test:cccc"


class Conn:
    made = 0

    def __init__(self) -> None:
        Conn.made += 1
        self.closed = False

    @property
    def usable(self) -> bool:
        return not self.closed

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def conn() -> Conn:
    await asyncio.sleep(0)
    return Conn()


def pool(**kw: Any) -> SessionPool[Conn]:
    values: dict[str, Any] = {"per_key": 2, "max_total": 50, "idle_seconds": 30.0,
                              "wait_timeout": 1.0}  # fmt: skip
    values.update(kw)
    return SessionPool[Conn](Settings(), **values)


def limit_refusal(words: str = "[LIMIT] Maximum number of connections") -> UpstreamUnavailable:
    return UpstreamUnavailable("cannot log in now", upstream=Upstream("imap", words))


def test_budget_key_drops_the_secret_digest_only() -> None:
    assert budget_key(A) == budget_key(B) == "imap:default:ann@example.test"
    assert budget_key("pop3:p:user:with:colons@x:dddd") == "pop3:p:user:with:colons@x"


@pytest.mark.parametrize(
    ("status", "words", "expected"),
    [
        (503, "[LIMIT] Too many", True),
        (503, "[UNAVAILABLE] Maximum number of connections from user+IP exceeded", True),
        (409, "-ERR [IN-USE] Maximum number of connections from user+IP exceeded", True),
        (503, "[UNAVAILABLE] Backend down", False),  # a temporary failure, not the limit
        (409, "-ERR [IN-USE] Mailbox is locked by another POP3 session", False),
    ],
)
def test_connection_limit_refusals_are_told_from_other_refusals(
    status: int, words: str, expected: bool
) -> None:
    cls = UpstreamUnavailable if status == 503 else MailboxInUse
    exc = cls("x", upstream=Upstream("imap", words))
    assert is_connection_limit(exc) is expected


async def test_two_secrets_of_one_user_share_its_budget() -> None:
    p = pool(per_key=2)
    a1, a2 = await p.acquire(A, conn), await p.acquire(A, conn)
    waiting = asyncio.create_task(p.acquire(B, conn))  # the user's budget is full
    await asyncio.sleep(0.01)
    assert not waiting.done() and p.stats().waiting == 1
    other = await p.acquire(OTHER, conn)  # another user is not blocked
    p.release(a1, healthy=True)  # not B's secret: closed, the room goes to B
    b = await waiting
    assert b is not a1 and a1.closed
    assert p.stats().open == 3  # a2, b and the other user's
    for s in (a2, b, other):
        p.release(s, healthy=True)
    await p.close_all()


async def test_an_idle_session_of_another_secret_makes_room() -> None:
    p = pool(per_key=2)
    a1, a2 = await p.acquire(A, conn), await p.acquire(A, conn)
    p.release(a1, healthy=True)  # idle, but of secret A
    b = await asyncio.wait_for(p.acquire(B, conn), 0.5)
    await asyncio.sleep(0)
    assert a1.closed and not b.closed and p.stats().open == 2
    p.release(a2, healthy=True)
    p.release(b, healthy=True)
    await p.close_all()


async def test_unpooled_slots_count_and_pass_their_room_on() -> None:
    p = pool(per_key=2)
    s1 = await p.acquire_slot(A, conn)
    s2 = await p.acquire_slot(B, conn)
    assert p.stats().open == 2 and p.stats().unpooled == 2
    blocked = asyncio.create_task(p.acquire(A, conn))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    p.release_slot(s1)
    session = await blocked
    p.release_slot(s1)  # idempotent
    assert p.stats().open == 2 and p.stats().unpooled == 1
    p.release(session, healthy=True)  # idle: it is closed when a slot needs the room
    async with p.slot(B, conn) as third:
        assert not third.closed and session.closed
        assert p.stats().open == 2
    p.release_slot(s2)
    assert p.stats().open == 0
    await p.close_all()


async def test_slot_wait_is_bounded_with_retry_after() -> None:
    p = pool(per_key=1, wait_timeout=0.1)
    held = await p.acquire_slot(A, conn)
    with pytest.raises(UpstreamUnavailable) as info:
        await p.acquire_slot(B, conn)
    assert info.value.retry_after is not None and p.stats().waiting == 0
    p.release_slot(held)
    await p.close_all()


async def test_server_limit_with_sessions_of_ours_queues_for_them() -> None:
    p = pool(per_key=4)
    mine = await p.acquire(A, conn)
    refusals = 0

    async def refused() -> Conn:
        nonlocal refusals
        refusals += 1
        raise limit_refusal()

    task = asyncio.create_task(p.acquire(A, refused))
    await asyncio.sleep(0.05)
    assert refusals == 1 and not task.done()  # lowered to what we hold, and queued
    p.release(mine, healthy=True)
    assert (await task) is mine
    p.release(mine, healthy=True)
    await p.close_all()


async def test_server_limit_with_none_of_ours_retries_until_room_then_503() -> None:
    p = pool(per_key=4, wait_timeout=2.0)
    tries = 0

    async def full_twice() -> Conn:  # e.g. the user's own client logs out meanwhile
        nonlocal tries
        tries += 1
        if tries <= 2:
            raise limit_refusal("[UNAVAILABLE] Maximum number of connections")
        return Conn()

    got = await p.acquire(A, full_twice)
    assert tries == 3 and not got.closed
    p.release(got, healthy=False)

    async def always_full() -> Conn:
        raise limit_refusal()

    short = pool(per_key=4, wait_timeout=0.3)
    with pytest.raises(UpstreamUnavailable) as info:
        await short.acquire_slot(A, always_full)
    assert info.value.retry_after is not None
    assert short.stats().open == 0
    await p.close_all()
    await short.close_all()


async def test_long_lived_slots_take_at_most_half_of_the_budget() -> None:
    """Event streams (IDLE) never leave the mailbox's reads without room."""
    from service.errors import RateLimited

    p = pool(per_key=4)
    streams = [await p.acquire_slot(A, conn, long_lived=True) for _ in range(2)]
    with pytest.raises(RateLimited) as info:
        await p.acquire_slot(B, conn, long_lived=True)  # any secret of the user
    assert info.value.retry_after is not None
    reads = [await p.acquire(A, conn) for _ in range(2)]  # the other half is the reads'
    assert p.stats().open == 4
    other = await p.acquire_slot(OTHER, conn, long_lived=True)  # another user is not capped
    p.release_slot(streams.pop())
    for s in reads:
        p.release(s, healthy=True)
    again = await p.acquire_slot(B, conn, long_lived=True)  # room again after a release
    for held in (*streams, other, again):
        p.release_slot(held)
    await p.close_all()
