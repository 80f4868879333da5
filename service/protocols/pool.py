"""Short-lived reuse of authenticated mail sessions, keyed by provider + user + secret hash.

Semantics (one :class:`SessionPool` per protocol per app):

- At most ``per_key`` sessions per key exist at once (idle + leased + being
  opened) and at most ``max_total`` overall. A request beyond the per-key cap
  waits in a FIFO queue and gets the next session released for its key (a
  handoff, still warm). A request beyond the global cap waits in a global FIFO
  queue and gets the next free slot; an idle session of another key is closed
  to make room before anyone waits. Waiting is bounded by ``wait_timeout``
  (the command timeout), then UpstreamUnavailable (503, Retry-After): the
  gateway, not the mail server, is the bottleneck, and retrying later helps.
- A session is leased to one request at a time, never shared.
- Idle sessions are kept LIFO (the warmest first) and closed after
  ``idle_seconds``: lazily when met on acquire and by a background reaper that
  runs only while idle sessions exist. ``idle_seconds == 0`` disables reuse.
- A session idle for more than ``check_after`` seconds is pinged (NOOP) before
  reuse; a warm one is handed out without any round trip.
- A session released as unhealthy, or that reports ``usable == False`` (its
  connection broke, a command timed out), is dropped, never reused.
- :meth:`close_all` (app shutdown) fails the waiters, closes idle sessions and
  aborts sessions still leased (their requests fail instead of the links leaking).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from service.config import Settings
from service.errors import UpstreamUnavailable


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


class _RetryInQueue(Exception):
    """The server refused a new session for its connection limit; wait for ours."""


def _is_connection_limit(exc: BaseException) -> bool:
    """A login refused because the user has too many connections (IMAP [LIMIT])."""
    upstream = getattr(exc, "upstream", None)
    reply = getattr(upstream, "reply", "") or ""
    return isinstance(exc, UpstreamUnavailable) and "[LIMIT]" in reply.upper()


class _Slot:
    """A waiter's grant: room to open one new session (already counted for its key)."""


_SLOT = _Slot()


@dataclass
class _Idle(Generic[S]):
    session: S
    since: float


@dataclass(frozen=True)
class PoolStats:
    open: int  # idle + leased + being opened
    idle: int
    leased: int
    waiting: int


class SessionPool(Generic[S]):
    """Sessions by key with per-key and global caps; see the module docstring."""

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
        """Limits from ``settings`` (pool_size_per_user, pool_max_sessions,
        pool_idle_seconds, command_timeout); keyword arguments override them."""
        if settings is None:
            settings = Settings()
        self.per_key = per_key if per_key is not None else settings.pool_size_per_process
        self.max_total = max_total if max_total is not None else settings.pool_max_sessions
        self.idle_seconds = idle_seconds if idle_seconds is not None else settings.pool_idle_seconds
        self.wait_timeout = wait_timeout if wait_timeout is not None else settings.command_timeout
        self.check_after = check_after
        self._idle: dict[str, list[_Idle[S]]] = {}
        self._open: dict[str, int] = {}
        self._total = 0
        self._leased: dict[int, tuple[str, S]] = {}
        self._key_waiters: dict[str, deque[asyncio.Future[S | _Slot]]] = {}
        self._global_waiters: deque[tuple[str, asyncio.Future[S | _Slot]]] = deque()
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._lowered: dict[str, tuple[int, float]] = {}
        self.lowered_for = 60.0

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
        a free session exceeds ``wait_timeout`` or the pool is closed.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
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
                granted = await self._wait(key, deadline)
                if not isinstance(granted, _Slot):
                    return granted  # handed over by release(), already leased to us
            try:
                return await self._create(key, factory)
            except _RetryInQueue:
                continue

    def release(self, session: S, *, healthy: bool) -> None:
        """Give a leased session back; closed instead of kept when not healthy."""
        entry = self._leased.get(id(session))
        if entry is None or entry[1] is not session:
            return  # not leased (e.g. released twice): nothing to do
        del self._leased[id(session)]
        key = entry[0]
        if not healthy or not session.usable or self._closed:
            session.abort()
            self._free_slot(key)
            return
        waiter = self._next_waiter_for(key)
        if waiter is not None:
            self._leased[id(session)] = (key, session)
            waiter.set_result(session)
            return
        if self._global_waiters or self.idle_seconds <= 0:
            # someone else waits for room under the global cap (or reuse is off)
            self._spawn_close(session)
            self._free_slot(key)
            return
        self._idle.setdefault(key, []).append(_Idle(session, time.monotonic()))
        self._ensure_reaper()

    async def close_all(self) -> None:
        """Shut down: fail waiters, close idle sessions, abort leased ones."""
        self._closed = True
        error = UpstreamUnavailable("The gateway is shutting down.")
        for queue in self._key_waiters.values():
            for fut in queue:
                if not fut.done():
                    fut.set_exception(error)
        for _, fut in self._global_waiters:
            if not fut.done():
                fut.set_exception(error)
        self._key_waiters.clear()
        self._global_waiters.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for key, stack in list(self._idle.items()):
            for entry in stack:
                self._spawn_close(entry.session)
                self._open[key] -= 1
                self._total -= 1
        self._idle.clear()
        for _, session in list(self._leased.values()):
            session.abort()  # in use right now: its request fails, the link does not leak
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def stats(self) -> PoolStats:
        idle = sum(len(s) for s in self._idle.values())
        waiting = sum(len(q) for q in self._key_waiters.values()) + len(self._global_waiters)
        return PoolStats(self._total, idle, len(self._leased), waiting)

    # -- internals --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise UpstreamUnavailable("The gateway is shutting down.")

    def _take_idle(self, key: str) -> tuple[S, float] | None:
        """Pop the warmest idle session of ``key``; expired or dead ones are closed."""
        stack = self._idle.get(key)
        now = time.monotonic()
        while stack:
            entry = stack.pop()
            idle_for = now - entry.since
            if idle_for > self.idle_seconds or not entry.session.usable:
                self._spawn_close(entry.session)
                self._free_slot(key)
                continue
            return entry.session, idle_for
        return None

    def _reserve(self, key: str) -> bool:
        """Count a new session for ``key`` if both caps (and fairness) allow."""
        if self._open.get(key, 0) >= self._limit(key) or self._key_waiters.get(key):
            return False
        if self._global_waiters:
            return False
        if self._total >= self.max_total and not self._evict_one():
            return False
        self._open[key] = self._open.get(key, 0) + 1
        self._total += 1
        return True

    def _evict_one(self) -> bool:
        """Close the longest-idle session of any key to make room under the global cap."""
        oldest: tuple[float, str] | None = None
        for key, stack in self._idle.items():
            if stack and (oldest is None or stack[0].since < oldest[0]):
                oldest = (stack[0].since, key)
        if oldest is None:
            return False
        key = oldest[1]
        entry = self._idle[key].pop(0)
        self._spawn_close(entry.session)
        self._open[key] -= 1
        self._total -= 1
        return True

    async def _wait(self, key: str, deadline: float) -> S | _Slot:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[S | _Slot] = loop.create_future()
        if self._open.get(key, 0) >= self._limit(key) or self._key_waiters.get(key):
            self._key_waiters.setdefault(key, deque()).append(fut)
        else:
            self._global_waiters.append((key, fut))
        try:
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, deadline - loop.time()))
        except BaseException:
            self._abandon(key, fut)
            raise
        if not done:
            self._abandon(key, fut)
            raise UpstreamUnavailable(
                "Too many concurrent requests for this mailbox; try again shortly.",
                retry_after=1,
            )
        return fut.result()

    def _abandon(self, key: str, fut: asyncio.Future[S | _Slot]) -> None:
        """A waiter gives up: leave the queue, or pass on what it was just granted."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            granted = fut.result()
            if isinstance(granted, _Slot):
                self._free_slot(key)
            else:
                self.release(granted, healthy=True)
            return
        fut.cancel()
        queue = self._key_waiters.get(key)
        if queue is not None and fut in queue:
            queue.remove(fut)
        self._global_waiters = deque((k, f) for k, f in self._global_waiters if f is not fut)

    def _next_waiter_for(self, key: str) -> asyncio.Future[S | _Slot] | None:
        queue = self._key_waiters.get(key)
        while queue:
            fut = queue.popleft()
            if not fut.done():
                return fut
        for k, fut in self._global_waiters:
            if k == key and not fut.done():
                self._global_waiters.remove((k, fut))
                return fut
        return None

    def _free_slot(self, key: str) -> None:
        """One session of ``key`` is gone: uncount it and grant the room to a waiter."""
        self._open[key] -= 1
        self._total -= 1
        if not self._open[key] and not self._idle.get(key) and not self._key_waiters.get(key):
            self._open.pop(key, None)
            self._idle.pop(key, None)
            self._key_waiters.pop(key, None)
        waiter = None
        queue = self._key_waiters.get(key)
        while queue and waiter is None:
            fut = queue.popleft()
            waiter = fut if not fut.done() else None
        if waiter is not None:
            self._grant(key, waiter)
        while self._global_waiters and self._total < self.max_total:
            k, fut = self._global_waiters.popleft()
            if fut.done():
                continue
            if self._open.get(k, 0) >= self._limit(k):
                self._key_waiters.setdefault(k, deque()).append(fut)
                continue
            self._grant(k, fut)

    def _grant(self, key: str, fut: asyncio.Future[S | _Slot]) -> None:
        self._open[key] = self._open.get(key, 0) + 1
        self._total += 1
        fut.set_result(_SLOT)

    def _limit(self, key: str) -> int:
        """The per-key cap, lowered for a while after the server refused one more login."""
        lowered = self._lowered.get(key)
        if lowered is None:
            return self.per_key
        if lowered[1] < time.monotonic():
            del self._lowered[key]
            return self.per_key
        return lowered[0]

    async def _create(self, key: str, factory: Callable[[], Awaitable[S]]) -> S:
        try:
            session = await factory()
        except BaseException as exc:
            others = self._open.get(key, 1) - 1
            if others > 0 and _is_connection_limit(exc):
                # The server's per-user limit is shared with the user's other clients:
                # queue for one of our own sessions instead of failing this request.
                self._lowered[key] = (others, time.monotonic() + self.lowered_for)
                self._free_slot(key)
                raise _RetryInQueue from exc
            self._free_slot(key)
            raise
        if self._closed:
            self._free_slot(key)
            await session.close()
            self._check_open()
        self._leased[id(session)] = (key, session)
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
                for entry in expired:
                    self._spawn_close(entry.session)
                    self._free_slot(key)
