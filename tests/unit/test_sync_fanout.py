"""The event fan-out's pure parts: a slow subscriber is dropped, heartbeats, and the
signal that ends every stream before the server waits for them (no mail server)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from service.errors import UpstreamUnavailable
from service.models.sync import FlagUpdate
from service.sync.fanout import Ending, Hub, Mark, Subscription, end_streams_on_signal
from service.sync.source import Change


def change(n: int) -> Change:
    update = FlagUpdate(id=f"i{n}", flags=[], seen=False, flagged=False)
    return Change("updated", update, f"state{n}")


async def test_a_subscriber_that_does_not_read_is_dropped_not_buffered() -> None:
    sub = Subscription("s0", buffer=3)
    sub.push([change(1), change(2)])
    sub.push([change(3)])
    assert sub.ending is None
    sub.push([change(4)])  # a fourth event waiting: dropped, nothing more is kept
    assert sub.ending == Ending("dropped")
    sub.push([change(5)])  # later events are not queued either
    # What waited (at most the buffer) is still sent, then the stream ends.
    assert await sub.next(0.01) == [change(1), change(2), change(3)]
    assert await sub.next(0.01) == Ending("dropped")


async def test_a_burst_larger_than_the_buffer_sends_what_fits_then_drops() -> None:
    # A replay of a backlog longer than the buffer: the events that fit go out, so a
    # client that reconnects with the last one's id gets further each time.
    sub = Subscription("s0", buffer=3)
    sub.push([change(n) for n in range(1, 8)])
    assert sub.ending == Ending("dropped")
    assert await sub.next(0.01) == [change(1), change(2), change(3)]
    assert await sub.next(0.01) == Ending("dropped")


async def test_events_then_the_ending_then_heartbeats() -> None:
    sub = Subscription(None, buffer=10)
    assert await sub.next(0.01) is None  # quiet: time for a ": ping"
    sub.push([Mark("s0"), change(1)])
    sub.end(Ending("shutdown"))
    got = await sub.next(0.01)
    assert isinstance(got, list) and [type(i) for i in got] == [Mark, Change]
    assert await sub.next(0.01) == Ending("shutdown")


async def test_sigterm_ends_the_streams_before_the_servers_own_handler() -> None:
    calls: list[int] = []

    def servers_handler(signum: int, frame: Any) -> None:
        calls.append(signum)

    hub = Hub()
    original = signal.signal(signal.SIGTERM, servers_handler)
    try:
        restore = end_streams_on_signal(hub)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and handler is not servers_handler
        handler(signal.SIGTERM, None)  # as the interpreter would call it
        assert calls == [signal.SIGTERM]
        for _ in range(5):
            await asyncio.sleep(0)
        assert hub._closed
        restore()
        assert signal.getsignal(signal.SIGTERM) is servers_handler
    finally:
        signal.signal(signal.SIGTERM, original)


class _QuietFeed:
    """A feed that opens at once and then never reports anything."""

    key = "box\0INBOX"

    def __init__(self) -> None:
        self.opened = 0

    async def open(self) -> str:
        self.opened += 1
        return "s0"

    async def changes(self, since: str, limit: int) -> Any:
        raise AssertionError("nothing changed")

    async def wait(self, wake: asyncio.Event) -> bool:
        await wake.wait()
        return False

    async def close(self) -> None:
        pass


async def test_a_subscriber_arriving_as_the_hub_closes_is_refused_not_left_waiting() -> None:
    # The stream's request started its channel, whose task had not run yet when the
    # shutdown cancelled it: the request must end (503), or the server waits for it forever.
    hub, feed = Hub(), _QuietFeed()
    joining = asyncio.create_task(hub.subscribe(lambda: feed, feed.key, None))
    await asyncio.sleep(0)  # the channel exists, its task is only scheduled
    assert feed.key in hub.channels
    await hub.close()
    with pytest.raises(UpstreamUnavailable, match="shutting down"):
        async with asyncio.timeout(2):
            await joining
    assert feed.opened == 0
