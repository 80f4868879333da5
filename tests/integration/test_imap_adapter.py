"""ImapReader against the real Dovecot of the test stack; stdlib imaplib checks the server state."""

from __future__ import annotations

import asyncio
import imaplib
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime
from email.header import Header
from typing import Any

import pytest
from mailboxes import Mailbox
from mailstack_env import personal

from service.config import ServerUrl, Settings
from service.errors import (
    AuthFailed,
    InvalidId,
    NotFound,
    StaleId,
    TooLarge,
    UpstreamError,
    UpstreamUnavailable,
    ValidationFailed,
)
from service.ids import ImapRef, Pop3Ref, decode_id
from service.models.message import MessagePatch
from service.protocols.base import Credentials, ListQuery
from service.protocols.imap.reader import ImapReader, imap_reader
from service.protocols.imap.session import ImapSession
from service.protocols.imap.wire import utf7_encode
from service.protocols.pool import SessionPool

pytestmark = pytest.mark.mailstack

MakeReader = Callable[..., ImapReader]


# --------------------------------------------------------------------------- fixtures, helpers


def _settings(stack: dict[str, str], scheme: str = "imaps", **kw: Any) -> Settings:
    port = stack["MAILSTACK_IMAPS_PORT"] if scheme == "imaps" else stack["MAILSTACK_IMAP_PORT"]
    values: dict[str, Any] = {
        "imap_url": f"{scheme}://localhost:{port}",
        "ca_file": stack["MAILSTACK_CA_FILE"],
        "command_timeout": 10.0,
        "connect_timeout": 5.0,
    }
    values.update(kw)
    return Settings(**values)


@pytest.fixture
async def make_imap_reader(stack: dict[str, str]) -> AsyncIterator[MakeReader]:
    """Factory: an ImapReader for a mailbox (own pool unless given); pools closed after."""
    pools: list[SessionPool[ImapSession]] = []

    def factory(
        mb: Mailbox,
        *,
        scheme: str = "imaps",
        password: str | None = None,
        pool: SessionPool[ImapSession] | None = None,
        **kw: Any,
    ) -> ImapReader:
        settings = _settings(stack, scheme, **kw)
        if pool is None:
            pool = SessionPool[ImapSession](settings)
            pools.append(pool)
        creds = Credentials(mb.address, password if password is not None else mb.password)
        return imap_reader(settings, settings.providers["default"], creds, pool)

    yield factory
    for pool in pools:
        await pool.close_all()


@pytest.fixture
def checker(stack: dict[str, str], mailbox: Mailbox) -> Iterator[imaplib.IMAP4_SSL]:
    """An independent stdlib IMAP session on the test mailbox."""
    conn = mailbox.imap(stack)
    yield conn
    try:
        conn.logout()
    except (imaplib.IMAP4.error, OSError):
        pass


def raw_message(
    subject: str | bytes = "hello",
    *,
    sender: str = "Alice <alice@example.test>",
    to: str = "bob@example.test",
    body: bytes = b"hello world\r\n",
    message_id: str | None = None,
) -> bytes:
    subj = subject if isinstance(subject, bytes) else subject.encode()
    head = [
        b"From: " + sender.encode(),
        b"To: " + to.encode(),
        b"Subject: " + subj,
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000",
    ]
    if message_id:
        head.append(b"Message-ID: " + message_id.encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def mbox(name: str) -> str:
    """A folder name as an imaplib argument (modified UTF-7, quoted)."""
    return '"' + utf7_encode(name).replace("\\", "\\\\").replace('"', '\\"') + '"'


def put(
    conn: imaplib.IMAP4_SSL,
    raw: bytes,
    folder: str = "INBOX",
    flags: str | None = None,
    when: datetime | None = None,
) -> int:
    """APPEND; the new UID (from APPENDUID)."""
    stamp = imaplib.Time2Internaldate(when) if when else None
    typ, data = conn.append(mbox(folder), flags, stamp, raw)
    assert typ == "OK", data
    m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
    assert m, data
    return int(m.group(1))


def uids_in(conn: imaplib.IMAP4_SSL, folder: str = "INBOX") -> list[int]:
    typ, _ = conn.select(mbox(folder), readonly=True)
    assert typ == "OK"
    typ, data = conn.uid("SEARCH", None, "ALL")
    return [int(u) for u in (data[0] or b"").split()]


def flags_of(conn: imaplib.IMAP4_SSL, uid: int, folder: str = "INBOX") -> set[str]:
    typ, _ = conn.select(mbox(folder), readonly=True)
    assert typ == "OK"
    typ, data = conn.uid("FETCH", str(uid), "(FLAGS)")
    assert typ == "OK" and data and data[0], data
    first = data[0]
    raw = first if isinstance(first, bytes) else first[0]
    return {f.decode() for f in imaplib.ParseFlags(raw)} - {"\\Recent"}


def body_of(conn: imaplib.IMAP4_SSL, uid: int, folder: str = "INBOX") -> bytes:
    typ, _ = conn.select(mbox(folder), readonly=True)
    typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
    assert typ == "OK" and isinstance(data[0], tuple)
    return bytes(data[0][1])


def uidvalidity(conn: imaplib.IMAP4_SSL, folder: str) -> int:
    typ, data = conn.status(mbox(folder), "(UIDVALIDITY)")
    assert typ == "OK"
    m = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
    assert m
    return int(m.group(1))


async def all_pages(reader: ImapReader, folder: str, **kw: Any) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        page = await reader.list_messages(folder, ListQuery(cursor=cursor, **kw))
        pages.append([int(i.uid or 0) for i in page.items])
        cursor = page.next_cursor
        if cursor is None:
            return pages


# --------------------------------------------------------------------------- connecting


@pytest.mark.parametrize(
    ("scheme", "encrypted"), [("imaps", True), ("imap", True), ("imap+plain", False)]
)
async def test_login_over_each_transport(
    stack: dict[str, str],
    mailbox: Mailbox,
    make_imap_reader: MakeReader,
    scheme: str,
    encrypted: bool,
) -> None:
    settings = _settings(stack, scheme)
    server = settings.providers["default"].imap
    assert server is not None
    session = await ImapSession.connect(
        settings,
        server,
        settings.ssl_context(settings.providers["default"]),
        Credentials(mailbox.address, mailbox.password),
    )
    try:
        assert session.tls is encrypted
        assert {"UIDPLUS", "MOVE"} <= session.capabilities
    finally:
        await session.close()
    folders = await make_imap_reader(mailbox, scheme=scheme).folders(counts=False)
    assert "INBOX" in [f.name for f in folders]


async def test_wrong_password_is_auth_failed(
    mailbox: Mailbox, make_imap_reader: MakeReader
) -> None:
    reader = make_imap_reader(mailbox, password="wrong-pass-xyz")
    with pytest.raises(AuthFailed) as info:
        await reader.folders(counts=False)
    assert "wrong-pass-xyz" not in f"{info.value} {info.value.upstream}"


async def test_closed_port_is_unavailable(mailbox: Mailbox, stack: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(stack, imap_url=f"imaps://127.0.0.1:{port}")
    pool = SessionPool[ImapSession](settings)
    reader = imap_reader(
        settings,
        settings.providers["default"],
        Credentials(mailbox.address, mailbox.password),
        pool,
    )
    with pytest.raises(UpstreamUnavailable):
        await reader.folders(counts=False)
    assert pool.stats().open == 0
    await pool.close_all()


async def test_untrusted_certificate_is_upstream_error(
    mailbox: Mailbox, stack: dict[str, str]
) -> None:
    settings = _settings(stack)
    server = ServerUrl.parse(settings.imap_url or "", "imap")
    with pytest.raises(UpstreamError, match="certificate"):
        await ImapSession.connect(
            settings,
            server,
            ssl.create_default_context(),  # the system store does not know the test CA
            Credentials(mailbox.address, mailbox.password),
        )


# --------------------------------------------------------------------------- folders


async def test_folders_roles_and_counts(
    mailbox: Mailbox,
    stack: dict[str, str],
    checker: imaplib.IMAP4_SSL,
    make_imap_reader: MakeReader,
) -> None:
    def p(name: str) -> str:  # Cyrus keeps the user's folders under "INBOX."
        return personal(stack, name)

    put(checker, raw_message("one"))
    put(checker, raw_message("two"), flags="\\Seen")
    for name in ("Proj.Sub", "Entwürfe", "Price * 2 (x)"):
        assert checker.create(mbox(p(name)))[0] == "OK"
    put(checker, raw_message("in sub"), folder=p("Proj.Sub"))
    reader = make_imap_reader(mailbox)

    folders = {f.name: f for f in await reader.folders(counts=True)}
    roles = {name: f.role for name, f in folders.items() if f.role}
    assert roles == {
        "INBOX": "inbox",
        p("Sent"): "sent",
        p("Drafts"): "drafts",
        p("Trash"): "trash",
        p("Junk"): "junk",
        p("Archive"): "archive",
    }
    assert (folders["INBOX"].messages, folders["INBOX"].unseen) == (2, 1)
    assert (folders[p("Proj.Sub")].messages, folders[p("Proj.Sub")].unseen) == (1, 1)
    if stack["MAILSTACK_SERVER"] == "dovecot":  # Cyrus makes INBOX.Proj a real folder
        assert folders[p("Proj")].messages is None  # \Noselect: no counts
    assert folders[p("Entwürfe")].messages == 0  # decoded from modified UTF-7
    assert folders[p("Price * 2 (x)")].messages == 0
    assert folders["INBOX"].delimiter == "."
    assert next(iter(folders)) == "INBOX"

    plain = await reader.folders(counts=False)
    assert all(f.messages is None and f.unseen is None for f in plain)
    page = await reader.list_messages(p("Price * 2 (x)"), ListQuery())
    assert page.items == []
    with pytest.raises(NotFound):
        await reader.list_messages("No such folder", ListQuery())


# --------------------------------------------------------------------------- listing


@pytest.mark.dovecot("1500 APPENDs one by one take minutes on Cyrus (an fsync each)")
async def test_paging_1500_messages_with_changes_between_pages(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, make_imap_reader: MakeReader
) -> None:
    for n in range(1500):
        put(checker, raw_message(f"message {n}", message_id=f"<m{n}@example.test>"))
    reader = make_imap_reader(mailbox)

    first = await reader.list_messages("INBOX", ListQuery(limit=200, count=True))
    assert first.total == 1500
    assert [i.uid for i in first.items] == list(range(1500, 1300, -1))
    assert first.items[0].message_id == "<m1499@example.test>"
    assert first.items[0].subject == "message 1499"

    # between pages: new mail arrives, listed and unlisted messages disappear
    for n in range(3):
        put(checker, raw_message(f"late {n}"))
    checker.select("INBOX")
    checker.uid("STORE", "1400,1000,1001", "+FLAGS", "(\\Deleted)")
    checker.expunge()

    seen = [int(i.uid or 0) for i in first.items]
    cursor = first.next_cursor
    pages = 1
    while cursor is not None:
        page = await reader.list_messages("INBOX", ListQuery(limit=200, cursor=cursor))
        seen += [int(i.uid or 0) for i in page.items]
        cursor = page.next_cursor
        pages += 1
    assert pages == 8
    assert seen == sorted(seen, reverse=True)  # newest first, strictly
    assert len(seen) == len(set(seen))  # each exactly once
    assert set(seen) == set(range(1, 1501)) - {1000, 1001}  # no skips, no late arrivals

    again = await all_pages(reader, "INBOX", limit=200)
    flat = [u for page in again for u in page]
    assert flat[:3] == [1503, 1502, 1501] and len(flat) == 1500


async def test_pages_stay_exact_when_much_below_the_cursor_goes(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, make_imap_reader: MakeReader
) -> None:
    """Pages are read by sequence numbers under the cursor's: expunges below it (fewer
    and more than a window's slack, most of the rest, the cursor's own message) and
    arrivals between pages neither repeat nor skip a message; two pools (two views of
    the folder) take turns with the same cursors."""
    for n in range(120):
        put(checker, raw_message(f"m{n}"))
    readers = [make_imap_reader(mailbox), make_imap_reader(mailbox)]
    seen: list[int] = []
    unlisted_gone: set[int] = set()

    def expunge(uids: list[int]) -> None:
        checker.select("INBOX")
        checker.uid("STORE", ",".join(map(str, uids)), "+FLAGS", "(\\Deleted)")
        checker.expunge()
        unlisted_gone.update(u for u in uids if u not in seen)

    changes: list[Callable[[], object]] = [
        lambda: expunge([105, 104, 103]),
        lambda: (put(checker, raw_message("late")), expunge(list(range(60, 95)))),
        lambda: expunge(seen[-3:] + [seen[-1] - 1]),  # the cursor's message and the next
        lambda: expunge(list(range(2, 50, 2))),
        lambda: put(checker, raw_message("later")),
    ]
    page = await readers[0].list_messages("INBOX", ListQuery(limit=10, count=True))
    assert page.total == 120
    seen += [int(i.uid or 0) for i in page.items]
    turn = 1
    while page.next_cursor is not None:
        if changes:
            changes.pop(0)()
        query = ListQuery(limit=10, cursor=page.next_cursor)
        page = await readers[turn % 2].list_messages("INBOX", query)
        seen += [int(i.uid or 0) for i in page.items]
        turn += 1
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    assert set(seen) == set(range(1, 121)) - unlisted_gone
    assert not changes


async def test_listing_filters(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, make_imap_reader: MakeReader
) -> None:
    koeln = Header("Grüße aus Köln", "utf-8").encode().encode()
    a = put(
        checker,
        raw_message("Invoice 2024", sender="Alice <alice@example.test>", to="bob@example.test"),
        flags="\\Seen \\Flagged",
        when=datetime(2024, 1, 10, 12, tzinfo=UTC),
    )
    b = put(
        checker,
        raw_message(
            "Meeting",
            sender="Carol <carol@example.test>",
            to="dave@example.test",
            body=b"the secret-word is here\r\n",
        ),
        when=datetime(2024, 3, 5, 12, tzinfo=UTC),
    )
    c = put(
        checker,
        raw_message(koeln, sender="Alice <alice@example.test>"),
        flags="\\Flagged",
        when=datetime(2024, 6, 1, 12, tzinfo=UTC),
    )
    reader = make_imap_reader(mailbox)

    async def uids(**kw: Any) -> list[int]:
        page = await reader.list_messages("INBOX", ListQuery(**kw))
        return [int(i.uid or 0) for i in page.items]

    assert await uids() == [c, b, a]
    assert await uids(unseen=True) == [c, b]
    assert await uids(unseen=False) == [a]
    assert await uids(flagged=True) == [c, a]
    assert await uids(flagged=False) == [b]
    assert await uids(since=date(2024, 3, 1)) == [c, b]
    assert await uids(before=date(2024, 3, 1)) == [a]
    assert await uids(from_="alice") == [c, a]
    assert await uids(to="dave") == [b]
    assert await uids(subject="meeting") == [b]
    assert await uids(subject="Köln") == [c]  # non-ASCII: a UTF-8 literal
    assert await uids(text="secret-word") == [b]
    assert await uids(from_="alice", flagged=True, unseen=True) == [c]
    assert await uids(subject='x" OR ALL "') == []  # quoted, not IMAP syntax
    assert await uids(subject="(") == []

    page = await reader.list_messages("INBOX", ListQuery(limit=1, flagged=True, count=True))
    assert page.total == 2 and page.next_cursor
    page2 = await reader.list_messages(
        "INBOX", ListQuery(limit=1, flagged=True, count=True, cursor=page.next_cursor)
    )
    assert [i.uid for i in page2.items] == [a] and page2.total == 2
    assert page2.next_cursor is None
    with pytest.raises(ValidationFailed):  # the filters changed
        await reader.list_messages("INBOX", ListQuery(limit=1, cursor=page.next_cursor))
    with pytest.raises(ValidationFailed):  # another folder
        await reader.list_messages(
            "Archive", ListQuery(limit=1, flagged=True, cursor=page.next_cursor)
        )
    with pytest.raises(ValidationFailed):
        await reader.list_messages("INBOX", ListQuery(cursor="not-a-cursor!"))


async def test_tricky_subjects_come_back_unchanged(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, make_imap_reader: MakeReader
) -> None:
    fancy = 'Grüße * (test) "x" ✓'
    subjects: list[tuple[bytes, str]] = [
        (b"Price * 2", "Price * 2"),
        (b"(unbalanced", "(unbalanced"),
        (b'"quoted"', '"quoted"'),
        (b"* starts with star", "* starts with star"),
        (Header(fancy, "utf-8").encode().encode(), fancy),
    ]
    for raw, _ in subjects:
        put(checker, raw_message(raw))
    reader = make_imap_reader(mailbox)
    page = await reader.list_messages("INBOX", ListQuery())
    assert [i.subject for i in page.items] == [s for _, s in reversed(subjects)]
    item = page.items[0]
    assert [a["address"] for a in item.from_] == ["alice@example.test"]
    assert [a["address"] for a in item.to] == ["bob@example.test"]
    assert item.size and item.date and item.seen is False and item.flags == []
    assert item.folder == "INBOX"
    assert decode_id(item.id) == ImapRef("INBOX", uidvalidity(checker, "INBOX"), int(item.uid or 0))


# --------------------------------------------------------------------------- one message


async def test_open_streams_exact_bytes_in_chunks_and_keeps_flags(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, make_imap_reader: MakeReader
) -> None:
    body = b"".join(b"line %05d \xc3\xa4\xc3\xb6 =\t*( ) {5}\r\n" % n for n in range(1000))
    uid = put(checker, raw_message("big one", body=body), flags="$Custom")
    expected = body_of(checker, uid)
    assert len(expected) > 5 * 4096
    reader = make_imap_reader(mailbox, fetch_chunk_bytes=4096)
    ref = ImapRef("INBOX", uidvalidity(checker, "INBOX"), uid)

    msg = await reader.open(ref)
    try:
        assert msg.size == len(expected)
        assert msg.id == ref.encode() and msg.folder == "INBOX"
        assert msg.flags == ["$Custom"]
        parts = [p async for p in msg.chunks()]
        assert b"".join(parts) == expected
        assert all(len(p) == 4096 for p in parts[:-1])
        assert len(parts) == -(-len(expected) // 4096)
        assert b"".join([p async for p in msg.chunks(100, 9000)]) == expected[100:9000]
        assert [p async for p in msg.chunks(msg.size, msg.size)] == []
        assert await msg.read(10**7) == expected
        with pytest.raises(TooLarge):
            await msg.read(100)
    finally:
        await msg.release(healthy=True)
    assert flags_of(checker, uid) == {"$Custom"}  # keep: BODY.PEEK, no \Seen

    msg = await reader.open(ref)
    try:
        await msg.mark_seen()
        assert "\\Seen" in msg.flags
    finally:
        await msg.release(healthy=True)
    assert flags_of(checker, uid) == {"$Custom", "\\Seen"}

    with pytest.raises(NotFound):
        await reader.open(ImapRef("INBOX", ref.uidvalidity, uid + 100))
    with pytest.raises(NotFound):
        await reader.open(ImapRef("No such folder", ref.uidvalidity, uid))
    with pytest.raises(InvalidId):
        await reader.open(Pop3Ref("abc"))


async def test_remove_deletes_exactly_that_message(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, make_imap_reader: MakeReader
) -> None:
    a, b, c = (put(checker, raw_message(f"m{n}")) for n in range(3))
    checker.select("INBOX")
    checker.uid("STORE", str(c), "+FLAGS", "(\\Deleted)")  # flagged by another client
    reader = make_imap_reader(mailbox)
    ref = ImapRef("INBOX", uidvalidity(checker, "INBOX"), b)

    msg = await reader.open(ref)
    try:
        await msg.read(10**6)
        await msg.remove()
    finally:
        await msg.release(healthy=True)
    assert uids_in(checker) == [a, c]
    assert "\\Deleted" in flags_of(checker, c)  # not expunged with ours
    with pytest.raises(NotFound):
        await reader.open(ref)


async def test_stale_uidvalidity(
    mailbox: Mailbox, stack: dict[str, str], make_imap_reader: MakeReader
) -> None:
    stale = personal(stack, "Stale")
    conn = mailbox.imap(stack)
    try:
        assert conn.create(stale)[0] == "OK"
        put(conn, raw_message("old 1"), folder=stale)
        put(conn, raw_message("old 2"), folder=stale)
    finally:
        conn.logout()
    reader = make_imap_reader(mailbox, pool_size_per_user=1)  # one session, Stale selected
    page = await reader.list_messages(stale, ListQuery(limit=1))
    old = decode_id(page.items[0].id)
    assert page.next_cursor

    conn = mailbox.imap(stack)  # delete and re-create the folder elsewhere
    try:
        assert conn.delete(stale)[0] == "OK"
        assert conn.create(stale)[0] == "OK"
        put(conn, raw_message("new 1"), folder=stale)
        put(conn, raw_message("new 2"), folder=stale)
        assert uidvalidity(conn, stale) != old.uidvalidity  # type: ignore[union-attr]
    finally:
        conn.logout()

    with pytest.raises(StaleId):
        await reader.open(old)
    with pytest.raises(StaleId):
        await reader.list_messages(stale, ListQuery(limit=1, cursor=page.next_cursor))
    with pytest.raises(StaleId):
        await reader.patch(old, MessagePatch(seen=True))
    [result] = await reader.delete([old])
    assert (result.status, result.code) == (410, "stale-id")
    fresh = await reader.list_messages(stale, ListQuery())
    assert [i.subject for i in fresh.items] == ["new 2", "new 1"]


async def test_pooled_session_sees_changes_made_elsewhere(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, make_imap_reader: MakeReader
) -> None:
    first = put(checker, raw_message("first"))
    reader = make_imap_reader(mailbox, pool_size_per_user=1)
    assert [i.uid for i in (await reader.list_messages("INBOX", ListQuery())).items] == [first]

    second = put(checker, raw_message("second"))  # the pooled session has INBOX selected
    page = await reader.list_messages("INBOX", ListQuery())
    assert [i.uid for i in page.items] == [second, first]

    checker.select("INBOX")
    checker.uid("STORE", str(first), "+FLAGS", "(\\Deleted \\Seen)")
    checker.expunge()
    third = put(checker, raw_message("third"))
    msg = await reader.open(ImapRef("INBOX", uidvalidity(checker, "INBOX"), third))
    await msg.release(healthy=True)
    page = await reader.list_messages("INBOX", ListQuery())
    assert [i.uid for i in page.items] == [third, second]


# --------------------------------------------------------------------------- delete, patch, append


async def test_delete_batch_results(
    mailbox: Mailbox,
    stack: dict[str, str],
    checker: imaplib.IMAP4_SSL,
    make_imap_reader: MakeReader,
) -> None:
    archive = personal(stack, "Archive")
    a = put(checker, raw_message("a"))
    b = put(checker, raw_message("b"))
    keep = put(checker, raw_message("keep"))
    c = put(checker, raw_message("c"), folder=archive)
    inbox_v, archive_v = uidvalidity(checker, "INBOX"), uidvalidity(checker, archive)
    refs = [
        ImapRef("INBOX", inbox_v, a),
        ImapRef(archive, archive_v, c),
        ImapRef("INBOX", inbox_v, 999),
        ImapRef("INBOX", inbox_v + 1, keep),
        Pop3Ref("uidl-1"),
        ImapRef("No such folder", 1, 1),
        ImapRef("INBOX", inbox_v, b),
    ]
    reader = make_imap_reader(mailbox)
    results = await reader.delete(list(refs))
    assert [(r.id, r.status, r.code) for r in results] == [
        (refs[0].encode(), 204, None),
        (refs[1].encode(), 204, None),
        (refs[2].encode(), 404, "not-found"),
        (refs[3].encode(), 410, "stale-id"),
        (refs[4].encode(), 400, "invalid-id"),
        (refs[5].encode(), 404, "not-found"),
        (refs[6].encode(), 204, None),
    ]
    assert uids_in(checker) == [keep]
    assert uids_in(checker, archive) == []
    again = await reader.delete([refs[0]])
    assert [(r.status, r.code) for r in again] == [(404, "not-found")]


async def test_patch_flags_and_move(
    mailbox: Mailbox,
    stack: dict[str, str],
    checker: imaplib.IMAP4_SSL,
    make_imap_reader: MakeReader,
) -> None:
    drafts = personal(stack, "Entwürfe")
    uid = put(checker, raw_message("patch me"))
    assert checker.create(mbox(drafts))[0] == "OK"
    ref = ImapRef("INBOX", uidvalidity(checker, "INBOX"), uid)
    reader = make_imap_reader(mailbox)

    await reader.patch(ref, MessagePatch(seen=True, flagged=True))
    assert flags_of(checker, uid) == {"\\Seen", "\\Flagged"}
    await reader.patch(ref, MessagePatch(seen=False))
    assert flags_of(checker, uid) == {"\\Flagged"}
    await reader.patch(ref, MessagePatch(flagged=False, seen=True))
    assert flags_of(checker, uid) == {"\\Seen"}

    with pytest.raises(NotFound):
        await reader.patch(ref, MessagePatch(folder="No such folder"))
    assert uids_in(checker) == [uid]
    with pytest.raises(NotFound):
        await reader.patch(ImapRef("INBOX", ref.uidvalidity, uid + 50), MessagePatch(seen=True))
    with pytest.raises(InvalidId):
        await reader.patch(Pop3Ref("x"), MessagePatch(seen=True))

    await reader.patch(ref, MessagePatch(folder=drafts, flagged=True))
    assert uids_in(checker) == []
    [moved] = uids_in(checker, drafts)
    assert flags_of(checker, moved, drafts) == {"\\Seen", "\\Flagged"}
    page = await reader.list_messages(drafts, ListQuery())
    assert [i.subject for i in page.items] == ["patch me"]
    assert page.items[0].folder == drafts


async def test_append_sent(
    mailbox: Mailbox,
    stack: dict[str, str],
    checker: imaplib.IMAP4_SSL,
    make_imap_reader: MakeReader,
) -> None:
    sent = personal(stack, "Sent")
    raw = raw_message("sent copy", to="x@example.test") + b"Bcc kept.\r\n"
    reader = make_imap_reader(mailbox)
    assert await reader.append_sent(raw) == sent
    [uid] = uids_in(checker, sent)
    assert body_of(checker, uid, sent) == raw
    assert flags_of(checker, uid, sent) == {"\\Seen"}


# --------------------------------------------------------------------------- pooling


async def test_pool_reuses_sessions_and_caps_per_user(
    mailbox: Mailbox, checker: imaplib.IMAP4_SSL, stack: dict[str, str]
) -> None:
    for n in range(20):
        put(checker, raw_message(f"m{n}"))
    settings = _settings(stack, pool_size_per_user=2)
    pool = SessionPool[ImapSession](settings)
    creds = Credentials(mailbox.address, mailbox.password)
    reader = imap_reader(settings, settings.providers["default"], creds, pool)
    key = creds.pool_key("default", "imap")

    async def no_new_session() -> ImapSession:
        raise AssertionError("a new session was opened")

    await reader.folders(counts=False)
    async with pool.lease(key, no_new_session) as first:
        pass
    await reader.list_messages("INBOX", ListQuery(limit=5))
    async with pool.lease(key, no_new_session) as second:
        assert second is first

    peak = 0
    running = True

    async def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, pool.stats().open)
            await asyncio.sleep(0.0005)

    sampler = asyncio.create_task(sample())
    pages = await asyncio.gather(
        *(reader.list_messages("INBOX", ListQuery(limit=10)) for _ in range(12))
    )
    running = False
    await sampler
    assert all([i.uid for i in p.items] == list(range(20, 10, -1)) for p in pages)
    assert peak == 2  # the extra requests queued instead of opening more sessions
    assert pool.stats().open == 2 and pool.stats().waiting == 0
    await pool.close_all()
    assert pool.stats().open == 0
