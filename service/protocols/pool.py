"""The connection budget per mailbox and protocol, and short-lived reuse of sessions.

Semantics (one :class:`SessionPool` per protocol per app):

- **Budget.** Every connection the gateway holds to a mailbox counts against the
  budget of its *budget key*: protocol + provider + user (see
  :func:`budget_key`), whatever the secret. That covers pooled sessions (idle,
  leased or being opened) and *unpooled slots* (:meth:`SessionPool.acquire_slot`:
  POP3 sessions, IMAP IDLE sessions), so the count stays under the server's
  limit (Dovecot: 10 per user, IP and protocol) with room for the user's own
  mail apps. At most ``per_key`` per budget key and ``max_total`` overall.
- **Waiting.** A request beyond the budget waits in a FIFO queue of its budget
  key and gets the next session released under its own session key (a handoff,
  still warm) or the room that the next release frees. A request beyond the
  global cap waits in a global FIFO queue; an idle session of another mailbox
  (or of another secret of the same mailbox) is closed to make room before
  anyone waits. Waiting is bounded by ``wait_timeout`` (the command timeout),
  then UpstreamUnavailable (503, ``Retry-After``): the gateway, not the mail
  server, is the bottleneck, and retrying later helps.
- **The server's own limit.** When the server refuses a login for its
  per-user connection limit (IMAP ``[LIMIT]`` / ``[UNAVAILABLE] Maximum number
  of connections``, POP3 ``[IN-USE]``/``[SYS/TEMP]`` with the same words: the
  user's other clients hold the rest), the budget of that key is lowered to
  what we hold for ``lowered_for`` seconds and the request queues for one of
  our own sessions; when we hold none, it retries with a short back-off until
  its wait is over, then answers 503 with ``Retry-After``.
- **Probation.** A secret that has not logged in here yet (a stranger's guess, or
  the owner's first call) logs in with at most ``probe_cap`` others of the mailbox
  at a time; the rest wait outside the budget until one ends or the secret is seen to
  work. A server holds a wrong password for seconds (Dovecot's
  ``auth_failure_delay``): guesses must not fill the budget that the owner's known
  secret needs. The most recent ``proven_max`` secrets that worked are remembered
  (by session key: a digest, never the secret); one refused is forgotten.
- A session is leased to one request at a time, never shared. Idle sessions
  are kept LIFO (the warmest first) and closed after ``idle_seconds``: lazily
  when met on acquire and by a background reaper that runs only while idle
  sessions exist. ``idle_seconds == 0`` disables reuse.
- A session idle for more than ``check_after`` seconds is pinged (NOOP) before
  reuse; a warm one is handed out without any round trip.
- A session released as unhealthy, or that reports ``usable == False`` (its
  connection broke, a command timed out), is dropped, never reused.
- :meth:`SessionPool.close_all` (app shutdown) fails the waiters, closes idle
  sessions and aborts sessions still leased (their requests fail instead of
  the links leaking).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, cast

from service.config import Settings
from service.errors import (
    AuthFailed,
    MailGatewayError,
    NotSupported,
    RateLimited,
    UpstreamUnavailable,
)
from service.protocols.refusals import says_connection_limit

__all__ = [
    "PoolStats",
    "PooledSession",
    "SessionPool",
    "Slot",
    "budget_key",
    "is_connection_limit",
]


class PooledSession(Protocol):
    """What the pool needs from a session."""

    @property
    def usable(self) -> bool:
        """False once the session must not be reused."""
        ...

    async def ping(self) -> bool:
        """A cheap round trip; False when the session is dead."""
        ...

    async def close(self) -> None:
        """End politely; never raises."""
        ...

    def abort(self) -> None:
        """Drop the connection at once."""
        ...


S = TypeVar("S", bound=PooledSession)
T = TypeVar("T")


def budget_key(session_key: str) -> str:
    """The budget key of a session key: ``protocol:provider:user:secret-digest`` →
    ``protocol:provider:user`` (the secret digest never contains a colon)."""
    head, sep, _ = session_key.rpartition(":")
    return head if sep else session_key


def is_connection_limit(exc: BaseException) -> bool:
    """A login refused because the user holds too many connections (the server's
    per-user limit): IMAP ``[LIMIT]``, or any temporary refusal whose words say so
    (Dovecot 2.4 ``[UNAVAILABLE] Maximum number of connections``, POP3 ``[IN-USE]``,
    Cyrus ``Too many open connections`` without a code)."""
    if not isinstance(exc, MailGatewayError) or exc.status not in (409, 503):
        return False
    reply = exc.upstream.reply if exc.upstream is not None else ""
    return "[LIMIT]" in reply.upper() or says_connection_limit(reply)


class _RetryInQueue(Exception):
    """The server refused a new session for its connection limit; wait for ours."""


class _RetryLater(Exception):
    """The server refused for its connection limit and we hold none: back off."""


@dataclass
class _Idle(Generic[S]):
    session: S
    since: float


@dataclass(frozen=True)
class PoolStats:
    open: int  # counted against budgets: idle + leased + being opened + unpooled slots
    idle: int
    leased: int
    waiting: int
    unpooled: int = 0


@dataclass(eq=False)
class Slot(Generic[T]):
    """A counted connection that the pool does not keep (a POP3 or IDLE session):
    give it back with :meth:`SessionPool.release_slot` once the connection is closed."""

    key: str
    value: T
    long_lived: bool = False
    released: bool = field(default=False)


class _Granted:
    """A waiter's grant: room to open one new connection (already counted)."""


_GRANTED = _Granted()


@dataclass(eq=False)
class _Waiter:
    key: str  # the session key
    wants_session: bool  # False: an unpooled slot (a released session is closed for it)
    fut: asyncio.Future[object]


class SessionPool(Generic[S]):
    """Sessions and slots by key under per-mailbox budgets; see the module docstring."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        per_key: int | None = None,
        max_total: int | None = None,
        idle_seconds: float | None = None,
        wait_timeout: float | None = None,
        check_after: float = 5.0,
    ) -> None:
        """Limits from ``settings`` (pool_size_per_user split over the workers,
        pool_max_sessions, pool_idle_seconds, command_timeout); keyword arguments
        override them. ``per_key`` is the budget per mailbox and protocol."""
        if settings is None:
            settings = Settings()
        self.per_key = per_key if per_key is not None else settings.pool_size_per_process
        self.max_total = max_total if max_total is not None else settings.pool_max_sessions
        self.idle_seconds = idle_seconds if idle_seconds is not None else settings.pool_idle_seconds
        self.wait_timeout = wait_timeout if wait_timeout is not None else settings.command_timeout
        self.check_after = check_after
        self.lowered_for = 60.0
        self._idle: dict[str, list[_Idle[S]]] = {}  # by session key
        self._open: dict[str, int] = {}  # by budget key
        self._total = 0
        self._unpooled = 0
        self._leased: dict[int, tuple[str, S]] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}  # by budget key
        self._global_waiters: deque[_Waiter] = deque()
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._lowered: dict[str, tuple[int, float]] = {}
        self._long_lived: dict[str, int] = {}  # by budget key
        self.proven_max = 10_000
        self._proven: OrderedDict[str, None] = OrderedDict()  # session keys that logged in
        self._probing: dict[str, int] = {}  # logins on probation, by budget key
        self._probe_ended: dict[str, asyncio.Event] = {}  # by budget key

    # -- public API -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(self, key: str, factory: Callable[[], Awaitable[S]]) -> AsyncIterator[S]:
        """``async with pool.lease(key, factory) as session:``; released when the block ends
        (healthy unless the session says otherwise)."""
        session = await self.acquire(key, factory)
        try:
            yield session
        finally:
            self.release(session, healthy=True)

    async def acquire(self, key: str, factory: Callable[[], Awaitable[S]]) -> S:
        """A session for ``key``: an idle one, a new one, or the next released one.

        Raises what ``factory`` raises, or UpstreamUnavailable when the wait for
        room in the mailbox's budget exceeds ``wait_timeout`` or the pool is closed.
        """
        self._check_open()
        deadline = asyncio.get_running_loop().time() + self.wait_timeout
        async with self._probation(key, deadline):
            return await self._acquire(key, factory, deadline)

    async def _acquire(self, key: str, factory: Callable[[], Awaitable[S]], deadline: float) -> S:
        while True:
            found = self._take_idle(key)
            if found is not None:
                session, idle_for = found
                self._leased[id(session)] = (key, session)
                if idle_for > self.check_after and not await self._ping(session):
                    self.release(session, healthy=False)
                    continue
                return session
            if not self._reserve(key):
                granted = await self._wait(key, deadline, wants_session=True)
                if not isinstance(granted, _Granted):
                    return granted  # handed over by release(), already leased to us
            try:
                session = await self._open_counted(key, factory, deadline)
            except _RetryInQueue:
                continue
            if self._closed:
                self._free(budget_key(key))
                await session.close()
                self._check_open()
            self._leased[id(session)] = (key, session)
            return session

    def release(self, session: S, *, healthy: bool) -> None:
        """Give a leased session back; closed instead of kept when not healthy."""
        entry = self._leased.get(id(session))
        if entry is None or entry[1] is not session:
            return  # not leased (e.g. released twice): nothing to do
        del self._leased[id(session)]
        key = entry[0]
        bkey = budget_key(key)
        if not healthy or not session.usable or self._closed:
            session.abort()
            self._free(bkey)
            return
        waiter = self._next_waiter(bkey)
        if waiter is not None:
            if waiter.wants_session and waiter.key == key:
                self._leased[id(session)] = (key, session)
                waiter.fut.set_result(session)
            else:  # another secret, or an unpooled slot: the room passes on
                self._spawn_close(session)
                waiter.fut.set_result(_GRANTED)
            return
        if self._global_waiters or self.idle_seconds <= 0:
            # someone else waits for room under the global cap (or reuse is off)
            self._spawn_close(session)
            self._free(bkey)
            return
        self._idle.setdefault(key, []).append(_Idle(session, time.monotonic()))
        self._ensure_reaper()

    async def acquire_slot(
        self, key: str, factory: Callable[[], Awaitable[T]], *, long_lived: bool = False
    ) -> Slot[T]:
        """Open a connection that the pool counts but does not keep (a POP3 session, an
        IMAP IDLE session): waits for room in the budget of ``key`` as :meth:`acquire`
        does (idle sessions of the mailbox are closed to make room), then calls
        ``factory``. The caller closes the connection itself and then calls
        :meth:`release_slot`. Raises what ``factory`` raises, or UpstreamUnavailable.

        ``long_lived`` (a session held for minutes: an event stream's IDLE) may take at
        most half of the budget, so that the mailbox's reads always have room; past
        that, RateLimited (429) at once; with a budget of one, none: NotSupported."""
        self._check_open()
        bkey = budget_key(key)
        if long_lived and self.long_lived_cap == 0:
            raise NotSupported(
                "Event streams hold a mail session, and this gateway has a connection budget "
                "of one per mailbox and worker (MAILGATE_POOL_SIZE_PER_USER divided by "
                "MAILGATE_WORKERS), which the mailbox's reads need: poll /v1/changes instead."
            )
        if long_lived and self._long_lived.get(bkey, 0) >= self.long_lived_cap:
            raise RateLimited(
                f"This mailbox has {self.long_lived_cap} long-lived sessions (event streams) "
                "on this gateway already; close one or try again later.",
                retry_after=30,
            )
        deadline = asyncio.get_running_loop().time() + self.wait_timeout
        if long_lived:  # counted while it waits too, so that a burst cannot pass the cap
            self._long_lived[bkey] = self._long_lived.get(bkey, 0) + 1
        try:
            async with self._probation(key, deadline):
                while True:
                    if not self._reserve(key):
                        await self._wait(key, deadline, wants_session=False)
                    try:
                        value = await self._open_counted(key, factory, deadline)
                    except _RetryInQueue:
                        continue
                    self._unpooled += 1
                    return Slot(key, value, long_lived=long_lived)
        except BaseException:
            if long_lived:
                self._uncount_long_lived(bkey)
            raise

    @property
    def probe_cap(self) -> int:
        """Logins on probation per mailbox and protocol: a quarter of the budget, at
        least one."""
        return max(1, self.per_key // 4)

    @property
    def long_lived_cap(self) -> int:
        """Long-lived slots per mailbox and protocol: half of the budget (none of a
        budget of one: it is the reads')."""
        return self.per_key // 2

    def _uncount_long_lived(self, bkey: str) -> None:
        left = self._long_lived.get(bkey, 1) - 1
        if left > 0:
            self._long_lived[bkey] = left
        else:
            self._long_lived.pop(bkey, None)

    def release_slot(self, slot: Slot[T]) -> None:
        """The connection of ``slot`` is closed: its room goes to the next waiter.
        Idempotent."""
        if slot.released:
            return
        slot.released = True
        self._unpooled -= 1
        bkey = budget_key(slot.key)
        if slot.long_lived:
            self._uncount_long_lived(bkey)
        waiter = self._next_waiter(bkey)
        if waiter is not None:
            waiter.fut.set_result(_GRANTED)  # the room passes on, still counted
            return
        self._free(bkey)

    @contextlib.asynccontextmanager
    async def slot(self, key: str, factory: Callable[[], Awaitable[T]]) -> AsyncIterator[T]:
        """``async with pool.slot(key, connect) as conn:`` — :meth:`acquire_slot` and
        :meth:`release_slot` around a block (which must close ``conn`` itself)."""
        held = await self.acquire_slot(key, factory)
        try:
            yield held.value
        finally:
            self.release_slot(held)

    async def close_all(self) -> None:
        """Shut down: fail waiters, close idle sessions, abort leased ones."""
        self._closed = True
        error = UpstreamUnavailable("The gateway is shutting down.")
        for queue in self._waiters.values():
            for w in queue:
                if not w.fut.done():
                    w.fut.set_exception(error)
        for w in self._global_waiters:
            if not w.fut.done():
                w.fut.set_exception(error)
        self._waiters.clear()
        self._global_waiters.clear()
        for ended in self._probe_ended.values():
            ended.set()  # logins waiting on probation: they find the pool closed
        self._probe_ended.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for key, stack in list(self._idle.items()):
            for entry in stack:
                self._spawn_close(entry.session)
                self._uncount(budget_key(key))
        self._idle.clear()
        for _, session in list(self._leased.values()):
            session.abort()  # in use right now: its request fails, the link does not leak
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def stats(self) -> PoolStats:
        idle = sum(len(s) for s in self._idle.values())
        waiting = sum(len(q) for q in self._waiters.values()) + len(self._global_waiters)
        return PoolStats(self._total, idle, len(self._leased), waiting, self._unpooled)

    # -- internals --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise UpstreamUnavailable("The gateway is shutting down.")

    @contextlib.asynccontextmanager
    async def _probation(self, key: str, deadline: float) -> AsyncIterator[None]:
        """Around an acquisition: a secret not proven yet waits until fewer than
        ``probe_cap`` logins of its mailbox are on probation (or it is proven meanwhile);
        UpstreamUnavailable when that takes past ``deadline``."""
        bkey = budget_key(key)
        counted = False
        while key not in self._proven:
            if self._probing.get(bkey, 0) < self.probe_cap:
                self._probing[bkey] = self._probing.get(bkey, 0) + 1
                counted = True
                break
            # A probe is in flight: its end (or a proof) sets this event and drops it.
            ended = self._probe_ended.setdefault(bkey, asyncio.Event())
            try:
                async with asyncio.timeout_at(deadline):
                    await ended.wait()
            except TimeoutError:
                raise UpstreamUnavailable(
                    "Too many concurrent logins for this mailbox; try again shortly.",
                    retry_after=1,
                ) from None
            self._check_open()
        try:
            yield
        finally:
            if counted:
                left = self._probing[bkey] - 1
                if left:
                    self._probing[bkey] = left
                else:
                    del self._probing[bkey]
                self._end_probe(bkey)

    def _end_probe(self, bkey: str) -> None:
        ended = self._probe_ended.pop(bkey, None)
        if ended is not None:
            ended.set()

    def _prove(self, key: str) -> None:
        """``key``'s secret logged in: its later acquisitions skip probation."""
        self._proven[key] = None
        self._proven.move_to_end(key)
        while len(self._proven) > self.proven_max:
            self._proven.popitem(last=False)
        self._end_probe(budget_key(key))

    def _take_idle(self, key: str) -> tuple[S, float] | None:
        """Pop the warmest idle session of ``key``; expired or dead ones are closed."""
        stack = self._idle.get(key)
        now = time.monotonic()
        while stack:
            entry = stack.pop()
            idle_for = now - entry.since
            if idle_for > self.idle_seconds or not entry.session.usable:
                self._spawn_close(entry.session)
                self._free(budget_key(key))
                continue
            return entry.session, idle_for
        if stack is not None and not stack:
            self._idle.pop(key, None)
        return None

    def _reserve(self, key: str) -> bool:
        """Count a new connection for ``key`` if the budget, the global cap and fairness
        allow; an idle session of another secret of the same mailbox makes room."""
        bkey = budget_key(key)
        if self._waiters.get(bkey):
            return False
        if self._open.get(bkey, 0) >= self._limit(bkey) and not self._evict_idle(bkey):
            return False
        if self._global_waiters:
            return False
        if self._total >= self.max_total and not self._evict_idle(None):
            return False
        self._open[bkey] = self._open.get(bkey, 0) + 1
        self._total += 1
        return True

    def _evict_idle(self, bkey: str | None) -> bool:
        """Close the longest-idle session (of budget key ``bkey``, or of any) to make room."""
        oldest: tuple[float, str] | None = None
        for key, stack in self._idle.items():
            if not stack or (bkey is not None and budget_key(key) != bkey):
                continue
            if oldest is None or stack[0].since < oldest[0]:
                oldest = (stack[0].since, key)
        if oldest is None:
            return False
        key = oldest[1]
        entry = self._idle[key].pop(0)
        if not self._idle[key]:
            del self._idle[key]
        self._spawn_close(entry.session)
        self._uncount(budget_key(key))
        return True

    async def _wait(self, key: str, deadline: float, *, wants_session: bool) -> S | _Granted:
        loop = asyncio.get_running_loop()
        bkey = budget_key(key)
        waiter = _Waiter(key, wants_session, loop.create_future())
        if self._open.get(bkey, 0) >= self._limit(bkey) or self._waiters.get(bkey):
            self._waiters.setdefault(bkey, deque()).append(waiter)
        else:
            self._global_waiters.append(waiter)
        try:
            done, _ = await asyncio.wait({waiter.fut}, timeout=max(0.0, deadline - loop.time()))
        except BaseException:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            raise UpstreamUnavailable(
                "Too many concurrent requests for this mailbox; try again shortly.",
                retry_after=1,
            )
        return cast("S | _Granted", waiter.fut.result())

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gives up: leave the queue, or pass on what it was just granted."""
        fut = waiter.fut
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            granted = fut.result()
            if isinstance(granted, _Granted):
                self._free(budget_key(waiter.key))
            else:
                self.release(cast(S, granted), healthy=True)
            return
        fut.cancel()
        queue = self._waiters.get(budget_key(waiter.key))
        if queue is not None and waiter in queue:
            queue.remove(waiter)
        if waiter in self._global_waiters:
            self._global_waiters.remove(waiter)

    def _next_waiter(self, bkey: str) -> _Waiter | None:
        queue = self._waiters.get(bkey)
        while queue:
            w = queue.popleft()
            if not w.fut.done():
                return w
        for w in self._global_waiters:
            if budget_key(w.key) == bkey and not w.fut.done():
                self._global_waiters.remove(w)
                return w
        return None

    def _uncount(self, bkey: str) -> None:
        self._open[bkey] -= 1
        self._total -= 1
        if not self._open[bkey]:
            del self._open[bkey]
            if not self._waiters.get(bkey):
                self._waiters.pop(bkey, None)

    def _free(self, bkey: str) -> None:
        """One connection of ``bkey`` is gone: uncount it and grant the room to a waiter."""
        self._uncount(bkey)
        queue = self._waiters.get(bkey)
        while queue and self._open.get(bkey, 0) < self._limit(bkey):
            w = queue.popleft()
            if not w.fut.done():
                self._grant(bkey, w)
                break
        while self._global_waiters and self._total < self.max_total:
            w = self._global_waiters.popleft()
            if w.fut.done():
                continue
            wkey = budget_key(w.key)
            if self._open.get(wkey, 0) >= self._limit(wkey):
                self._waiters.setdefault(wkey, deque()).append(w)
                continue
            self._grant(wkey, w)

    def _grant(self, bkey: str, waiter: _Waiter) -> None:
        self._open[bkey] = self._open.get(bkey, 0) + 1
        self._total += 1
        waiter.fut.set_result(_GRANTED)

    def _limit(self, bkey: str) -> int:
        """The budget, lowered for a while after the server refused one more login."""
        lowered = self._lowered.get(bkey)
        if lowered is None:
            return self.per_key
        if lowered[1] < time.monotonic():
            del self._lowered[bkey]
            return self.per_key
        return lowered[0]

    async def _open_counted(
        self, key: str, factory: Callable[[], Awaitable[T]], deadline: float
    ) -> T:
        """Run ``factory`` in a counted place; on the server's connection-limit refusal,
        lower the budget and queue (we hold others) or back off (we hold none)."""
        bkey = budget_key(key)
        backoff = 0.05
        loop = asyncio.get_running_loop()
        while True:
            try:
                session = await factory()
            except BaseException as exc:
                others = self._open.get(bkey, 1) - 1
                if isinstance(exc, AuthFailed):
                    self._proven.pop(key, None)
                if not is_connection_limit(exc):
                    self._free(bkey)
                    raise
                if others > 0:
                    # The server's per-user limit is shared with the user's other
                    # clients: queue for one of our own sessions instead of failing.
                    self._lowered[bkey] = (others, time.monotonic() + self.lowered_for)
                    self._free(bkey)
                    raise _RetryInQueue from exc
                # We hold none: the user's other clients (or connections the server
                # has not counted out yet) hold them all. Keep our place and retry.
                left = deadline - loop.time()
                if left <= 0 or self._closed:
                    self._free(bkey)
                    raise
                await asyncio.sleep(min(backoff, left))
                backoff = min(backoff * 2, 1.0)
            else:
                self._prove(key)
                return session

    async def _ping(self, session: S) -> bool:
        try:
            return await session.ping()
        except Exception:
            return False

    def _spawn_close(self, session: S) -> None:
        try:
            task = asyncio.get_running_loop().create_task(session.close())
        except RuntimeError:  # no running loop (interpreter shutdown)
            session.abort()
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        interval = min(max(self.idle_seconds / 2, 0.05), 30.0)
        while any(self._idle.values()):
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, stack in list(self._idle.items()):
                expired = [
                    e for e in stack if now - e.since > self.idle_seconds or not e.session.usable
                ]
                if not expired:
                    continue
                gone = {id(e) for e in expired}
                stack[:] = [e for e in stack if id(e) not in gone]
                if not stack:
                    self._idle.pop(key, None)
                for entry in expired:
                    self._spawn_close(entry.session)
                    self._free(budget_key(key))
