"""GET /v1/events against real Dovecot and Postfix, through a real uvicorn gateway.

Mail arrives over SMTP submission → Postfix → LMTP; other changes are made with
imaplib. Server-side facts (how many IMAP sessions the gateway holds) come from
Dovecot itself: `doveadm who` with the stack's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from mailboxes import Mailbox
from mailstack_env import deliver
from test_sync_changes import Other, raw

from service.main import create_app
from tests.conftest import make_settings

pytestmark = pytest.mark.mailstack


@dataclass
class Gateway:
    url: str
    app: Any


@asynccontextmanager
async def live_gateway(stack: dict[str, str], **overrides: Any) -> AsyncIterator[Gateway]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides.setdefault("events_heartbeat_seconds", 0.5)  # a gone client is noticed at once
    app = create_app(make_settings(stack, **overrides))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield Gateway(f"http://127.0.0.1:{port}", app)
    finally:
        await app.state.event_hub.close()  # what SIGTERM does first (end_streams_on_signal)
        server.should_exit = True
        await task


@dataclass
class Event:
    id: str | None
    event: str | None
    data: Any


class Stream:
    """One SSE connection, parsed as a browser's EventSource would."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []
        self.retry: str | None = None

    async def next(self, wait: float = 10.0) -> Event | None:
        """The next event (an id-only one included); None when the stream ended."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(wait):
            async for line in self._lines:
                if line == "":
                    self.retry = fields.pop("retry", self.retry)
                    if fields:
                        data = fields.get("data")
                        return Event(fields.get("id"), fields.get("event"),
                                     json.loads(data) if data is not None else None)  # fmt: skip
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                key, _, value = line.partition(":")
                fields[key] = value[1:] if value.startswith(" ") else value
        return None

    async def changes(self, n: int, wait: float = 10.0) -> list[Event]:
        out: list[Event] = []
        while len(out) < n:
            ev = await self.next(wait)
            assert ev is not None, f"stream ended after {out}"
            if ev.event is not None:
                out.append(ev)
        return out


@asynccontextmanager
async def stream(
    gw: Gateway, box: Mailbox, *, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        async with client.stream(
            "GET", "/v1/events", params=params, headers={**box.auth, **(headers or {})}
        ) as r:
            assert r.status_code == 200, (await r.aread()).decode()
            assert r.headers["content-type"].startswith("text/event-stream")
            yield Stream(r)


async def smtp_send(stack: dict[str, str], box: Mailbox, subject: str) -> None:
    """Mail arriving for ``box``: SMTP submission to Dovecot, LMTP into Cyrus."""
    await asyncio.to_thread(deliver, stack, "sender@example.test", box.address, raw(subject),
                            box.password)  # fmt: skip


def imap_sessions(stack: dict[str, str], user: str) -> int:
    """How many IMAP sessions the main Dovecot serves for ``user`` (doveadm who)."""
    out = subprocess.run(
        ["doveadm", "-c", f"{stack['MAILSTACK_DIR']}/etc/dovecot.conf", "who", user],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    count = 0
    for line in out.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == user and parts[2] == "imap":
            count += int(parts[1])
    return count


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_arrival_over_lmtp_within_two_seconds(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    async with live_gateway(stack) as gw, stream(gw, mailbox) as s:
        start = await s.next()
        assert start is not None and start.event is None and start.id  # id-only: the state now
        await asyncio.sleep(0.2)  # the feed is idling
        t0 = time.monotonic()
        await smtp_send(stack, mailbox, "hello-live")
        [ev] = await s.changes(1)
        elapsed = time.monotonic() - t0
        assert ev.event == "created" and ev.data["subject"] == "hello-live"
        assert ev.data["uid"] == 1 and ev.data["seen"] is False
        assert elapsed < 2.0, elapsed
        # The event's id is a state: nothing changed since.
        async with httpx.AsyncClient(base_url=gw.url) as c:
            r = await c.get("/v1/changes", params={"since": ev.id}, headers=mailbox.auth)
            assert r.status_code == 200 and r.json()["created"] == [], r.text


async def test_flag_change_and_expunge_from_another_session(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("first"))
    mailbox.append(stack, raw("second"))
    async with live_gateway(stack) as gw, stream(gw, mailbox) as s:
        assert (await s.next()) is not None
        other = Other(mailbox, stack)
        try:
            other.store("first", "+FLAGS", "\\Flagged")
            [ev] = await s.changes(1)
            assert ev.event == "updated"
            assert ev.data["flags"] == ["\\Flagged"] and ev.data["flagged"] is True
            first_id = ev.data["id"]
            other.expunge("first")
            [ev] = await s.changes(1)
            assert ev.event == "destroyed" and ev.data == first_id
        finally:
            other.close()


async def test_last_event_id_replays_exactly_what_was_missed(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    for s_ in ("a1", "a2", "a3"):
        mailbox.append(stack, raw(s_))
    async with live_gateway(stack) as gw:
        async with stream(gw, mailbox) as s:
            other = Other(mailbox, stack)
            other.store("a1", "+FLAGS", "\\Seen")
            [seen] = await s.changes(1)
            last = seen.id
            assert last is not None
        # Missed while disconnected: an arrival, a flag change, an expunge.
        other.store("a2", "+FLAGS", "\\Flagged")
        other.expunge("a3")
        other.close()
        mailbox.append(stack, raw("a4"))
        async with httpx.AsyncClient(base_url=gw.url) as c:
            r = await c.get("/v1/changes", params={"since": last}, headers=mailbox.auth)
            expected = r.json()
        async with stream(gw, mailbox, headers={"Last-Event-ID": last}) as s:
            replay = await s.changes(3)
            kinds = {e.event: e.data for e in replay}
            assert set(kinds) == {"created", "updated", "destroyed"}
            assert [kinds["created"]] == expected["created"]
            assert [kinds["updated"]] == expected["updated"]
            assert [kinds["destroyed"]] == expected["destroyed"]
            assert replay[-1].id == expected["new_state"]
            # then live, and nothing was replayed twice
            mailbox.append(stack, raw("a5"))
            [live] = await s.changes(1)
            assert live.event == "created" and live.data["subject"] == "a5"


@pytest.mark.dovecot("counts the sessions with doveadm who")
async def test_twenty_subscribers_share_one_idle_session(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    async with live_gateway(stack) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            responses = []
            streams: list[Stream] = []
            try:
                for _ in range(20):
                    req = client.build_request("GET", "/v1/events", headers=mailbox.auth)
                    r = await client.send(req, stream=True)
                    assert r.status_code == 200
                    responses.append(r)
                    streams.append(Stream(r))
                for st in streams:
                    assert (await st.next()) is not None
                assert gw.app.state.event_hub.stats() == (1, 20)
                await until(lambda: imap_sessions(stack, mailbox.address) == 1)
                await asyncio.sleep(0.3)
                assert imap_sessions(stack, mailbox.address) == 1  # not 20
                await smtp_send(stack, mailbox, "to-all")
                got = await asyncio.gather(*(st.changes(1) for st in streams))
                assert {evs[0].data["subject"] for evs in got} == {"to-all"}
                assert len({evs[0].id for evs in got}) == 1
            finally:
                for r in responses:
                    await r.aclose()
        # Every client gone: the feed logs out, its slot goes back.
        await until(lambda: gw.app.state.event_hub.stats() == (0, 0), within=20)
        await until(lambda: imap_sessions(stack, mailbox.address) == 0)


async def test_pop3_arrivals_by_polling(stack: dict[str, str], mailbox: Mailbox) -> None:
    mailbox.append(stack, raw("p-old"))
    async with live_gateway(stack, events_poll_seconds=0.2) as gw:
        async with stream(gw, mailbox, protocol="pop3") as s:
            assert (await s.next()) is not None
            mailbox.append(stack, raw("p-new"))
            [ev] = await s.changes(1, wait=5)
            assert ev.event == "created" and ev.data["subject"] == "p-new"
            assert ev.data["uidl"] and "uid" not in ev.data or ev.data.get("uid") is None
            # A deletion POP3 cannot describe: one final event, then the stream ends.
            other = mailbox.pop3(stack)
            other.dele(1)
            other.quit()
            [end] = await s.changes(1, wait=5)
            assert end.event == "cannot-calculate-changes"
            assert end.data["code"] == "cannot-calculate-changes" and end.data["status"] == 410
            assert await s.next() is None


@pytest.mark.dovecot("a second Dovecot on the same mailboxes without IDLE")
async def test_server_without_idle_is_polled_and_says_when_it_cannot_tell(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("b-old"))
    url = f"imaps://localhost:{stack['MAILSTACK_BASIC_IMAPS_PORT']}"
    async with live_gateway(stack, imap_url=url, events_poll_seconds=0.2) as gw:
        async with stream(gw, mailbox) as s:
            assert (await s.next()) is not None
            mailbox.append(stack, raw("b-new"))
            [ev] = await s.changes(1, wait=5)
            assert ev.event == "created" and ev.data["subject"] == "b-new"
            other = Other(mailbox, stack)
            other.store("b-old", "+FLAGS", "\\Seen")  # no CONDSTORE: not exactly tellable
            other.close()
            [end] = await s.changes(1, wait=5)
            assert end.event == "cannot-calculate-changes"
            assert await s.next() is None


async def test_errors_before_streaming_and_clean_shutdown(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    async with live_gateway(stack) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as c:
            r = await c.get("/v1/events", headers={**mailbox.auth, "Last-Event-ID": "bogus!"})
            assert r.status_code == 422 and r.json()["code"] == "validation-failed"
            wrong = {"Authorization": "Basic " + __import__("base64").b64encode(
                f"{mailbox.address}:nope".encode()).decode()}  # fmt: skip
            r = await c.get("/v1/events", headers=wrong)
            assert r.status_code == 401 and r.json()["code"] == "auth-failed"
            r = await c.get("/v1/events", params={"folder": "Nope"}, headers=mailbox.auth)
            assert r.status_code == 404
        async with stream(gw, mailbox) as s:
            assert (await s.next()) is not None
            await gw.app.state.event_hub.close()  # as on SIGTERM
            assert await s.next() is None
            assert any("shutting down" in c for c in s.comments)


async def test_a_budget_of_one_is_left_to_the_reads(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    """One session per mailbox and worker (MAILGATE_POOL_SIZE_PER_USER=1, or 8 over 8
    workers): a stream would hold it for hours and lock the mailbox's reads out (503),
    so it is refused and the reads go on."""
    mailbox.append(stack, b"Subject: x\r\n\r\nhi\r\n")
    async with (
        live_gateway(stack, pool_size_per_user=1, command_timeout=3) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
        c.stream("GET", "/v1/events", headers=mailbox.auth) as events,
    ):
        r = await c.get("/v1/messages", headers=mailbox.auth)
        assert r.status_code == 200, r.text
        assert events.status_code == 422
        assert "/v1/changes" in json.loads(await events.aread())["detail"]
