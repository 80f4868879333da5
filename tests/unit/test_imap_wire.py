"""IMAP wire code without Dovecot: pure parsers, the session pool, and a scripted IMAP server
on a real localhost socket for faults a real server will not produce (no patched methods)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from typing import Any

import pytest
import trustme

from service.config import ServerUrl, Settings
from service.errors import (
    AuthFailed,
    MailGatewayError,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    ValidationFailed,
)
from service.protocols.base import Credentials, ListQuery
from service.protocols.imap.reader import filters_hash, search_criteria
from service.protocols.imap.session import ImapSession
from service.protocols.imap.wire import (
    astring,
    format_uid_set,
    parse_fetch,
    parse_list,
    parse_namespace,
    parse_search,
    parse_sequence_set,
    quote,
    reports_change,
    response_code,
    split_records,
    tokenize,
    utf7_decode,
    utf7_encode,
)
from service.protocols.pool import SessionPool

# --------------------------------------------------------------------------- view changes


@pytest.mark.parametrize(
    ("lines", "solicited", "changed"),
    [
        ([], False, False),  # a NOOP with nothing to report
        ([b'STATUS "INBOX" (MESSAGES 3 UIDNEXT 4 HIGHESTMODSEQ 5)'], False, False),
        ([b"ESEARCH (TAG \"A1\") UID ALL 1:3"], False, False),
        ([b"4 EXISTS"], False, True),  # another client's message (Dovecot, measured)
        ([b"1 EXPUNGE", b"2 RECENT"], False, True),
        ([b"3 RECENT"], False, True),
        ([b"VANISHED 7:9"], False, True),
        ([b"OK [HIGHESTMODSEQ 12] Highest"], False, True),
        ([b"2 FETCH (MODSEQ (5) FLAGS (\\Flagged))"], False, True),  # as Dovecot reports it
        ([b"2 FETCH (MODSEQ (5) FLAGS (\\Flagged))"], True, True),  # also inside a FETCH
        ([b"2 FETCH (FLAGS (\\Seen))"], False, True),  # outside a FETCH: not asked for
        ([b"1 FETCH (UID 2 FLAGS (\\Seen))", b"2 FETCH (UID 3 FLAGS ())"], True, False),
        (
            [b"2 FETCH (UID 2 FLAGS () BODY[HEADER.FIELDS (SUBJECT)] {14}",
             bytearray(b"Subject: 4 EXISTS"), b")"],
            True,
            False,
        ),  # literal data is not a response
    ],
)  # fmt: skip
def test_reports_change(lines: list[Any], solicited: bool, changed: bool) -> None:
    assert reports_change(lines, solicited_fetch=solicited) is changed


# --------------------------------------------------------------------------- modified UTF-7


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("A & B", "A &- B"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
        ("Price * 2 (x)", "Price * 2 (x)"),
        ("😀 fun", "&2D3eAA- fun"),  # astral: a surrogate pair
        ("tab\there", "tab&AAk-here"),  # control characters are encoded too
        ("", ""),
    ],
)
def test_utf7_round_trip(text: str, wire: str) -> None:
    assert utf7_encode(text) == wire
    assert utf7_decode(wire) == text


@pytest.mark.parametrize("bad", ["&Jjo", "&Jjo!-", "Entwürfe", "&AGE=-", "&A-"])
def test_utf7_decode_rejects_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        utf7_decode(bad)


# --------------------------------------------------------------------------- quoting, criteria


def test_quote_escapes_quotes_and_backslashes() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert astring("plain") == '"plain"'
    assert astring("grüße") == "grüße".encode()
    assert astring("cr\rlf") == b"cr\rlf"  # never on the command line


def test_search_criteria_cover_every_filter() -> None:
    q = ListQuery(
        unseen=True,
        flagged=False,
        since=date(2024, 2, 1),
        before=date(2024, 12, 31),
        from_="alice@example.test",
        to="bob",
        subject='x" ALL (',
        text="grüße",
    )
    assert search_criteria(q) == [
        "UNSEEN",
        "UNFLAGGED",
        "SINCE",
        "1-Feb-2024",
        "BEFORE",
        "31-Dec-2024",
        "FROM",
        '"alice@example.test"',
        "TO",
        '"bob"',
        "SUBJECT",
        '"x\\" ALL ("',
        "TEXT",
        "grüße".encode(),
    ]
    assert search_criteria(ListQuery(unseen=False, flagged=True)) == ["SEEN", "FLAGGED"]
    assert search_criteria(ListQuery()) == []


@pytest.mark.parametrize("bad", ["a\r\nA1 LOGOUT", "x\ny", "nul\0"])
def test_search_criteria_refuse_line_breaks(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        search_criteria(ListQuery(subject=bad))


def test_filters_hash_ignores_paging_but_not_filters() -> None:
    a = filters_hash(ListQuery(limit=5, subject="x"))
    assert a == filters_hash(ListQuery(limit=50, cursor="c", count=True, subject="x"))
    assert a != filters_hash(ListQuery(subject="y"))
    assert filters_hash(ListQuery(unseen=True)) != filters_hash(ListQuery(unseen=False))


# --------------------------------------------------------------------------- response parsing


def test_uid_sets() -> None:
    assert format_uid_set([7, 1, 2, 3, 3, 9, 10]) == "1:3,7,9:10"
    assert format_uid_set([5]) == "5"
    assert parse_sequence_set("1:3,7,10:9") == [(1, 3), (7, 7), (9, 10)]


def test_response_code() -> None:
    assert response_code("[TRYCREATE] Mailbox doesn't exist") == ("TRYCREATE", "")
    assert response_code("[COPYUID 5 1:2 3:4] Moved") == ("COPYUID", "5 1:2 3:4")
    assert response_code("Logged in") == ("", "")


def _header_literal(subject: bytes) -> bytearray:
    return bytearray(b"Subject: " + subject + b"\r\n\r\n")


def test_parse_fetch_literals_flags_and_tricky_subjects() -> None:
    subjects = [b"Price * 2", b"(unbalanced", b'"quoted"', b"=?UTF-8?B?w6TDtsO8?= ) ("]
    lines: list[bytes | bytearray] = []
    for n, subject in enumerate(subjects, start=1):
        lit = _header_literal(subject)
        lines += [
            b"%d FETCH (UID %d FLAGS (\\Seen $Label) RFC822.SIZE %d "
            b"BODY[HEADER.FIELDS (SUBJECT)] {%d}" % (n, 10 + n, 100 + n, len(lit)),
            lit,
            b")",
        ]
    lines += [
        b"3 EXISTS",  # unsolicited, ignored
        b"9 FETCH (FLAGS (\\Deleted))",  # no UID: ignored
        b"2 FETCH (UID 12 FLAGS (\\Flagged))",  # a later flag update merges in
    ]
    items = parse_fetch(lines)
    assert sorted(items) == [11, 12, 13, 14]
    for n, subject in enumerate(subjects, start=1):
        item = items[10 + n]
        assert item.size == 100 + n
        assert item.section("BODY[HEADER") == b"Subject: " + subject + b"\r\n\r\n"
    assert items[11].flags == ["\\Seen", "$Label"]
    assert items[12].flags == ["\\Flagged"]


def test_parse_fetch_quoted_section_and_partial_origin() -> None:
    lines: list[bytes | bytearray] = [
        b'1 FETCH (UID 4 BODY[HEADER.FIELDS (SUBJECT)] "Subject: a * b (c \\"d\\"")',
        b"2 FETCH (UID 5 BODY[]<4096> {3}",
        bytearray(b")(*"),
        b" FLAGS ())",
        b"3 FETCH (UID 6 BODY[] NIL)",
    ]
    items = parse_fetch(lines)
    assert items[4].section("BODY[HEADER") == b'Subject: a * b (c "d"'
    assert items[5].section("BODY[]") == b")(*"
    assert items[5].flags == []
    assert items[6].section("BODY[]") == b""


def test_split_records_and_literal_mailbox_names() -> None:
    lines: list[bytes | bytearray] = [
        b'LIST (\\HasNoChildren \\Sent) "." "Sent"',
        b'LIST (\\Noselect \\HasChildren) "/" {9}',
        bytearray(b'Price * "'),
        b"LIST () NIL INBOX",
        b'STATUS "Sent" (MESSAGES 3 UNSEEN 1)',
        b"STATUS INBOX (MESSAGES 10 UNSEEN 0)",
    ]
    assert len(split_records(lines)) == 5
    boxes = parse_list(lines)
    assert [(b.raw_name, b.delimiter) for b in boxes] == [
        ("Sent", "."),
        ('Price * "', "/"),
        ("INBOX", None),
    ]
    assert boxes[0].attributes == frozenset({"\\hasnochildren", "\\sent"})
    assert (boxes[0].messages, boxes[0].unseen) == (3, 1)
    assert not boxes[1].selectable and boxes[1].messages is None
    assert (boxes[2].messages, boxes[2].unseen) == (10, 0)


def test_tokenize_tolerates_garbage() -> None:
    assert tokenize([b'STATUS "unterminated (MESSAGES 1)']) == [
        "STATUS",
        "unterminated",
        ["MESSAGES", "1"],
    ]
    assert tokenize([b"A ) ) B (C"]) == ["A", "B", ["C"]]
    assert tokenize([b"X {5} y"]) == ["X", "{5}", "y"]  # not at the end: not a literal


def test_parse_search_plain_and_esearch() -> None:
    plain = parse_search([b"SEARCH 5 3 4 10 1"])
    assert plain.ranges == [(1, 1), (3, 5), (10, 10)]
    assert plain.count == 5
    assert plain.highest(3) == [10, 5, 4]
    es = parse_search([b'ESEARCH (TAG "A1") UID ALL 1:1500,1502 COUNT 1501'])
    assert es.count == 1501
    assert es.highest(4) == [1502, 1500, 1499, 1498]
    assert parse_search([b'ESEARCH (TAG "A1") UID']).ranges == []
    assert parse_search([b'ESEARCH (TAG "A1") UID COUNT 7']).count == 7
    assert parse_search([b"SEARCH"]).highest(5) == []


# --------------------------------------------------------------------------- the pool


class Dummy:
    """A session stand-in for pool tests."""

    made = 0

    def __init__(self) -> None:
        Dummy.made += 1
        self.n = Dummy.made
        self.alive = True
        self.closed = False
        self.pings = 0
        self.ping_ok = True

    @property
    def usable(self) -> bool:
        return self.alive

    async def ping(self) -> bool:
        self.pings += 1
        return self.ping_ok

    async def close(self) -> None:
        self.closed = True
        self.alive = False

    def abort(self) -> None:
        self.closed = True
        self.alive = False


async def _dummy() -> Dummy:
    await asyncio.sleep(0)
    return Dummy()


def _pool(**kw: Any) -> SessionPool[Dummy]:
    values: dict[str, Any] = {
        "per_key": 2,
        "max_total": 10,
        "idle_seconds": 30.0,
        "wait_timeout": 1.0,
        "check_after": 5.0,
    }
    values.update(kw)
    return SessionPool[Dummy](Settings(), **values)


async def test_pool_reuses_warm_session_without_ping() -> None:
    pool = _pool()
    async with pool.lease("k", _dummy) as first:
        pass
    async with pool.lease("k", _dummy) as second:
        assert second is first
    assert first.pings == 0
    assert pool.stats().open == 1
    await pool.close_all()
    assert first.closed


async def test_pool_pings_after_idle_and_replaces_dead() -> None:
    pool = _pool(check_after=0.0)
    s1 = await pool.acquire("k", _dummy)
    pool.release(s1, healthy=True)
    s1.ping_ok = False
    s2 = await pool.acquire("k", _dummy)
    assert s2 is not s1 and s1.closed and s1.pings == 1
    pool.release(s2, healthy=True)
    assert (await pool.acquire("k", _dummy)) is s2 and s2.pings == 1
    await pool.close_all()


async def test_pool_unhealthy_release_is_closed_not_reused() -> None:
    pool = _pool()
    s1 = await pool.acquire("k", _dummy)
    pool.release(s1, healthy=False)
    assert s1.closed and pool.stats().open == 0
    s2 = await pool.acquire("k", _dummy)
    s2.alive = False  # e.g. a command timed out on it
    pool.release(s2, healthy=True)
    assert s2.closed and pool.stats().open == 0
    pool.release(s2, healthy=True)  # a second release is a no-op
    await pool.close_all()


async def test_pool_per_key_cap_queues_fairly() -> None:
    pool = _pool(per_key=2)
    a = await pool.acquire("k", _dummy)
    b = await pool.acquire("k", _dummy)
    order: list[int] = []

    async def waiter(i: int) -> Dummy:
        s = await pool.acquire("k", _dummy)
        order.append(i)
        return s

    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0.01)
    other = await pool.acquire("other-user", _dummy)  # other keys are not blocked
    assert pool.stats().waiting == 3 and pool.stats().open == 3
    pool.release(a, healthy=True)
    assert (await tasks[0]) is a  # handed over, warm
    pool.release(b, healthy=False)  # dropped: the next waiter gets room for a new one
    second = await tasks[1]
    assert second is not b and not second.closed
    pool.release(a, healthy=True)
    assert (await tasks[2]) is a
    assert order == [0, 1, 2]
    assert pool.stats().open == 3  # never more than 2 for "k"
    for s in (a, second, other):
        pool.release(s, healthy=True)
    await pool.close_all()


async def test_pool_wait_is_bounded() -> None:
    pool = _pool(per_key=1, wait_timeout=0.1)
    held = await pool.acquire("k", _dummy)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        await pool.acquire("k", _dummy)
    assert 0.09 < time.monotonic() - started < 1.0
    assert info.value.retry_after is not None
    assert pool.stats().waiting == 0
    pool.release(held, healthy=True)
    assert (await pool.acquire("k", _dummy)) is held
    await pool.close_all()


async def test_pool_cancelled_waiter_leaves_the_queue() -> None:
    pool = _pool(per_key=1)
    held = await pool.acquire("k", _dummy)
    task = asyncio.create_task(pool.acquire("k", _dummy))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pool.release(held, healthy=True)
    assert pool.stats() == pool.stats().__class__(open=1, idle=1, leased=0, waiting=0)
    await pool.close_all()


async def test_pool_factory_failure_frees_the_slot() -> None:
    pool = _pool(per_key=1)

    async def broken() -> Dummy:
        raise AuthFailed("no")

    with pytest.raises(AuthFailed):
        await pool.acquire("k", broken)
    assert pool.stats().open == 0
    s = await pool.acquire("k", _dummy)
    pool.release(s, healthy=True)
    await pool.close_all()


async def test_pool_global_cap_evicts_idle_then_waits() -> None:
    pool = _pool(per_key=2, max_total=2)
    a = await pool.acquire("a", _dummy)
    b = await pool.acquire("b", _dummy)
    pool.release(a, healthy=True)  # idle
    c = await pool.acquire("c", _dummy)  # evicts a's idle session
    assert pool.stats().open == 2
    await asyncio.sleep(0)
    assert a.closed
    waiting = asyncio.create_task(pool.acquire("d", _dummy))
    await asyncio.sleep(0.01)
    assert not waiting.done() and pool.stats().waiting == 1
    pool.release(b, healthy=True)  # closed to make room for "d"
    d = await waiting
    assert d is not b and pool.stats().open == 2
    await asyncio.sleep(0)
    assert b.closed
    pool.release(c, healthy=True)
    pool.release(d, healthy=True)
    await pool.close_all()


async def test_pool_idle_sessions_expire() -> None:
    pool = _pool(idle_seconds=0.05)
    s = await pool.acquire("k", _dummy)
    pool.release(s, healthy=True)
    await asyncio.sleep(0.3)
    assert s.closed and pool.stats().open == 0
    await pool.close_all()


async def test_pool_close_all_fails_waiters_and_closes() -> None:
    pool = _pool(per_key=1)
    held = await pool.acquire("k", _dummy)
    waiter = asyncio.create_task(pool.acquire("k", _dummy))
    await asyncio.sleep(0.01)
    await pool.close_all()
    with pytest.raises(UpstreamUnavailable):
        await waiter
    pool.release(held, healthy=True)
    assert held.closed
    with pytest.raises(UpstreamUnavailable):
        await pool.acquire("k", _dummy)


# --------------------------------------------------------------------------- scripted server

Handler = Callable[["Peer"], Awaitable[None]]
CAPS = b"IMAP4rev1 AUTH=PLAIN SASL-IR LITERAL+"
AFTER_LOGIN = b"IMAP4rev1 UIDPLUS MOVE ESEARCH LITERAL+"


class Peer:
    """The server side of one scripted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[bytes] = []

    async def line(self) -> tuple[bytes, bytes]:
        """The next command: (tag, rest) without CRLF."""
        raw = await asyncio.wait_for(self.reader.readline(), 5)
        if not raw:
            raise ConnectionError("client went away")
        self.received.append(raw)
        tag, _, rest = raw.rstrip(b"\r\n").partition(b" ")
        return tag, rest

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def hello(self, caps: bytes = CAPS) -> None:
        await self.send(b"* OK [CAPABILITY " + caps + b"] scripted ready\r\n")

    async def login(self) -> bytes:
        tag, rest = await self.line()
        assert rest.startswith(b"AUTHENTICATE PLAIN ")
        await self.send(tag + b" OK [CAPABILITY " + AFTER_LOGIN + b"] Logged in\r\n")
        return rest

    async def select(self) -> None:
        tag, rest = await self.line()
        assert rest.startswith(b"SELECT ")
        await self.send(
            b"* 3 EXISTS\r\n* OK [UIDVALIDITY 42] UIDs valid\r\n"
            + tag
            + b" OK [READ-WRITE] Select completed\r\n"
        )

    async def until_closed(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await self.reader.read(4096):
                pass


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[int, list[BaseException]]]:
    """A one-connection IMAP server on 127.0.0.1:<port>; yields (port, handler errors)."""
    errors: list[BaseException] = []
    tasks: set[asyncio.Task[None]] = set()

    async def run(peer: Peer) -> None:
        try:
            await handler(peer)
        except Exception as exc:  # surfaced by the test
            errors.append(exc)
        finally:
            peer.writer.close()
            with contextlib.suppress(Exception):
                await peer.writer.wait_closed()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(run(Peer(reader, writer)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, errors
    finally:
        server.close()
        for task in list(tasks):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 2)
            task.cancel()
        await server.wait_closed()


FAST = Settings(command_timeout=0.5, connect_timeout=0.5)
CREDS = Credentials("user@example.test", "s3cret-pw")


def _url(port: int, scheme: str = "imap+plain") -> ServerUrl:
    return ServerUrl.parse(f"{scheme}://127.0.0.1:{port}", "imap", allow_plaintext=True)


async def _connect(port: int, *, scheme: str = "imap+plain", **kw: Any) -> ImapSession:
    ctx: ssl.SSLContext = kw.pop("ctx", None) or ssl.create_default_context()
    creds: Credentials = kw.pop("creds", CREDS)
    settings: Settings = kw.pop("settings", FAST)
    return await ImapSession.connect(settings, _url(port, scheme), ctx, creds)


async def test_session_plain_login_wire_format() -> None:
    seen: dict[str, bytes] = {}

    async def handler(peer: Peer) -> None:
        await peer.hello()
        seen["auth"] = await peer.login()
        tag, rest = await peer.line()
        seen["logout"] = rest
        await peer.send(b"* BYE bye\r\n" + tag + b" OK Logout completed\r\n")

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        assert "UIDPLUS" in session.capabilities  # re-read from the login reply
        await session.close()
    assert not errors
    payload = base64.b64decode(seen["auth"].split()[-1])
    assert payload == b"\0user@example.test\0s3cret-pw"
    assert seen["logout"] == b"LOGOUT"


async def test_session_login_refused_is_auth_failed_without_secret() -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello()
        tag, rest = await peer.line()
        await peer.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed " + rest + b"\r\n")
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        with pytest.raises(AuthFailed) as info:
            await _connect(port)
    assert not errors
    text = f"{info.value} {info.value.upstream}"
    assert "s3cret-pw" not in text
    assert base64.b64encode(b"\0user@example.test\0s3cret-pw").decode() not in text


async def test_session_xoauth2_wire_format_and_error_challenge() -> None:
    seen: dict[str, bytes] = {}

    async def handler(peer: Peer) -> None:
        await peer.hello(b"IMAP4rev1 AUTH=XOAUTH2")  # no SASL-IR: payload after "+"
        tag, rest = await peer.line()
        seen["cmd"] = rest
        await peer.send(b"+ \r\n")
        seen["payload"] = (await peer.reader.readline()).rstrip(b"\r\n")
        await peer.send(b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n")  # error challenge
        seen["ack"] = await peer.reader.readline()
        await peer.send(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
        await peer.until_closed()

    creds = Credentials("me@example.test", "tok-123", "xoauth2")
    async with scripted(handler) as (port, errors):
        with pytest.raises(AuthFailed):
            await _connect(port, creds=creds)
    assert not errors
    assert seen["cmd"] == b"AUTHENTICATE XOAUTH2"
    expected = b"user=me@example.test\x01auth=Bearer tok-123\x01\x01"
    assert base64.b64decode(seen["payload"]) == expected
    assert seen["ack"] == b"\r\n"


async def test_session_command_hang_times_out_and_is_discarded() -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello()
        await peer.login()
        await peer.line()  # SELECT: never answered
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await session.select("INBOX")
        assert time.monotonic() - started < 2 * FAST.command_timeout
        assert not session.usable
        session.abort()
    assert not errors


async def test_session_connection_dropped_mid_fetch_fails_at_once() -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello()
        await peer.login()
        await peer.select()
        await peer.line()  # UID FETCH
        await peer.send(b"* 1 FETCH (UID 1 BODY[] {100}\r\nonly part of it")
        peer.writer.close()

    slow = Settings(command_timeout=10, connect_timeout=2)
    async with scripted(handler) as (port, errors):
        session = await _connect(port, settings=slow)
        await session.select("INBOX")
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable):
            await session.uid_fetch("1", "(BODY.PEEK[])")
        assert time.monotonic() - started < 2  # not the 10 s timeout
        assert not session.usable
    assert not errors


async def test_session_bad_reply_is_upstream_error_and_discards() -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello()
        await peer.login()
        tag, _ = await peer.line()
        await peer.send(tag + b" BAD Error in IMAP command\r\n")
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        with pytest.raises(UpstreamError) as info:
            await session.select("INBOX")
        assert info.value.upstream is not None and "Error in IMAP" in info.value.upstream.reply
        assert not session.usable
        session.abort()
    assert not errors


async def test_session_greeting_bye_is_unavailable() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"* BYE [UNAVAILABLE] Too many connections\r\n")

    async with scripted(handler) as (port, errors):
        with pytest.raises(UpstreamUnavailable) as info:
            await _connect(port)
    assert info.value.upstream is not None and "Too many" in info.value.upstream.reply
    assert not errors


async def test_session_silent_server_times_out_on_connect() -> None:
    async def handler(peer: Peer) -> None:
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        with pytest.raises(UpstreamTimeout):
            await _connect(port)
    assert not errors


async def test_session_closed_port_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamUnavailable):
        await _connect(port)


async def test_starttls_not_offered_is_refused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello(b"IMAP4rev1 AUTH=PLAIN")
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        with pytest.raises(UpstreamError, match="STARTTLS"):
            await _connect(port, scheme="imap")
    assert not errors


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) from a throw-away CA."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_starttls_upgrades_and_rereads_capabilities(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls

    async def handler(peer: Peer) -> None:
        await peer.hello(b"IMAP4rev1 STARTTLS LOGINDISABLED")
        tag, rest = await peer.line()
        assert rest == b"STARTTLS"
        await peer.send(tag + b" OK Begin TLS negotiation now\r\n")
        await peer.writer.start_tls(server_ctx)
        tag, rest = await peer.line()
        assert rest == b"CAPABILITY"  # capabilities from before TLS are not trusted
        await peer.send(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
        await peer.login()
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        session = await _connect(port, scheme="imap", ctx=client_ctx)
        assert session.usable and "UIDPLUS" in session.capabilities
        session.abort()
    assert not errors


async def test_starttls_plaintext_injection_is_refused(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    _, client_ctx = tls

    async def handler(peer: Peer) -> None:
        await peer.hello(b"IMAP4rev1 STARTTLS")
        tag, _ = await peer.line()
        await peer.send(tag + b" OK Begin TLS\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] evil\r\n")
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        with pytest.raises(UpstreamError, match="STARTTLS"):
            await _connect(port, scheme="imap", ctx=client_ctx)
    assert not errors


async def test_implicit_tls_untrusted_certificate_is_upstream_error(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = tls
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamError, match="certificate"):
            await _connect(port, scheme="imaps", ctx=ssl.create_default_context())
    finally:
        server.close()
        await server.wait_closed()


async def test_sync_literal_without_literal_plus() -> None:
    seen: list[bytes] = []

    async def handler(peer: Peer) -> None:
        await peer.hello(b"IMAP4rev1 AUTH=PLAIN SASL-IR")
        tag, _ = await peer.line()
        await peer.send(tag + b" OK [CAPABILITY IMAP4rev1 ESEARCH] in\r\n")
        await peer.select()
        tag, rest = await peer.line()
        seen.append(rest)
        await peer.send(b"+ go on\r\n")
        rest = await peer.reader.readline()
        seen.append(rest)
        await peer.send(b'* ESEARCH (TAG "' + tag + b'") UID ALL 2:3\r\n' + tag + b" OK done\r\n")
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        await session.select("INBOX")
        found = await session.uid_search(["SUBJECT", astring("grüße")])
        assert found.highest(5) == [3, 2]
        session.abort()
    assert not errors
    literal = "grüße".encode()
    assert seen[0] == b"UID SEARCH RETURN (ALL) CHARSET UTF-8 SUBJECT {%d}" % len(literal)
    assert seen[1] == literal + b"\r\n"


async def test_huge_fetch_reply_in_one_chunk_parses_without_recursion() -> None:
    count = 3000  # the library recursed once per line: RecursionError past ~1000

    async def handler(peer: Peer) -> None:
        await peer.hello()
        await peer.login()
        await peer.select()
        tag, _ = await peer.line()
        out = bytearray()
        for uid in range(1, count + 1):
            subject = b'Subject: Price * 2 (unbalanced "quoted"\r\n\r\n'
            out += b"* %d FETCH (UID %d FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n" % (
                uid,
                uid,
                len(subject),
            )
            out += subject + b")\r\n"
        out += b'* 5 FETCH (FLAGS (\\Flagged) X "a ) b")\r\n' + tag + b" OK Fetch completed\r\n"
        await peer.send(bytes(out))
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        await session.select("INBOX")
        items = await session.uid_fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert len(items) == count
        assert {i.section("BODY[HEADER") for i in items.values()} == {
            b'Subject: Price * 2 (unbalanced "quoted"\r\n\r\n'
        }
        assert session.usable
        session.abort()
    assert not errors


async def test_untagged_lines_keep_inner_star_space() -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello()
        await peer.login()
        tag, _ = await peer.line()
        await peer.send(
            b'* LIST (\\HasNoChildren) "." "Price * 2"\r\n'
            b'* LIST (\\HasNoChildren) "." "a * b * c"\r\n' + tag + b" OK List completed\r\n"
        )
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        boxes = await session.list_mailboxes()
        assert [b.name for b in boxes] == ["Price * 2", "a * b * c"]
        session.abort()
    assert not errors


# --------------------------------------------------------------------------- the reader on a script


def _command_name(rest: bytes) -> bytes:
    words = rest.split()
    return b" ".join(words[:2]) if words[0] == b"UID" else words[0]


async def _serve(peer: Peer, caps: bytes, *, hang_up_on: bytes | None = None) -> None:
    """A tiny mailbox with one message (UID 7) in INBOX."""
    await peer.hello()
    tag, _ = await peer.line()
    await peer.send(tag + b" OK [CAPABILITY " + caps + b"] Logged in\r\n")
    header = b"Subject: Price * 2\r\n\r\n"
    while True:
        tag, rest = await peer.line()
        name = _command_name(rest)
        if name == hang_up_on:
            return
        if name == b"SELECT":
            out = b"* 1 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n"
        elif name == b"UID SEARCH":
            out = b'* ESEARCH (TAG "' + tag + b'") UID ALL 7\r\n'
        elif name == b"UID FETCH" and b"HEADER.FIELDS" in rest:
            out = (
                b"* 1 FETCH (UID 7 FLAGS () RFC822.SIZE 30 BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n"
                % (len(header))
            )
            out += header + b")\r\n"
        elif name == b"UID FETCH":
            out = b"* 1 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 30)\r\n"
        elif name == b"FETCH":
            out = b"* 1 FETCH (UID 7 FLAGS ())\r\n"
        elif name == b"LOGOUT":
            await peer.send(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
            return
        else:
            out = b""
        await peer.send(out + tag + b" OK done\r\n")


def _reader(port: int, pool: SessionPool[ImapSession]) -> Any:
    from service.protocols.imap.reader import imap_reader

    settings = Settings(
        imap_url=f"imap+plain://127.0.0.1:{port}", command_timeout=2, connect_timeout=2
    )
    return imap_reader(settings, settings.providers["default"], CREDS, pool)


async def test_reader_replaces_a_pooled_session_that_died_once() -> None:
    connections = 0

    async def handler(peer: Peer) -> None:
        nonlocal connections
        connections += 1
        caps = b"IMAP4rev1 UIDPLUS ESEARCH LITERAL+"
        # the first connection dies when the next lease syncs its selected folder (NOOP)
        await _serve(peer, caps, hang_up_on=b"NOOP" if connections == 1 else None)

    pool = SessionPool[ImapSession](Settings())
    async with scripted(handler) as (port, errors):
        reader = _reader(port, pool)
        first = await reader.list_messages("INBOX", ListQuery())
        second = await reader.list_messages("INBOX", ListQuery())
        assert [i.subject for i in first.items] == [i.subject for i in second.items]
        assert [i.subject for i in second.items] == ["Price * 2"]
        assert connections == 2
        await pool.close_all()
    assert not errors


async def _serve_box(
    peer: Peer,
    caps: bytes,
    box: dict[int, list[Any]],
    *,
    size_skew: int = 0,
    folders: list[str] | None = None,
    appended: list[bytes] | None = None,
    read_only: bool = False,
    copied: list[int] | None = None,
    not_in_view: set[int] | None = None,
    noop_reports: list[bytes] | None = None,
    status_reports: list[bytes] | None = None,
) -> None:
    """A stateful one-folder mailbox: {uid: [raw bytes, set of flags]}; RFC822.SIZE
    is reported off by ``size_skew`` (as GreenMail's and some others' are). UIDs in
    ``not_in_view`` are not in the session's view until the next NOOP or SELECT (as
    Dovecot refreshes a selected folder's view only between commands). The next NOOP
    reports the untagged lines put in ``noop_reports`` (and takes them out), the next
    STATUS those in ``status_reports`` after its own line (as Dovecot reports changes at
    the end of every command)."""
    not_in_view = set() if not_in_view is None else not_in_view
    noop_reports = [] if noop_reports is None else noop_reports
    folders = [] if folders is None else folders
    appended = [] if appended is None else appended
    await peer.hello()
    tag, _ = await peer.line()
    await peer.send(tag + b" OK [CAPABILITY " + caps + b"] Logged in\r\n")
    while True:
        tag, rest = await peer.line()
        name, out = _command_name(rest), b""
        seqs = {uid: n for n, uid in enumerate(sorted(box), 1)}
        if name in (b"SELECT", b"NOOP"):
            not_in_view.clear()
        if name == b"NOOP":
            out = b"".join(noop_reports)
            noop_reports.clear()
        if name == b"SELECT":
            out = b"* %d EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n" % len(box)
            out += b"* OK [UIDNEXT %d] next\r\n" % (max(box, default=0) + 1)
            if b"CONDSTORE" in caps:
                out += b"* OK [HIGHESTMODSEQ 9] modseq\r\n"
            if read_only:
                await peer.send(out + tag + b" OK [READ-ONLY] Select done\r\n")
                continue
        elif name == b"STATUS":  # of the selected folder: what the sync state asks
            values = b"UIDNEXT %d MESSAGES %d UIDVALIDITY 42" % (max(box, default=0) + 1, len(box))
            if b"CONDSTORE" in caps:
                values += b" HIGHESTMODSEQ 9"
            out = b'* STATUS "INBOX" (' + values + b")\r\n" + b"".join(status_reports or [])
            if status_reports:
                status_reports.clear()
        elif name == b"UID COPY" and copied is not None:
            copied.append(int(rest.split()[2]))
        elif name == b"UID SEARCH":
            if b"DELETED" in rest:
                found = [u for u, (_, f) in box.items() if "\\Deleted" in f]
            else:
                crit = rest.split(b" ", 2)[2].split()
                if crit[:1] == [b"RETURN"]:  # ESEARCH: answered the RFC 3501 way
                    crit = crit[2:]
                if crit[:1] == [b"UID"]:
                    span = parse_sequence_set(crit[1].decode())
                    found = [u for u in box if any(lo <= u <= hi for lo, hi in span)]
                else:
                    found = list(box)
            out = b"* SEARCH" + b"".join(b" %d" % u for u in sorted(found)) + b"\r\n"
        elif name == b"UID STORE":
            uid = int(rest.split()[2].split(b":")[0])
            if uid in box:
                flags = box[uid][1]
                (flags.add if b"+FLAGS" in rest else flags.discard)("\\Deleted")
        elif name == b"EXPUNGE":
            for uid in sorted((u for u, (_, f) in box.items() if "\\Deleted" in f),
                              reverse=True):  # fmt: skip
                out += b"* %d EXPUNGE\r\n" % seqs[uid]
                del box[uid]
        elif name == b"FETCH":  # by sequence numbers: a listing's window
            span = parse_sequence_set(rest.split()[1].decode())
            for uid, n in seqs.items():
                if any(lo <= n <= hi for lo, hi in span):
                    flags = " ".join(sorted(box[uid][1])).encode()
                    out += b"* %d FETCH (UID %d FLAGS (%s)" % (n, uid, flags)
                    if b"HEADER.FIELDS" in rest:
                        fields = box[uid][0].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
                        out += b" RFC822.SIZE %d BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n" % (
                            len(box[uid][0]),
                            len(fields),
                        )
                        out += fields
                    out += b")\r\n"
        elif name == b"SEARCH":  # SEARCH RETURN (MAX) UID a:b, by sequence numbers
            span = parse_sequence_set(rest.split()[-1].decode())
            found = [n for uid, n in seqs.items() if any(lo <= uid <= hi for lo, hi in span)]
            out = b'* ESEARCH (TAG "%s")' % tag + (b" MAX %d" % max(found) if found else b"")
            out += b"\r\n"
        elif name == b"UID FETCH":
            wanted = {
                u
                for lo, hi in parse_sequence_set(rest.split()[2].decode())
                for u in range(lo, hi + 1)
            }
            for uid in sorted(wanted & set(box) - not_in_view):
                raw, flags = box[uid]
                size = len(raw) + size_skew
                head = b"* %d FETCH (UID %d FLAGS (%s) RFC822.SIZE %d" % (
                    seqs[uid],
                    uid,
                    " ".join(sorted(flags)).encode(),
                    size,
                )
                part = re.search(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>", rest)
                if part:
                    start, count = int(part.group(1)), int(part.group(2))
                    data = raw[start : start + count]
                    head += b" BODY[]<%d> {%d}\r\n" % (start, len(data)) + data
                if b"HEADER.FIELDS" in rest:
                    fields = raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
                    head += b" BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n" % len(fields) + fields
                out += head + b")\r\n"
        elif name == b"LIST":
            out = b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            out += b"".join(b'* LIST () "/" "%s"\r\n' % f.encode() for f in folders)
        elif name == b"CREATE":
            folders.append(rest.split(b" ", 1)[1].strip(b'"').decode())
        elif name == b"APPEND":
            size = int(re.search(rb"\{(\d+)\+?\}$", rest).group(1))  # type: ignore[union-attr]
            appended.append(await peer.reader.readexactly(size))
            await peer.reader.readline()
        elif name == b"LOGOUT":
            await peer.send(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
            return
        await peer.send(out + tag + b" OK done\r\n")


async def test_append_sent_creates_a_sent_folder_when_there_is_none() -> None:
    folders: list[str] = ["Drafts"]
    appended: list[bytes] = []
    pool = SessionPool[ImapSession](Settings())
    serve = lambda p: _serve_box(  # noqa: E731
        p, b"IMAP4rev1 UIDPLUS LITERAL+", {}, folders=folders, appended=appended
    )
    async with scripted(serve) as (port, errors):
        reader = _reader(port, pool)
        assert await reader.append_sent(b"Subject: copy\r\n\r\nbody\r\n") == "Sent"
        await pool.close_all()
    assert not errors
    assert folders == ["Drafts", "Sent"]
    assert appended == [b"Subject: copy\r\n\r\nbody\r\n"]


def _mailbox() -> dict[int, list[Any]]:
    return {
        5: [b"Subject: other\r\n\r\nflagged elsewhere\r\n", {"\\Deleted"}],
        7: [b"Subject: ours\r\n\r\n" + b"line of the body\r\n" * 400, set()],
    }


async def test_without_uidplus_removal_waits_while_others_are_flagged_deleted() -> None:
    from service.errors import Conflict
    from service.ids import ImapRef

    box = _mailbox()
    pool = SessionPool[ImapSession](Settings())
    async with scripted(lambda p: _serve_box(p, b"IMAP4rev1 LITERAL+", box)) as (port, errors):
        reader = _reader(port, pool)
        msg = await reader.open(ImapRef("INBOX", 42, 7))
        with pytest.raises(Conflict):
            await msg.prepare_remove()  # refused before the answer would say "removed"
        with pytest.raises(Conflict):
            await msg.remove()
        await msg.release(healthy=True)
        [result] = await reader.delete([ImapRef("INBOX", 42, 7)])
        assert (result.status, result.code) == (409, "conflict")
        await pool.close_all()
    assert not errors
    assert sorted(box) == [5, 7] and box[7][1] == set()  # nothing purged, our flag undone


async def test_without_uidplus_removal_expunges_when_only_ours_is_flagged() -> None:
    from service.ids import ImapRef

    box = _mailbox()
    box[5][1].clear()
    pool = SessionPool[ImapSession](Settings())
    async with scripted(lambda p: _serve_box(p, b"IMAP4rev1 LITERAL+", box)) as (port, errors):
        reader = _reader(port, pool)
        msg = await reader.open(ImapRef("INBOX", 42, 7))
        await msg.prepare_remove()
        await msg.remove()
        await msg.release(healthy=True)
        await pool.close_all()
    assert not errors
    assert sorted(box) == [5]


@pytest.mark.parametrize("skew", [-10, 0, 10])
async def test_raw_ignores_an_inexact_rfc822_size(skew: int) -> None:
    from service.ids import ImapRef

    box = _mailbox()
    want = box[7][0]
    settings = Settings(
        imap_url="imap+plain://127.0.0.1:1", fetch_chunk_bytes=4096, command_timeout=2
    )
    pool = SessionPool[ImapSession](settings)
    handler = lambda p: _serve_box(p, b"IMAP4rev1 UIDPLUS LITERAL+", box, size_skew=skew)  # noqa: E731
    async with scripted(handler) as (port, errors):
        from service.protocols.imap.reader import imap_reader

        settings = settings.model_copy(update={"imap_url": f"imap+plain://127.0.0.1:{port}"})
        reader = imap_reader(settings, settings.providers["default"], CREDS, pool)
        msg = await reader.open(ImapRef("INBOX", 42, 7))
        assert msg.exact_size is False  # not asked yet: only /raw asks
        await msg.check_size()
        assert msg.exact_size is (skew == 0)
        got = b"".join([c async for c in msg.chunks()])
        assert got == want
        await msg.release(healthy=True)
        await pool.close_all()
    assert not errors


def test_flags_only_fetch_lines_parse_like_any_other() -> None:
    from service.protocols.imap.wire import parse_fetch

    lines: list[Any] = [
        b"1 FETCH (UID 7 FLAGS (\\Seen \\Flagged))",
        b"2 FETCH (FLAGS () UID 9)",
        b"3 FETCH (UID 11 FLAGS ($Label1 \\Seen) RFC822.SIZE 5)",  # the general path
        b"4 FETCH (UID 12 FLAGS (NIL \\Flagged) RFC822.SIZE 6)",  # NIL: a keyword here
        b"5 FETCH (UID 13 FLAGS (NIL))",  # the fast path reads it the same way
    ]
    got = {uid: (item.flags, item.size) for uid, item in parse_fetch(lines).items()}
    assert got == {
        7: (["\\Seen", "\\Flagged"], None),
        9: ([], None),
        11: (["$Label1", "\\Seen"], 5),
        12: (["NIL", "\\Flagged"], 6),
        13: (["NIL"], None),
    }


async def test_read_only_folder_refuses_removal_before_answering() -> None:
    from service.errors import NotSupported
    from service.ids import ImapRef

    box = _mailbox()
    box[5][1].clear()
    pool = SessionPool[ImapSession](Settings())
    serve = lambda p: _serve_box(p, b"IMAP4rev1 UIDPLUS LITERAL+", box, read_only=True)  # noqa: E731
    async with scripted(serve) as (port, errors):
        reader = _reader(port, pool)
        msg = await reader.open(ImapRef("INBOX", 42, 7))
        with pytest.raises(NotSupported):
            await msg.prepare_remove()
        await msg.release(healthy=True)
        [result] = await reader.delete([ImapRef("INBOX", 42, 7)])
        assert (result.status, result.code) == (422, "not-supported")
        await pool.close_all()
    assert not errors
    assert sorted(box) == [5, 7] and box[7][1] == set()


async def test_move_without_move_or_uidplus_checks_before_copying() -> None:
    from service.errors import Conflict
    from service.ids import ImapRef
    from service.models.message import MessagePatch

    box = _mailbox()  # UID 5 carries \Deleted from another client
    copied: list[int] = []
    pool = SessionPool[ImapSession](Settings())
    serve = lambda p: _serve_box(p, b"IMAP4rev1 LITERAL+", box, copied=copied)  # noqa: E731
    async with scripted(serve) as (port, errors):
        reader = _reader(port, pool)
        with pytest.raises(Conflict):
            await reader.patch(ImapRef("INBOX", 42, 7), MessagePatch(folder="Archive"))
        await pool.close_all()
    assert not errors
    assert copied == []  # refused before any copy was made
    assert sorted(box) == [5, 7]


def test_summary_fetch_fast_path_matches_the_general_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.protocols.imap.wire as wire

    head = b'Subject: Price * 2 (unbalanced\r\nFrom: "Q (x)" <q@x.test>\r\n\r\n'
    lines: list[Any] = [
        b"1 FETCH (UID 7 FLAGS (\\Seen $Junk) RFC822.SIZE 300 "
        b"BODY[HEADER.FIELDS (SUBJECT FROM)] {%d}" % len(head),
        bytearray(head),
        b")",
        b"2 FETCH (FLAGS () UID 9 RFC822.SIZE 5 BODY[HEADER.FIELDS (SUBJECT)] {3}",  # other order
        bytearray(b"x\r\n"),
        b")",
    ]

    def shape(found: dict[int, Any]) -> dict[int, Any]:
        return {u: (i.flags, i.size, i.sections) for u, i in found.items()}

    fast = shape(wire.parse_fetch(lines))
    monkeypatch.setattr(wire, "_fast_summary", lambda record: None)
    assert fast == shape(wire.parse_fetch(lines))
    assert fast[7] == (["\\Seen", "$Junk"], 300, {"BODY[HEADER.FIELDS (SUBJECT FROM)]": head})


def _hundreds() -> dict[int, list[Any]]:
    return {uid: [b"Subject: m%d\r\n\r\nbody\r\n" % uid, set()] for uid in range(1, 301)}


async def _pages(
    box: dict[int, list[Any]], *queries: Any, cache: Any = None, condstore: bool = True
) -> tuple[list[Any], list[bytes]]:
    """Each query's page in turn (a callable query gets the previous page) on one pooled
    session of a scripted server; the pages and the commands the server received."""
    received: list[bytes] = []
    caps = b"IMAP4rev1 UIDPLUS ESEARCH LITERAL+" + (b" CONDSTORE" if condstore else b"")

    async def serve(peer: Peer) -> None:
        try:
            await _serve_box(peer, caps, box)
        finally:
            received.extend(peer.received)

    pages: list[Any] = []
    pool = SessionPool[ImapSession](Settings())
    async with scripted(serve) as (port, errors):
        reader = _reader(port, pool)
        reader._cache = cache  # noqa: SLF001 - the reader as the app builds it, with its cache
        for query in queries:
            query = query(pages[-1]) if callable(query) else query
            pages.append(await reader.list_messages("INBOX", query))
        await pool.close_all()
    assert not errors
    commands = [line.split(b" ", 1)[1] for line in received]
    return pages, [c for c in commands if c.split(b" ", 1)[0] in (b"UID", b"FETCH", b"SEARCH")]


@pytest.mark.parametrize("cached", [False, True])
async def test_a_page_costs_one_fetch_of_sequence_numbers(cached: bool) -> None:
    """No SEARCH for an unfiltered listing: the newest page by sequence numbers from
    EXISTS, the next one by a window of numbers under the cursor's. A page whose newest
    message is not cached asks for the header fields in that FETCH; read again with the
    summaries cached, the window asks for flags alone."""
    from service.protocols.summary_cache import SummaryCache

    pages, commands = await _pages(
        _hundreds(),
        ListQuery(limit=3),
        lambda p: ListQuery(limit=3, cursor=p.next_cursor),
        ListQuery(limit=3),
        cache=SummaryCache(100) if cached else None,
    )
    assert [i.subject for i in pages[0].items] == ["m300", "m299", "m298"]
    assert [i.subject for i in pages[1].items] == ["m297", "m296", "m295"]
    assert [i.subject for i in pages[2].items] == ["m300", "m299", "m298"]
    shapes = [c.split()[:2] + [b"HEADER.FIELDS" in c] for c in commands]
    assert shapes == [
        [b"FETCH", b"297:300", True],  # the page and one more (is there a next page?)
        [b"FETCH", b"286:298", True],  # the cursor's own number, the page, one more, 8 slack
        [b"FETCH", b"297:300", not cached],
    ]


@pytest.mark.parametrize("reported", [False, True])
async def test_a_cached_page_costs_one_fetch(reported: bool) -> None:
    """A warm page of a pooled session: the NOOP that brings its view up to date and the
    FETCH of the page. The sync state needs a STATUS only when the NOOP reported a change
    (here another client's flag, with its MODSEQ as CONDSTORE servers report it); without
    one, the view is still the one the last SELECT or STATUS described."""
    from service.protocols.summary_cache import SummaryCache

    box = _hundreds()
    peers: list[Peer] = []
    reports: list[bytes] = []

    async def serve(peer: Peer) -> None:
        peers.append(peer)
        await _serve_box(
            peer, b"IMAP4rev1 UIDPLUS ESEARCH LITERAL+ CONDSTORE", box, noop_reports=reports
        )

    pool = SessionPool[ImapSession](Settings())
    async with scripted(serve) as (port, errors):
        from service.protocols.imap.reader import imap_reader

        settings = Settings(imap_url=f"imap+plain://127.0.0.1:{port}", command_timeout=2)
        reader = imap_reader(
            settings, settings.providers["default"], CREDS, pool, SummaryCache(100)
        )
        first = await reader.list_messages("INBOX", ListQuery(limit=3))
        box[299][1].add("\\Seen")
        if reported:
            reports.append(b"* 299 FETCH (MODSEQ (10) FLAGS (\\Seen))\r\n")
        mark = len(peers[0].received)
        again = await reader.list_messages("INBOX", ListQuery(limit=3))
        received = peers[0].received[mark:]
        await pool.close_all()
    assert not errors
    assert [i.id for i in again.items] == [i.id for i in first.items]
    assert [i.seen for i in again.items] == [False, True, False]  # flags are always fresh
    assert [c.split(b" ", 1)[1].split()[:2] for c in received] == [
        [b"NOOP"],  # the pooled session's re-sync
        *([[b"STATUS", b'"INBOX"']] if reported else []),  # the sync state, of the new view
        [b"FETCH", b"297:300"],
    ]
    assert again.state == first.state


async def test_a_change_reported_with_the_status_is_not_kept_as_the_state() -> None:
    """A STATUS reply that also reports a change (the server's view moved after the STATUS
    values were taken) is used for its page, not kept: the next page asks again."""
    from service.protocols.summary_cache import SummaryCache

    box = _hundreds()
    peers: list[Peer] = []
    noop: list[bytes] = []
    status: list[bytes] = []

    async def serve(peer: Peer) -> None:
        peers.append(peer)
        await _serve_box(
            peer, b"IMAP4rev1 UIDPLUS ESEARCH LITERAL+ CONDSTORE", box,
            noop_reports=noop, status_reports=status,
        )  # fmt: skip

    pool = SessionPool[ImapSession](Settings())
    async with scripted(serve) as (port, errors):
        from service.protocols.imap.reader import imap_reader

        settings = Settings(imap_url=f"imap+plain://127.0.0.1:{port}", command_timeout=2)
        reader = imap_reader(
            settings, settings.providers["default"], CREDS, pool, SummaryCache(100)
        )
        await reader.list_messages("INBOX", ListQuery(limit=3))
        noop.append(b"* 299 FETCH (MODSEQ (10) FLAGS (\\Seen))\r\n")
        status.append(b"* 300 EXISTS\r\n")
        await reader.list_messages("INBOX", ListQuery(limit=3))
        mark = len(peers[0].received)
        await reader.list_messages("INBOX", ListQuery(limit=3))
        received = peers[0].received[mark:]
        await pool.close_all()
    assert not errors
    assert [c.split(b" ", 1)[1].split()[:1] for c in received] == [
        [b"NOOP"], [b"STATUS"], [b"FETCH"],
    ]  # fmt: skip


async def test_a_cursor_from_another_view_is_placed_exactly() -> None:
    """A cursor whose number does not hold, in this session's view, a message at or
    above the cursor's UID (made in an older view, or forged) is placed by one SEARCH,
    and the page is still exactly the next older messages."""
    from service.ids import decode_cursor, encode_cursor

    def lower_number(page: Any) -> ListQuery:
        data = decode_cursor(page.next_cursor)
        assert data["s"] == 298
        data["s"] = 290  # UID 290 sits there: older messages would be skipped
        return ListQuery(limit=3, cursor=encode_cursor(data))

    pages, commands = await _pages(_hundreds(), ListQuery(limit=3), lower_number)
    assert [i.subject for i in pages[1].items] == ["m297", "m296", "m295"]
    assert [b"SEARCH", b"RETURN", b"(MAX)", b"UID", b"1:297"] in [c.split() for c in commands]


async def test_expunges_and_arrivals_between_pages_keep_the_number_usable() -> None:
    """Eight older messages go and ten new ones come between the pages: the cursor's
    number still holds a message at or above its UID, so no SEARCH is needed."""
    box = _hundreds()

    def after_changes(page: Any) -> ListQuery:
        for uid in range(290, 298):
            del box[uid]
        for uid in range(301, 311):
            box[uid] = [b"Subject: m%d\r\n\r\nbody\r\n" % uid, set()]
        return ListQuery(limit=3, cursor=page.next_cursor)

    pages, commands = await _pages(box, ListQuery(limit=3), after_changes)
    assert [i.subject for i in pages[1].items] == ["m289", "m288", "m287"]
    assert not any(c.startswith((b"SEARCH", b"UID SEARCH")) for c in commands)


async def test_a_cursor_without_a_number_still_pages() -> None:
    """Cursors made before numbers were added carry only the UID: placed by one SEARCH."""
    from service.ids import decode_cursor, encode_cursor

    def old_style(page: Any) -> ListQuery:
        data = decode_cursor(page.next_cursor)
        del data["s"]
        return ListQuery(limit=3, cursor=encode_cursor(data))

    pages, commands = await _pages(_hundreds(), ListQuery(limit=3), old_style)
    assert [i.subject for i in pages[1].items] == ["m297", "m296", "m295"]
    assert sum(c.startswith(b"SEARCH") for c in commands) == 1


async def test_a_filtered_page_searches_below_the_cursor() -> None:
    box = _hundreds()
    pages, commands = await _pages(
        box,
        ListQuery(limit=3, subject="m"),
        lambda p: ListQuery(limit=3, subject="m", cursor=p.next_cursor),
    )
    assert [i.subject for i in pages[1].items] == ["m297", "m296", "m295"]
    searches = [c for c in commands if c.startswith(b"UID SEARCH")]
    assert len(searches) == 2 and b"UID 1:297" in searches[1]


def test_the_message_count_follows_exists_expunge_and_vanished() -> None:
    from service.protocols.imap.wire import track_exists

    literal = bytearray(b"9 EXISTS")  # literal data is never a response
    assert track_exists([b"FLAGS (\\Seen)", b"12 EXISTS", b"0 RECENT"], None) == 12
    assert track_exists([b"3 EXPUNGE", b"3 expunge", literal], 12) == 10
    assert track_exists([b"2 FETCH (UID 9 FLAGS ())", b"11 EXISTS"], 10) == 11
    assert track_exists([b"VANISHED 4:6,9"], 11) == 7
    assert track_exists([b"VANISHED (EARLIER) 1:3"], 7) == 7  # already gone before
    assert track_exists([b"3 EXPUNGE"], None) is None  # not known until an EXISTS
    assert track_exists([b"VANISHED x:y"], 7) is None  # garbled: not known any more


def test_esearch_max_and_the_highest_of_a_plain_search() -> None:
    from service.protocols.imap.wire import parse_search

    assert parse_search([b'ESEARCH (TAG "a1") MAX 4711']).maximum == 4711
    assert parse_search([b"SEARCH 3 9 5"]).maximum == 9
    assert parse_search([b'ESEARCH (TAG "a1")']).maximum is None


def test_the_summary_cache_tells_what_it_holds_without_a_use() -> None:
    from service.models.message import MessageSummary
    from service.protocols.summary_cache import SummaryCache

    cache = SummaryCache(2)
    summary = MessageSummary(id="x", folder="INBOX")
    assert not cache.holds(("k", "INBOX", 7, 1))
    cache.put(("k", "INBOX", 7, 1), summary)
    cache.put(("k", "INBOX", 7, 2), summary)
    assert cache.holds(("k", "INBOX", 7, 1))  # asking is not a use: 1 stays the oldest
    cache.put(("k", "INBOX", 7, 3), summary)
    assert not cache.holds(("k", "INBOX", 7, 1)) and cache.holds(("k", "INBOX", 7, 2))
    assert not SummaryCache(0).holds(("k", "INBOX", 7, 1))


def _fetch_replies() -> list[bytes]:
    """FETCH replies of every shape the framing meets, each ending with its tagged OK."""
    lit = b'Subject: (hi\r\nFrom: "Q" <q@x.test>\r\n\r\n'
    two = b"* 4 FETCH (UID 9 BODY[HEADER] {%d}\r\n%s BODY[TEXT] {3}\r\nabc)\r\n" % (len(lit), lit)
    return [
        b"".join(b"* %d FETCH (UID %d FLAGS (\\Seen $Junk))\r\n" % (i, i + 7) for i in range(51)),
        b"".join(
            b"* %d FETCH (UID %d FLAGS () RFC822.SIZE 9 BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n"
            % (i, i, len(lit))
            + lit
            + b")\r\n"
            for i in range(1, 30)
        ),
        b"* 3 EXISTS\r\n* 1 EXPUNGE\r\n* 2 FETCH (UID 5 FLAGS (\\Deleted))\r\n* 0 RECENT\r\n",
        b'* 1 FETCH (UID 3 ENVELOPE ("d" "s (x" NIL NIL NIL NIL NIL NIL NIL NIL))\r\n'
        b"* 2 FETCH (UID 4 FLAGS ())\r\n",
        two + b"* 5 FETCH (UID 10 FLAGS ())\r\n",
        b"* 1 FETCH (UID 3 BODY[] {0}\r\n)\r\n* 2 FETCH (FLAGS (\\Seen) UID 4)\r\n",
        b"* 1 FETCH (UID 3 FLAGS ())\r\n* BYE shutting down\r\n",
    ]


@pytest.mark.parametrize("seed", range(12))
async def test_fast_fetch_framing_reads_what_the_general_loop_reads(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shortcut for simple FETCH responses yields the very lines (bytes, literals as
    bytearray) the library's general loop yields, however the bytes are split."""
    import random

    import service.protocols.imap.session as conn

    rng = random.Random(seed)
    loop = asyncio.get_running_loop()

    class Sink:
        def write(self, data: bytes) -> None: ...

        def is_closing(self) -> bool:
            return False

        def abort(self) -> None: ...

    def read(reply: bytes, fast: bool) -> tuple[list[Any], str, bytes | None]:
        monkeypatch.setattr(conn, "FAST_FETCH_FRAMING", fast)
        proto = conn._Protocol(loop)
        proto.transport = Sink()
        proto.state = "SELECTED"
        cmd = conn._FetchCommand("A1", "FETCH", [b""], loop)
        proto.pending_sync_command = cmd
        data = reply + b"A1 OK done\r\n"
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            proto.data_received(data[a:b])
        assert cmd._event.is_set()
        lines = [(type(x).__name__, bytes(x)) for x in cmd.response.lines]
        return lines, str(cmd.response.result), proto.bye

    for reply in _fetch_replies():
        state = rng.getstate()
        general = read(reply, False)
        rng.setstate(state)  # the same cuts for both
        assert read(reply, True) == general


@pytest.mark.parametrize(
    "refusal",
    [
        b"NO [LIMIT] Too many connections from your IP",
        b"NO [UNAVAILABLE] Authentication backend down",
        b"NO [THROTTLED] Slow down",
        b"NO [INUSE] Mailbox locked",
        b"NO Server Unavailable. 15",
        b"NO Too many open connections (10 of 10 for t@example.test)",
    ],
    ids=["limit", "unavailable", "throttled", "inuse", "exchange-text", "cyrus-maxlogins"],
)
async def test_session_throttled_login_is_503_with_the_servers_words(refusal: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello()
        tag, _ = await peer.line()
        await peer.send(tag + b" " + refusal + b"\r\n")
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        with pytest.raises(UpstreamUnavailable) as info:
            await _connect(port)
    assert not errors
    exc = info.value
    assert exc.status == 503 and exc.retry_after and exc.retry_after > 0
    assert exc.upstream is not None and exc.upstream.protocol == "imap"
    assert refusal.decode().removeprefix("NO ") in exc.upstream.reply


async def test_session_login_guard_is_asked_before_the_credentials_go_out() -> None:
    events: list[str] = []

    class Guard:
        async def before_login(self) -> None:
            events.append("before")
            raise RateLimited("over the limit", retry_after=7)

        async def login_accepted(self) -> None:
            events.append("accepted")

    async def handler(peer: Peer) -> None:
        await peer.hello()
        line = await peer.reader.readline()
        events.append("server got " + line.decode().split(" ")[1] if line else "server got none")

    async with scripted(handler) as (port, errors):
        with pytest.raises(RateLimited):
            await _connect(port, creds=Credentials("u@example.test", "pw", guard=Guard()))
    assert events[0] == "before"
    assert not [e for e in events if e.startswith("server got AUTHENTICATE")]


async def test_a_small_message_read_costs_one_fetch_on_a_warm_session() -> None:
    """Flags, size and the whole body of a small message come in one UID FETCH; the
    session goes back to the pool between reads; a new UID that the session's view does
    not hold yet is looked for again after a NOOP (never a wrong 404)."""
    from service.ids import ImapRef

    box: dict[int, list[Any]] = {uid: [b"Subject: m%d\r\n\r\nbody\r\n" % uid, set()]
                                 for uid in (1, 2)}  # fmt: skip
    peers: list[Peer] = []
    not_in_view: set[int] = set()

    async def serve(peer: Peer) -> None:
        peers.append(peer)
        await _serve_box(peer, b"IMAP4rev1 UIDPLUS LITERAL+", box, not_in_view=not_in_view)

    pool = SessionPool[ImapSession](Settings())
    async with scripted(serve) as (port, errors):
        reader = _reader(port, pool)
        first = await reader.open(ImapRef("INBOX", 42, 1))  # cold: SELECT, then the FETCH
        assert await first.read(10_000) == box[1][0]
        assert pool.stats().leased == 0  # nothing held while the answer is written
        [peer] = peers  # one connection, reused
        received = peer.received
        before = len(received)
        msg = await reader.open(ImapRef("INBOX", 42, 2))  # warm: the FETCH alone
        assert await msg.read(10_000) == box[2][0]
        assert b"".join([c async for c in msg.chunks()]) == box[2][0]
        await msg.check_size()
        assert msg.exact_size and msg.size == len(box[2][0])
        warm = [line.split(b" ", 1)[1] for line in received[before:]]
        assert len(warm) == 1 and warm[0].startswith(b"UID FETCH 2 (UID FLAGS RFC822.SIZE")
        assert b"BODY.PEEK[]<0.1048576>" in warm[0]
        box[3] = [b"Subject: new\r\n\r\nbody\r\n", set()]  # arrives after the view was taken
        not_in_view.add(3)
        before = len(received)
        msg = await reader.open(ImapRef("INBOX", 42, 3))
        assert await msg.read(10_000) == box[3][0]
        again = [_command_name(line.split(b" ", 1)[1]) for line in received[before:]]
        assert again == [b"UID FETCH", b"NOOP", b"UID FETCH"]
        await pool.close_all()
    assert not errors


async def test_a_command_cancelled_in_flight_never_returns_its_session_to_the_pool() -> None:
    """A read cancelled while its FETCH is unanswered (a client's stall timer) must not
    leave the session in the pool: its late reply would answer the next command."""
    from service.ids import ImapRef

    box: dict[int, list[Any]] = {1: [b"Subject: one\r\n\r\nbody\r\n", set()]}
    connections = 0

    async def serve(peer: Peer) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:  # the first connection never answers a FETCH
            await peer.hello()
            tag, _ = await peer.line()
            await peer.send(tag + b" OK [CAPABILITY IMAP4rev1 UIDPLUS LITERAL+] in\r\n")
            await peer.select()
            await peer.line()  # the FETCH: no answer
            await peer.until_closed()
            return
        await _serve_box(peer, b"IMAP4rev1 UIDPLUS LITERAL+", box)

    pool = SessionPool[ImapSession](Settings())
    async with scripted(serve) as (port, errors):
        reader = _reader(port, pool)
        task = asyncio.create_task(reader.open(ImapRef("INBOX", 42, 1)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().open == 0  # dropped, not kept
        msg = await reader.open(ImapRef("INBOX", 42, 1))  # a new connection answers right
        assert await msg.read(10_000) == box[1][0]
        await pool.close_all()
    assert connections == 2 and not errors


def test_copied_uid_reads_copyuid_of_one_message_only() -> None:
    from service.protocols.imap.wire import copied_uid

    # RFC 6851 §4.3: MOVE's COPYUID comes untagged; RFC 4315 §3: COPY's in the tagged OK
    assert copied_uid([b"", b"OK [COPYUID 1796078114 13 7] Moved UIDs."]) == (1796078114, 7)
    assert copied_uid([b"[COPYUID 9 4 2] Copy completed."]) == (9, 2)
    assert copied_uid([b"ok [copyuid 9 4 2] done"]) == (9, 2)
    # several UIDs, no code, nonsense numbers: the new id is not known
    assert copied_uid([b"OK [COPYUID 9 4:5 2:3] Moved UIDs."]) is None
    assert copied_uid([b"OK Move completed.", b"3 EXPUNGE"]) is None
    assert copied_uid([b"OK [COPYUID 0 4 2]"]) is None
    assert copied_uid([b"OK [COPYUID 9 4 4294967296]"]) is None


@pytest.mark.parametrize(
    "refusal, missing",
    [
        (b"NO [TRYCREATE] Mailbox doesn't exist: Nope", True),  # Dovecot
        (b"NO Mailbox does not exist", True),  # Cyrus 3.6: no response code
        (b"NO Permission denied", False),
    ],
    ids=["trycreate", "cyrus-bare", "other"],
)
async def test_session_move_copy_append_to_a_missing_folder_is_not_found(
    refusal: bytes, missing: bool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.hello()
        await peer.login()
        await peer.select()
        while True:
            tag, rest = await peer.line()
            if rest.startswith(b"APPEND"):
                await peer.reader.readexactly(int(re.search(rb"\{(\d+)\+?\}$", rest).group(1)))  # type: ignore[union-attr]
                await peer.reader.readline()
            if rest == b"LOGOUT":
                await peer.send(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                return
            await peer.send(tag + b" " + refusal + b"\r\n")

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        await session.select("INBOX")
        calls = [
            lambda: session.uid_move("3", "Nope"),
            lambda: session.uid_copy("3", "Nope"),
            lambda: session.append("Nope", b"Subject: x\r\n\r\nbody\r\n", []),
        ]
        for call in calls:
            with pytest.raises(MailGatewayError) as info:
                await call()
            assert isinstance(info.value, NotFound) is missing, info.value
            assert info.value.status == (404 if missing else 502)
            assert info.value.upstream is not None
            assert info.value.upstream.reply == refusal.decode().removeprefix("NO ")
        await session.close()
    assert not errors


@pytest.mark.parametrize(
    "line, expected",
    [
        (b'NAMESPACE (("" ".")) NIL NIL', ("", ".")),  # Dovecot
        (b'NAMESPACE (("INBOX." ".")) (("user." ".")) (("" "."))', ("INBOX.", ".")),  # Cyrus
        (b'NAMESPACE (("" "/")("#mh/" "/")) NIL NIL', ("", "/")),
        (b'NAMESPACE (("Entw&APw-rfe/" NIL)) NIL NIL', ("Entwürfe/", None)),
        (b'NAMESPACE NIL NIL (("" "."))', None),
    ],
)
def test_parse_namespace_gives_the_first_personal_prefix(
    line: bytes, expected: tuple[str, str | None] | None
) -> None:
    assert parse_namespace([line]) == expected
    assert parse_namespace([b"OK nothing"]) is None


async def test_session_whose_selected_folder_vanished_says_not_found_and_is_not_reused() -> None:
    """Cyrus answers NOOP in a folder another client deleted with a clean OK; only the
    next command on it says "NO Mailbox does not exist" (no code): the folder is gone
    (404, or a fresh session finds it created again), not a server fault (502)."""

    async def handler(peer: Peer) -> None:
        await peer.hello()
        await peer.login()
        await peer.select()
        tag, rest = await peer.line()
        assert rest.startswith(b"UID FETCH"), rest
        await peer.send(tag + b" NO Mailbox does not exist (0.000 sec)\r\n")
        await peer.until_closed()

    async with scripted(handler) as (port, errors):
        session = await _connect(port)
        await session.select("INBOX")
        with pytest.raises(NotFound) as info:
            await session.uid_fetch("1:*", "(FLAGS)")
        assert info.value.upstream is not None
        assert info.value.upstream.reply == "Mailbox does not exist (0.000 sec)"
        assert not session.usable and session.selected is None
        session.abort()
    assert not errors
