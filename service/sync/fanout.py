"""The event fan-out: one feed (one IDLE session) per mailbox + folder, shared by subscribers.

Each :class:`Channel` owns one :class:`~service.sync.source.ChangeFeed` and a
task that waits for the server to report a change (IMAP IDLE, or polling), then
asks the feed what changed since each subscriber's state and hands every
subscriber its events. Subscribers at the same state (all live ones, after the
first round) share one computation, so twenty subscribers cost one IDLE
session and one ``/changes`` computation per change, not twenty.

- Every subscriber has its own state: a newcomer with ``Last-Event-ID`` is
  replayed exactly what changed since that state, then goes live; one without
  starts at the channel's latest state (sent to it as an ``id``-only event).
- A subscriber that does not read is dropped, not buffered without bound: once
  ``buffer`` events wait for it, its stream ends after them (the client reconnects
  with its last event id and catches up; a replay longer than the buffer thus comes
  over several connections).
- When the server cannot tell what changed (410) or the feed fails, the
  subscribers concerned get one final event and their streams end.
- :meth:`Hub.close` (shutdown) ends every stream cleanly and logs the feeds out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

from service.errors import CannotCalculateChanges, MailGatewayError, UpstreamUnavailable
from service.sync.source import Change, ChangeFeed

__all__ = ["Ending", "Hub", "Mark", "Subscription", "end_streams_on_signal"]

log = logging.getLogger("mailgate")


@dataclass(frozen=True)
class Mark:
    """The state a subscriber starts from (an event with an ``id`` and no data)."""

    state: str


@dataclass(frozen=True)
class Ending:
    """Why a stream ends: ``cannot-calculate-changes`` (list again), ``error`` (the mail
    server failed; ``problem`` says how), ``dropped`` (the client read too slowly),
    ``shutdown`` (the gateway stops). Clients reconnect with their last event id."""

    reason: Literal["cannot-calculate-changes", "error", "dropped", "shutdown"]
    problem: MailGatewayError | None = None


Item = Change | Mark


class Subscription:
    """One stream's view of a channel: its state and the events waiting for it."""

    def __init__(self, since: str | None, buffer: int) -> None:
        self.state = since
        self.pending = True  # changes since ``state`` are to be computed
        self.ending: Ending | None = None
        self._buffer = buffer
        self._queue: deque[Item] = deque()
        self._ready = asyncio.Event()
        self.channel: Channel | None = None

    def push(self, items: list[Item]) -> None:
        """Queue events; past the buffer the subscriber is dropped (see the module doc):
        the events that still fit are sent first, so that a client whose backlog is
        larger than the buffer gets further on each reconnect (every event's id is exact)."""
        if self.ending is not None:
            return
        room = self._buffer - len(self._queue)
        if len(items) > room:
            self._queue.extend(items[: max(room, 0)])
            self.end(Ending("dropped"))
            return
        self._queue.extend(items)
        self._ready.set()

    def end(self, ending: Ending) -> None:
        """End the stream after what is queued (at most ``buffer`` events)."""
        if self.ending is None:
            self.ending = ending
            self._ready.set()

    async def next(self, quiet: float) -> list[Item] | Ending | None:
        """What to send next: queued events, the ending once they are sent, or None when
        nothing came within ``quiet`` seconds (time for a heartbeat)."""
        if not self._queue and self.ending is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(quiet):
                    await self._ready.wait()
        self._ready.clear()
        if self._queue:
            items = list(self._queue)
            self._queue.clear()
            return items
        return self.ending

    def leave(self) -> None:
        """The stream is over (ended, or the client went away)."""
        if self.channel is not None:
            self.channel.remove(self)
            self.channel = None


class Channel:
    """One feed and its subscribers; see the module docstring."""

    def __init__(self, hub: Hub, feed: ChangeFeed) -> None:
        self.hub = hub
        self.feed = feed
        self.subs: set[Subscription] = set()
        self.wake = asyncio.Event()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opened.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.closing = False
        self.latest: str | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.task.add_done_callback(self._settle)

    def _settle(self, _task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never runs ``_run``'s ``finally``: the
        subscribers waiting for the opening are told here, or they would wait for ever
        (and the server's shutdown with them)."""
        if not self.opened.done():
            self.opened.set_exception(UpstreamUnavailable("The gateway is shutting down."))

    def add(self, sub: Subscription) -> None:
        sub.channel = self
        self.subs.add(sub)
        if sub.state is None and self.latest is not None:
            sub.state = self.latest
            sub.push([Mark(self.latest)])
        self.wake.set()

    def remove(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        if not self.subs:
            self.wake.set()

    def _retire(self) -> None:
        """Leave the hub (no awaits between the decision and this: no one joins after)."""
        self.closing = True
        if self.hub.channels.get(self.feed.key) is self:
            del self.hub.channels[self.feed.key]

    def _end_all(self, ending: Ending) -> None:
        for sub in list(self.subs):
            sub.end(ending)
        self.subs.clear()

    async def _run(self) -> None:
        try:
            try:
                self.latest = await self.feed.open()
            except MailGatewayError as exc:
                self._retire()
                self.opened.set_exception(exc)
                return
            self.opened.set_result(None)
            for sub in self.subs:
                if sub.state is None:
                    sub.state = self.latest
                    sub.push([Mark(self.latest)])
            while True:
                self.wake.clear()
                await self._compute()
                if not self.subs:
                    self._retire()
                    return
                if await self.feed.wait(self.wake):
                    for sub in self.subs:
                        sub.pending = True
        except MailGatewayError as exc:
            log.warning("event feed failed: %s %s", exc.code, exc.detail)
            self._retire()
            self._end_all(Ending("error", exc))
        except asyncio.CancelledError:
            self._retire()
            raise
        finally:
            if not self.opened.done():
                self.opened.set_exception(UpstreamUnavailable("The gateway is shutting down."))
            await self.feed.close()

    async def _compute(self) -> None:
        """For each state some subscribers wait at: every change since it, in pages."""
        groups: dict[str, list[Subscription]] = {}
        for sub in self.subs:
            if sub.pending and sub.state is not None:
                groups.setdefault(sub.state, []).append(sub)
        for since, subs in groups.items():
            state = since
            try:
                while True:
                    page = await self.feed.changes(state, self.hub.page_limit)
                    for sub in subs:
                        sub.push(list(page.changes))
                    state = page.new_state
                    if not page.has_more:
                        break
            except CannotCalculateChanges as exc:
                for sub in subs:
                    sub.end(Ending("cannot-calculate-changes", exc))
                    self.subs.discard(sub)
                continue
            except MailGatewayError as exc:
                if exc.status != 422:  # the server failed: every stream ends
                    raise
                for sub in subs:  # a state the feed cannot read (checked before, rare)
                    sub.end(Ending("error", exc))
                    self.subs.discard(sub)
                continue
            for sub in subs:
                if sub.ending is None:
                    sub.state, sub.pending = state, False
                else:
                    self.subs.discard(sub)
            if since == self.latest:
                self.latest = state


class Hub:
    """Channels by feed key, for one process (create in the lifespan, close at exit)."""

    def __init__(self, *, buffer: int = 1000, page_limit: int = 500) -> None:
        self.buffer = buffer
        self.page_limit = page_limit
        self.channels: dict[str, Channel] = {}
        self._closed = False

    async def subscribe(
        self, feed: Callable[[], ChangeFeed], key: str, since: str | None
    ) -> Subscription:
        """Join (or start) the channel of ``key``; once its feed is open, the
        subscription. Raises what opening the feed raises (NotFound, AuthFailed,
        upstream errors), or UpstreamUnavailable when the gateway is shutting down."""
        if self._closed:
            raise UpstreamUnavailable("The gateway is shutting down.")
        channel = self.channels.get(key)
        if channel is None or channel.closing:
            channel = Channel(self, feed())
            self.channels[key] = channel
        sub = Subscription(since, self.buffer)
        channel.add(sub)
        try:
            await asyncio.shield(channel.opened)
        except BaseException:
            sub.leave()
            raise
        return sub

    def stats(self) -> tuple[int, int]:
        """(channels, subscribers): how many feeds are open and streams are served."""
        return len(self.channels), sum(len(c.subs) for c in self.channels.values())

    async def close(self) -> None:
        """End every stream (``shutdown``), stop the feeds and log them out."""
        self._closed = True
        channels = list(self.channels.values())
        for channel in channels:
            channel._retire()
            channel._end_all(Ending("shutdown"))
            channel.task.cancel()
        for channel in channels:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await channel.task


def end_streams_on_signal(hub: Hub) -> Callable[[], None]:
    """End every event stream as soon as SIGTERM or SIGINT arrives; returns the undo.

    A server such as uvicorn waits for open responses to finish before it runs the
    app's shutdown, and an event stream never finishes by itself: so the signal
    handler the server installed is chained, first closing the hub (streams end
    with a comment; clients reconnect elsewhere with Last-Event-ID). Only in the
    main thread, and only over a handler that is a Python function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    saved: dict[int, Any] = {}

    def chain(previous: Callable[[int, FrameType | None], Any]) -> Callable[..., None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(lambda: loop.create_task(hub.close()))
            previous(signum, frame)

        return handler

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if callable(previous):
            saved[sig] = previous
            signal.signal(sig, chain(previous))

    def restore() -> None:
        for sig, previous in saved.items():
            signal.signal(sig, previous)

    return restore
