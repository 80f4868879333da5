"""The IMAP MailboxReader: folders, listing, open/stream, delete, flags/move, append to Sent.

Sessions come from a :class:`~service.protocols.pool.SessionPool`; the wire
work is in :mod:`service.protocols.imap.session`. Only :mod:`service.errors`
classes leave this module.

Removing single messages needs UIDPLUS (``UID EXPUNGE``). Without it the
reader refuses with NotSupported (422) *before* flagging anything: a bare
EXPUNGE would also purge messages that another client flagged ``\\Deleted``,
and clearing/re-setting their flags around it is racy; moving to Trash is not
a deletion. Every mainstream server (Dovecot, Cyrus, Gmail, Exchange) offers
UIDPLUS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, TypeVar, cast

from service import mime
from service.config import Provider, Settings
from service.errors import (
    Conflict,
    InvalidId,
    MailGatewayError,
    NotFound,
    NotSupported,
    RangeNotSatisfiable,
    StaleId,
    TooLarge,
    UpstreamError,
    UpstreamUnavailable,
)
from service.ids import ImapRef, MessageRef
from service.mime import (
    Limits,
    Part,
    PartCutter,
    PartDecoder,
    PartInfo,
    is_leaf,
    part_info,
)
from service.models.message import (
    DeleteResult,
    Folder,
    FolderRole,
    MessagePage,
    MessagePatch,
    MessageSummary,
)
from service.protocols.base import Credentials, ListQuery
from service.protocols.imap.changes import (
    changes_since,
    current_state,
    mark_from_status,
    status_items,
)
from service.protocols.imap.feed import ImapFeed
from service.protocols.imap.listing import (
    PageRequest,
    filters_hash,
    read_page,
    search_criteria,
    summaries,
)
from service.protocols.imap.listing import visible_flags as _visible_flags
from service.protocols.imap.session import ImapSession, Reply
from service.protocols.imap.structure import Located, locate, reuses_boundary
from service.protocols.imap.wire import FetchItem, MailboxInfo, copied_uid, format_uid_set
from service.protocols.parts import cut_from
from service.protocols.parts import decoded as _decoded
from service.protocols.pool import SessionPool
from service.protocols.summary_cache import SummaryCache
from service.sync.source import ChangePage
from service.sync.state import ImapState, decode_state, mailbox_tag

Prefetch = Literal["body", "stream", "structure", "none"]
# A streamed download's first chunk: small, so that its first bytes leave at once (the
# rest follows in fetch_chunk_bytes pieces, one fetched ahead), and a small message
# still comes whole in the opening FETCH.
_FIRST_STREAMED = 64 * 1024

__all__ = [
    "ImapOpenedMessage",
    "Prefetch",
    "ImapReader",
    "filters_hash",
    "imap_reader",
    "new_imap_pool",
    "search_criteria",
]

T = TypeVar("T")

_ROLES: dict[str, FolderRole] = {
    "\\sent": "sent",
    "\\drafts": "drafts",
    "\\trash": "trash",
    "\\junk": "junk",
    "\\archive": "archive",
}
_SENT_NAMES = ("sent", "sent items", "sent messages", "sent mail")


# --------------------------------------------------------------------------- pure helpers


def _role(box: MailboxInfo) -> FolderRole | None:
    if box.name.upper() == "INBOX":
        return "inbox"
    for attr in box.attributes:
        role = _ROLES.get(attr)
        if role is not None:
            return role
    return None


_NAME_ROLES: dict[str, FolderRole] = {
    **dict.fromkeys(_SENT_NAMES, "sent"),
    **dict.fromkeys(("drafts", "draft"), "drafts"),
    **dict.fromkeys(("trash", "deleted items", "deleted messages", "bin"), "trash"),
    **dict.fromkeys(("junk", "spam", "junk e-mail", "junk email", "bulk mail"), "junk"),
    **dict.fromkeys(("archive", "archives"), "archive"),
}


def _top_name(name: str, delimiter: str | None) -> str | None:
    """The name of a top-level folder, or of one directly under INBOX (where servers
    with an ``INBOX.`` namespace keep them: Cyrus, Courier) without that prefix; None
    for a folder deeper down."""
    if delimiter and name.upper().startswith("INBOX" + delimiter):
        name = name[len("INBOX") + len(delimiter) :]
    if delimiter and delimiter in name:
        return None
    return name


def _roles_from_names(folders: list[Folder]) -> None:
    """For servers without SPECIAL-USE: give a role by a well-known name (a top-level
    folder, or one directly under INBOX) when no folder has it by attribute."""
    taken = {f.role for f in folders if f.role is not None}
    for folder in folders:
        if folder.role is not None:
            continue
        name = _top_name(folder.name, folder.delimiter)
        if name is None:
            continue
        role = _NAME_ROLES.get(name.casefold())
        if role is not None and role not in taken:
            folder.role = role
            taken.add(role)


def inbox_spelling(folder: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1): one spelling, so ids stay the same."""
    return "INBOX" if folder.upper() == "INBOX" else folder


def _imap_ref(ref: MessageRef) -> ImapRef:
    if not isinstance(ref, ImapRef):
        raise InvalidId("This id belongs to another protocol (POP3), not IMAP.")
    return ref


# --------------------------------------------------------------------------- opened message


class ImapOpenedMessage:
    """One message, opened by one UID FETCH that also brought its flags, size and first
    ``fetch_chunk_bytes`` (or its BODYSTRUCTURE, for a part download).

    It holds no session: every later read (the next chunk, a part, the removal) leases
    one from the pool for that one command and gives it back at once, so a client that
    reads slowly holds a mail session only while a chunk is being fetched, never
    between chunks. Each lease checks that the folder's UIDVALIDITY is still the id's.
    """

    def __init__(self, reader: ImapReader, ref: ImapRef, item: FetchItem, asked: int) -> None:
        self._reader = reader
        self._ref = ref
        self.id = ref.encode()
        self.folder = ref.folder
        self.uid = ref.uid
        self.flags = _visible_flags(item.flags)
        self.structure = item.structure
        head = item.section("BODY[]")
        self._head = head if head is not None else b""
        self._asked = asked  # the first chunk's length as asked for
        # A first chunk shorter than asked for is the whole message: its size is exact.
        self.exact_size = head is not None and len(head) < asked
        self.size = len(self._head) if self.exact_size else (item.size or 0)

    async def _fetch(self, items: str) -> FetchItem:
        """One ``UID FETCH`` of this message on a leased session; NotFound when it is gone,
        StaleId when its folder's UIDVALIDITY changed."""
        found = await self._reader.fetch_message(self._ref, items)
        if found is None:
            raise NotFound("The message is gone.")
        return found

    async def _fetch_body(self, section: str) -> bytes:
        data = (await self._fetch(f"(UID BODY.PEEK[]{section})")).section("BODY[]")
        if data is None:
            raise NotFound("The message is gone.")
        return data

    async def check_size(self) -> None:
        """Is RFC822.SIZE the exact length? (GreenMail counts the body only, others round.)
        Known already when the first chunk held the whole message; otherwise one partial
        fetch across the announced end: exactly one byte comes back iff so."""
        if not self.exact_size and self.size > 0:
            self.exact_size = len(await self._fetch_body(f"<{self.size - 1}.2>")) == 1

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The raw bytes ``[start, end)``: what the opening FETCH brought, then partial
        fetches of ``fetch_chunk_bytes``, each on a session leased for it alone.

        With a size that is not exact and no ``end``, pieces are fetched until one
        comes back short: the whole message, whatever RFC822.SIZE said.
        """
        open_end = end is None and not self.exact_size
        stop = self.size if end is None else min(end, self.size)
        if start < 0 or (start > stop and not open_end):
            raise RangeNotSatisfiable(size=self.size)
        step = self._reader.settings.fetch_chunk_bytes
        offset = start
        if offset < len(self._head):
            data = self._head[offset : len(self._head) if open_end else stop]
            offset += len(data)
            if data:
                yield data
            if open_end and len(self._head) < self._asked:
                return  # the first chunk came short: it was the whole message
        # One partial fetch ahead: the next chunk is on its way while this one is written.
        pending: tuple[asyncio.Future[bytes], int] | None = None
        if open_end or offset < stop:
            pending = self._fetch_ahead(offset, step if open_end else min(step, stop - offset))
        try:
            while pending is not None:
                task, want = pending
                data = await task
                pending = None
                if len(data) != want and not (open_end and len(data) < want):
                    raise UpstreamError("The message changed on the server while it was read.")
                offset += len(data)
                last = open_end and len(data) < want
                if not last and (open_end or offset < stop):
                    pending = self._fetch_ahead(
                        offset, step if open_end else min(step, stop - offset)
                    )
                if data:
                    yield data
                if last:
                    return
        finally:
            if pending is not None:  # the reader left: the fetch on its way is dropped
                pending[0].cancel()
                await asyncio.wait({pending[0]})  # its session is dropped, not reused

    def _fetch_ahead(self, offset: int, want: int) -> tuple[asyncio.Future[bytes], int]:
        return asyncio.ensure_future(self._fetch_body(f"<{offset}.{want}>")), want

    async def read(self, limit: int) -> bytes:
        """The whole message (what the opening FETCH brought, when that was all of it);
        TooLarge above ``limit``."""
        if self.exact_size:
            if self.size > limit:
                raise TooLarge(f"The message is {self.size} bytes; the limit is {limit}.")
            return self._head
        if self.size > limit:
            raise TooLarge(f"The message is {self.size} bytes; the limit is {limit}.")
        out = bytearray()
        async for piece in self.chunks():
            out += piece
            if len(out) > limit:
                raise TooLarge(f"The message is over the limit of {limit} bytes.")
        return bytes(out)

    async def open_part(self, section: str) -> tuple[PartInfo, AsyncIterator[bytes]] | None:
        """One leaf part by its section (a parsed fetch's attachment or body id): what its
        MIME header says, and its bytes decoded by its Content-Transfer-Encoding as they
        come; None when the message has no such leaf.

        The part is found in the server's BODYSTRUCTURE and fetched alone, as
        ``BODY.PEEK[section]`` partial fetches: the server's bytes of that part, the
        message is not parsed. Where the server's structure cannot answer for the
        gateway's parser (a part at or past the part budget, a structure the server
        reads otherwise, a multipart that reuses the boundary of one around it, a server
        known to cut parts otherwise (Cyrus: see ``ImapSession.parts_as_parsed``), an
        attached ``message/*``: where it ends depends on how the message inside is
        read), the message streams past :class:`~service.mime.PartCutter` instead, which
        stops reading after the part.
        """
        limits = self._reader.settings.mime_limits
        structure = self.structure
        if structure is None:
            structure = (await self._fetch("(UID BODYSTRUCTURE)")).structure
        found = locate(structure, section)
        if (
            found is None
            or found.number >= limits.max_parts
            or reuses_boundary(structure)
            or not self._reader.parts_as_parsed
        ):  # not the server's part, past the budget, a structure parsers disagree on
            return await self._cut_part(section)
        part = await self._check_path(section, found, limits)
        if part is None:
            return await self._cut_part(section)  # the server reads the structure otherwise
        if not is_leaf(part):
            return None
        if part.content_type.startswith("message/"):
            # Where an attached message ends depends on how a parser reads the message
            # inside: Cyrus reads an unclosed multipart in it on past the enclosing
            # boundary, so its BODY[n] also holds the parts after it.
            return await self._cut_part(section)
        info = part_info(part, assumed=found.assumed)
        return info, _decoded(PartDecoder(part.encoding), self._part_chunks(section))

    async def _check_path(self, section: str, found: Located, limits: Limits) -> Part | None:
        """The part's own header, read as the parser reads it, once the MIME headers of
        the part and of every multipart around it (one FETCH) give the boundaries the
        server found: None where they differ (the server's BODY[n] would not be ours)."""
        if found.whole_body:
            header = await self._fetch_section("BODY.PEEK[HEADER]", "BODY[HEADER]")
            part = mime.describe(header or b"", "", limits)
            return part if found.multipart == (part.boundary is not None) else None
        steps = section.split(".")
        names = ["HEADER"] + [".".join(steps[:i]) + ".MIME" for i in range(1, len(steps) + 1)]
        item = await self._fetch("(UID " + " ".join(f"BODY.PEEK[{n}]" for n in names) + ")")
        path: list[Part] = []
        for depth, name in enumerate(names):
            header = item.sections.get(f"BODY[{name}]") or b""
            default = mime.default_type(path[-1]) if path else "text/plain"
            path.append(mime.describe(header, ".".join(steps[:depth]), limits, default=default))
        ours = tuple(p.boundary for p in path)
        return path[-1] if ours == found.boundaries else None

    async def _cut_part(self, section: str) -> tuple[PartInfo, AsyncIterator[bytes]] | None:
        cutter = PartCutter(section, self._reader.settings.mime_limits)
        return await cut_from(cutter, self.chunks())

    async def _fetch_section(self, item: str, key: str) -> bytes | None:
        return (await self._fetch(f"(UID {item})")).section(key)

    async def _part_chunks(self, section: str) -> AsyncIterator[bytes]:
        step = self._reader.settings.fetch_chunk_bytes
        offset = 0
        while True:
            data = await self._fetch_section(
                f"BODY.PEEK[{section}]<{offset}.{step}>", f"BODY[{section}]"
            )
            if not data:
                return
            offset += len(data)
            yield data
            if len(data) < step:
                return

    async def mark_seen(self) -> None:
        """UID STORE +FLAGS.SILENT (\\Seen), on a session leased for it."""
        uid = str(self.uid)
        await self._reader.on_folder(self._ref, lambda s: s.uid_store(uid, "+FLAGS", ["\\Seen"]))
        if "\\Seen" not in self.flags:
            self.flags.append("\\Seen")

    async def prepare_remove(self) -> None:
        """Refuse before answering when removal cannot follow: a read-only folder (422),
        or no UIDPLUS while other messages here are flagged \\Deleted (409)."""

        async def check(session: ImapSession) -> None:
            _writable(session)
            if "UIDPLUS" not in session.capabilities:
                await _others_flagged_deleted(session, {self.uid})

        await self._reader.on_folder(self._ref, check)

    async def remove(self) -> None:
        """``\\Deleted`` + ``UID EXPUNGE`` of this UID only, on a session leased for it
        (its folder's UIDVALIDITY checked first); checked gone on return."""
        await self._reader.on_folder(
            self._ref, lambda s: _expunge_uids(s, {self.uid}, verify=True), retry=False
        )

    async def release(self, *, healthy: bool) -> None:
        """Nothing is held between commands: nothing to give back."""


def _writable(session: ImapSession) -> None:
    if session.read_only:
        raise NotSupported("The folder is read-only on the server: nothing can be removed.")


async def _others_flagged_deleted(session: ImapSession, ours: set[int]) -> None:
    """Conflict when a message other than ``ours`` carries \\Deleted in this folder."""
    flagged = await session.uid_search(["DELETED"])
    if set(flagged.highest(1_000_000)) - ours:
        raise Conflict(
            "The IMAP server has no UIDPLUS, and other messages in this folder are flagged "
            "\\Deleted by another client: expunging now would remove them too. Nothing "
            "was changed; try again after that client has expunged."
        )


async def _expunge_uids(session: ImapSession, wanted: set[int], *, verify: bool = False) -> None:
    """Flag ``\\Deleted`` and expunge exactly ``uids``.

    With UIDPLUS: UID EXPUNGE of those UIDs. Without it, a plain EXPUNGE would also
    purge messages another client flagged \\Deleted, so: flag ours, check with
    SEARCH DELETED that no other message carries the flag, and only then EXPUNGE;
    otherwise take our flags back and answer 409. (A client flagging a message in
    the instant between that SEARCH and the EXPUNGE is the one race left.)
    """
    uids = format_uid_set(wanted)
    _writable(session)
    if "UIDPLUS" not in session.capabilities:
        await _others_flagged_deleted(session, wanted)
        await session.uid_store(uids, "+FLAGS", ["\\Deleted"])
        try:
            await _others_flagged_deleted(session, wanted)
        except Conflict:
            await session.uid_store(uids, "-FLAGS", ["\\Deleted"])
            raise
        await session.expunge()
        if verify and (await session.uid_search(["UID", uids])).ranges:
            raise UpstreamError("The IMAP server did not remove the message.")
        return
    await session.uid_store(uids, "+FLAGS", ["\\Deleted"])
    expunged = await session.uid_expunge(uids)
    if verify and not expunged:
        left = await session.uid_search(["UID", uids])
        if left.ranges:
            raise UpstreamError("The IMAP server did not remove the message.")


# --------------------------------------------------------------------------- the reader


class ImapReader:
    """MailboxReader over IMAP for one request's provider and credentials."""

    protocol: Literal["imap", "pop3"] = "imap"

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        creds: Credentials,
        pool: SessionPool[ImapSession],
        cache: SummaryCache | None = None,
    ) -> None:
        server = provider.imap
        if server is None:
            raise NotSupported(f"No IMAP server is configured for provider {provider.name!r}.")
        self.settings = settings
        self.pool = pool
        self._server = server
        self._ctx = settings.ssl_context(provider, "imap")
        self._creds = creds
        self._key = creds.pool_key(provider.name, "imap")
        self._mailbox = mailbox_tag(provider.name, creds.user)
        self._cache = cache
        self.parts_as_parsed = True  # as the last session leased says (see ImapSession)

    async def _connect(self) -> ImapSession:
        return await ImapSession.connect(self.settings, self._server, self._ctx, self._creds)

    async def _acquire(self) -> ImapSession:
        session = await self.pool.acquire(self._key, self._connect)
        session.begin_lease()
        self.parts_as_parsed = session.parts_as_parsed
        return session

    async def _run(
        self, op: Callable[[ImapSession], Awaitable[T]], *, retry: bool = True, keep: bool = False
    ) -> T:
        """Run ``op`` on a leased session and release it (unless ``keep``).

        A reused session whose very first command finds the connection gone
        (the server closed it while idle) is replaced once by a new session.
        """
        for attempt in (0, 1):
            session = await self._acquire()
            try:
                result = await op(session)
            except BaseException as exc:
                self.pool.release(session, healthy=session.usable)
                stale_link = (
                    isinstance(exc, UpstreamUnavailable)
                    and not session.usable
                    and session.leases > 1
                    and session.commands_in_lease == 0
                )
                # A reused session that could not SELECT (see ImapSession.select): a
                # fresh one tells whether the folder really is gone.
                stale_folder = (
                    isinstance(exc, NotFound) and not session.usable and session.leases > 1
                )
                if retry and attempt == 0 and (stale_link or stale_folder):
                    continue
                raise
            if not keep:
                self.pool.release(session, healthy=session.usable)
            return result
        raise UpstreamUnavailable("The IMAP server closed the connection.")  # pragma: no cover

    # -- folders ----------------------------------------------------------------------------
    async def verify(self) -> None:
        async def op(session: ImapSession) -> None:
            return None

        await self._run(op)

    async def folders(self, *, counts: bool) -> list[Folder]:
        async def op(session: ImapSession) -> list[Folder]:
            if session.selected is not None:
                # STATUS (and LIST-STATUS) of the selected folder answers from the
                # session's view, which Dovecot brings up to date only between commands:
                # sync it first (NOOP once per lease), or counts and state may be stale.
                with contextlib.suppress(NotFound, StaleId):
                    await session.select(session.selected)
            items = (*status_items(session), *(("UNSEEN",) if counts else ()))
            boxes = await session.list_mailboxes(status=True, items=items)
            need_status = "LIST-STATUS" not in session.capabilities
            out: list[Folder] = []
            for box in boxes:
                messages = unseen = state = None
                if box.selectable:
                    status = await session.status(box.raw_name, items) if need_status else None
                    counters = status if status is not None else box.counters
                    if counts:
                        messages, unseen = counters.get("MESSAGES"), counters.get("UNSEEN")
                    found = mark_from_status(session, counters)
                    if found is not None:
                        name = inbox_spelling(box.name)
                        state = ImapState(name, found[0], found[1], mailbox=self._mailbox).encode()
                out.append(
                    Folder(
                        name=box.name,
                        delimiter=box.delimiter,
                        role=_role(box),
                        messages=messages,
                        unseen=unseen,
                        state=state,
                    )
                )
            _roles_from_names(out)
            out.sort(key=lambda f: (f.role != "inbox", f.name.casefold()))
            return out

        return await self._run(op)

    # -- listing ----------------------------------------------------------------------------
    async def list_messages(self, folder: str, query: ListQuery) -> MessagePage:
        """Newest first (highest UID first), at a cost that follows the page, not the
        folder: see :mod:`service.protocols.imap.listing`."""
        request = PageRequest.of(inbox_spelling(folder), query, mailbox=self._mailbox)

        async def op(session: ImapSession) -> MessagePage:
            return await read_page(session, request, self._cache, self._key)

        return await self._run(op)

    # -- sync -------------------------------------------------------------------------------
    async def changes(self, folder: str, since: str, limit: int) -> ChangePage:
        """The changes since state ``since`` (see :mod:`service.protocols.imap.changes`):
        410 CannotCalculateChanges when the server cannot tell, 422 for a bad state."""
        folder = inbox_spelling(folder)
        state = decode_state(since, protocol="imap", folder=folder, mailbox=self._mailbox)
        assert isinstance(state, ImapState)  # noqa: S101 - decode_state checked the protocol

        async def op(session: ImapSession) -> ChangePage:
            return await changes_since(session, state, limit, self._summaries)

        return await self._run(op)

    async def state(self, folder: str) -> str:
        """The folder's current state (one SELECT; without CONDSTORE also a FETCH FLAGS)."""
        folder = inbox_spelling(folder)

        async def op(session: ImapSession) -> str:
            return (await current_state(session, folder, mailbox=self._mailbox)).encode()

        return await self._run(op)

    def feed(self, folder: str) -> ImapFeed:
        """The /events feed of ``folder``: one IDLE session in the mailbox's budget."""
        folder = inbox_spelling(folder)
        return ImapFeed(
            self.settings,
            self.pool,
            self._key,
            self._connect,
            folder,
            self._summaries,
            mailbox=self._mailbox,
        )

    async def _summaries(
        self, session: ImapSession, folder: str, uidvalidity: int, page: list[int]
    ) -> list[MessageSummary]:
        """Summaries of these UIDs with their current flags (for /changes and /events):
        the listing's, from the cache where it can
        (:func:`~service.protocols.imap.listing.summaries`)."""
        return await summaries(session, folder, uidvalidity, page, {}, self._cache, self._key)

    # -- one message ------------------------------------------------------------------------
    async def open(self, ref: MessageRef, *, prefetch: Prefetch = "body") -> ImapOpenedMessage:
        """Open one message with one ``UID FETCH`` of its flags and size and, as
        ``prefetch`` says, its first ``fetch_chunk_bytes`` (``BODY.PEEK[]<0.n>``: a small
        message comes whole) or its BODYSTRUCTURE (part downloads). NotFound, StaleId."""
        iref = _imap_ref(ref)
        asked = {"body": self.settings.fetch_chunk_bytes, "stream": _FIRST_STREAMED}.get(
            prefetch, 0
        )
        extra = {"structure": " BODYSTRUCTURE", "none": ""}.get(
            prefetch, f" BODY.PEEK[]<0.{asked}>"
        )
        item = await self.fetch_message(iref, f"(UID FLAGS RFC822.SIZE{extra})")
        if item is None or item.size is None:
            raise NotFound("No such message.")
        if asked and item.section("BODY[]") is None:
            raise NotFound("No such message.")
        return ImapOpenedMessage(self, iref, item, asked)

    async def fetch_message(self, ref: ImapRef, items: str) -> FetchItem | None:
        """``UID FETCH uid items`` of one message on a leased session, or None when the
        folder has no such UID; StaleId when the folder's UIDVALIDITY is not the id's,
        NotFound when the folder is gone."""

        async def op(session: ImapSession) -> FetchItem | None:
            return (await session.uid_fetch(str(ref.uid), items)).get(ref.uid)

        return await self.on_folder(ref, op, verify=lambda found: found is not None)

    async def on_folder(
        self,
        ref: ImapRef,
        op: Callable[[ImapSession], Awaitable[T]],
        *,
        retry: bool = True,
        verify: Callable[[T], bool] | None = None,
    ) -> T:
        """Run ``op`` on a leased session with ``ref``'s folder selected, released after.

        One round trip where it can be: a session that has the folder selected already
        (and was used recently: the pool NOOPs sessions idle for longer, which also
        brings their view up to date) runs ``op`` at once. When that finds nothing
        (``verify`` false: a message newer than the session's view) or the server
        refuses (a folder deleted under the session, as Cyrus answers ``NO Mailbox does
        not exist``), the view is brought up to date (NOOP, or a new SELECT when the
        NOOP says the folder changed) and ``op`` runs once more: every answer reflects
        the server's state now, not what the pooled session saw before. StaleId when
        the folder's UIDVALIDITY is not the id's; NotFound when the folder is gone.
        """

        async def run(session: ImapSession) -> T:
            fast = session.selected == ref.folder and session.uidvalidity == ref.uidvalidity
            if fast:
                try:
                    result = await op(session)
                except (UpstreamError, NotFound):
                    if not session.usable:
                        raise
                    session.forget_view(selection=True)
                else:
                    if verify is None or verify(result):
                        return result
                    session.forget_view()
            if await session.select(ref.folder) != ref.uidvalidity:
                raise StaleId("The message id is stale (the folder's UIDVALIDITY changed).")
            return await op(session)

        return await self._run(run, retry=retry)

    async def delete(self, refs: list[MessageRef]) -> list[DeleteResult]:
        """Per-ref results: 204 deleted, 404 missing, 410 stale, 400 not an IMAP id.

        Per folder: one SELECT, one UID SEARCH (which of the UIDs exist), one
        STORE ``\\Deleted`` and one UID EXPUNGE of exactly those UIDs.
        """
        results: list[DeleteResult | None] = [None] * len(refs)
        by_folder: dict[str, list[int]] = {}
        for i, ref in enumerate(refs):
            if isinstance(ref, ImapRef):
                by_folder.setdefault(ref.folder, []).append(i)
            else:
                results[i] = DeleteResult(id=ref.encode(), status=400, code="invalid-id")

        async def op(session: ImapSession) -> None:
            for folder, indexes in by_folder.items():
                try:
                    uidvalidity = await session.select(folder)
                except NotFound:
                    for i in indexes:
                        results[i] = DeleteResult(id=refs[i].encode(), status=404, code="not-found")
                    continue
                live: list[int] = []
                for i in indexes:
                    ref = cast(ImapRef, refs[i])
                    if ref.uidvalidity != uidvalidity:
                        results[i] = DeleteResult(id=ref.encode(), status=410, code="stale-id")
                    else:
                        live.append(i)
                if not live:
                    continue
                wanted = format_uid_set(cast(ImapRef, refs[i]).uid for i in live)
                found = await session.uid_search(["UID", wanted])
                existing = {u for lo, hi in found.ranges for u in range(lo, hi + 1)}
                refused: MailGatewayError | None = None
                if existing:
                    try:
                        await _expunge_uids(session, existing)
                    except (Conflict, NotSupported) as exc:  # nothing was changed
                        refused = exc
                for i in live:
                    ref = cast(ImapRef, refs[i])
                    if ref.uid in existing and refused is not None:
                        results[i] = DeleteResult(
                            id=ref.encode(), status=refused.status, code=refused.code
                        )
                    elif ref.uid in existing:
                        results[i] = DeleteResult(id=ref.encode(), status=204)
                    else:
                        results[i] = DeleteResult(id=ref.encode(), status=404, code="not-found")

        if by_folder:
            await self._run(op)
        return [r for r in results if r is not None]

    async def patch(self, ref: MessageRef, patch: MessagePatch) -> str | None:
        """Set/clear ``\\Seen``/``\\Flagged`` (UID STORE), then move (UID MOVE, else COPY +
        ``\\Deleted`` + UID EXPUNGE of that UID). NotFound for a missing message or folder.

        Returns the moved message's new id when the server named its new UID
        (``COPYUID``, RFC 4315 UIDPLUS), else None (no move, or a server without it)."""
        iref = _imap_ref(ref)
        add = [f for f, v in (("\\Seen", patch.seen), ("\\Flagged", patch.flagged)) if v is True]
        remove = [
            f for f, v in (("\\Seen", patch.seen), ("\\Flagged", patch.flagged)) if v is False
        ]
        target = inbox_spelling(patch.folder) if patch.folder is not None else None

        def new_id(reply: Reply) -> str | None:
            assert target is not None  # noqa: S101 - only called after a move
            texts = [reply.raw.encode("utf-8", "replace")]
            texts += [line for line in reply.lines if isinstance(line, bytes)]
            found = copied_uid(texts)
            return None if found is None else ImapRef(target, *found).encode()

        async def op(session: ImapSession) -> str | None:
            if await session.select(iref.folder) != iref.uidvalidity:
                raise StaleId("The message id is stale (the folder's UIDVALIDITY changed).")
            uid = str(iref.uid)
            if not (await session.uid_search(["UID", uid])).ranges:
                raise NotFound("No such message.")
            if add:
                await session.uid_store(uid, "+FLAGS", add)
            if remove:
                await session.uid_store(uid, "-FLAGS", remove)
            if target is None or target == iref.folder:
                return None
            if "MOVE" in session.capabilities:
                return new_id(await session.uid_move(uid, target))
            _writable(session)
            if "UIDPLUS" not in session.capabilities:  # check before the copy exists
                await _others_flagged_deleted(session, {iref.uid})
            copied = await session.uid_copy(uid, target)
            await _expunge_uids(session, {iref.uid})
            return new_id(copied)

        return await self._run(op)

    async def append_sent(self, message: bytes) -> str:
        """APPEND (``\\Seen``) to the ``\\Sent`` special-use folder, else to a folder named
        Sent / Sent Items / Sent Messages / Sent Mail (at the top or directly under INBOX);
        when there is none, CREATE "Sent" where the user's folders go (its personal
        namespace: "INBOX.Sent" on Cyrus). Returns the folder's name."""

        async def op(session: ImapSession) -> str:
            boxes = [b for b in await session.list_mailboxes() if b.selectable]
            sent = next((b for b in boxes if "\\sent" in b.attributes), None)
            if sent is None:
                by_name: dict[str, MailboxInfo] = {}
                for b in boxes:
                    top = _top_name(b.name, b.delimiter)
                    if top is not None:
                        by_name.setdefault(top.casefold(), b)
                sent = next((by_name[n] for n in _SENT_NAMES if n in by_name), None)
            if sent is not None:
                name = sent.name
            else:  # as mail clients do: make one
                name = await session.personal_prefix() + "Sent"
                await session.create(name, "\\Sent")
            await session.append(name, message, ["\\Seen"])
            return name

        return await self._run(op, retry=False)


def imap_reader(
    settings: Settings,
    provider: Provider,
    creds: Credentials,
    pool: SessionPool[ImapSession],
    cache: SummaryCache | None = None,
) -> ImapReader:
    """The reader the API uses for ``protocol=imap``."""
    return ImapReader(settings, provider, creds, pool, cache)


def new_imap_pool(settings: Settings) -> SessionPool[ImapSession]:
    """The app's IMAP session pool (create in the lifespan, ``await close_all()`` at exit)."""
    return SessionPool[ImapSession](settings)
