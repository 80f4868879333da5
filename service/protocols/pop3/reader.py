"""POP3 adapter: the read endpoints over one short POP3 session per request.

POP3 sessions are not reused (a session's view of the maildrop is fixed at login), but
every one counts against the mailbox's connection budget (:class:`SessionPool`
``acquire_slot``): at most ``pool_size_per_user`` per user and pod, waiting a bounded time
for room, so concurrent requests never exceed the server's per-user limit (Dovecot: 10
per user, IP and protocol). DELE marks take effect only at QUIT, so QUIT is sent
only to commit a DELE: by ``Pop3Message.remove()`` (mode=remove, once the response was
written) and by ``delete()``. Every other session (listing, folders, keep-mode reads, a
message released without removal) ends without QUIT: with nothing to commit, RFC 1939's
UPDATE state is not needed, and some servers' QUIT does more than commit this session's
marks (GreenMail's expunges every \\Deleted message of INBOX, also those flagged by an
IMAP client).

Any failure ends the session without QUIT. An RFC 1939 server then discards the DELE
marks; for servers that keep them (GreenMail stores them as \\Deleted flags, which a later
QUIT of any session would expunge), RSET is sent first, best effort, before the
connection is dropped (``Pop3Client.aclose_without_quit``).

Message numbers are not trusted across time: some servers (GreenMail) do not lock the
maildrop and number the live list, so another session's QUIT can shift them. A DELE
uses the number that a UIDL listing of the same session gave right before it.

A message is read with ``TOP n 999999999`` (RFC 1939: a line count past the end of
the body gives the whole message) where the server offers TOP, because RETR makes
servers such as Dovecot set \\Seen; only without TOP is it read with RETR. LIST's
sizes are the server's estimate (GreenMail counts the content only), so a whole
message is streamed to the end of the server's reply, not to LIST's size.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from typing import Literal

from service import mime
from service.config import Provider, Settings
from service.errors import (
    AuthFailed,
    CannotCalculateChanges,
    InvalidId,
    MailboxInUse,
    MailGatewayError,
    NotFound,
    NotSupported,
    StaleId,
    TooLarge,
    Upstream,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    ValidationFailed,
    scrub,
)
from service.ids import MessageRef, Pop3Ref, decode_cursor, encode_cursor
from service.mime import Limits, PartCutter, PartInfo, needs_declared_charset, summary_fields
from service.models.message import (
    AddressOut,
    DeleteResult,
    Folder,
    MessagePage,
    MessagePatch,
    MessageSummary,
)
from service.protocols.base import Credentials, ListQuery
from service.protocols.parts import cut_from
from service.protocols.pool import PooledSession, SessionPool, Slot, is_connection_limit
from service.protocols.pop3.client import (
    Pop3AuthError,
    Pop3Client,
    Pop3ConnectError,
    Pop3DisconnectedError,
    Pop3Error,
    Pop3InUseError,
    Pop3NoSuchMessage,
    Pop3TempError,
    Pop3TimeoutError,
    Pop3TLSError,
)
from service.sync.source import Change, ChangePage
from service.sync.state import Pop3State, decode_state, mailbox_tag, uidl_digest

log = logging.getLogger("mailgate")
_IN_USE_RETRIES = (0.2, 0.5, 1.0)
_TOP_MAX_BYTES = 256 * 1024  # a listing's header section; a longer one is cut
_TOP_WHOLE = 999_999_999  # TOP's line count to read a whole message
_DECLARED_LINES = 200  # body lines read for a declared charset (see _Heads.get)
# IMPLEMENTATION (RFC 2449) of servers whose TOP reply is not dot-stuffed, so that a body
# line "." would end it early: they are read with RETR. Mailpit's RETR sets no flag.
_TOP_NOT_STUFFED = ("mailpit",)
_CURSOR_PAGE_MAX = 200  # a cursor names every message of its page, at most this many
_CURSOR_ANCHORS = 8  # and this many neighbours of the page on either side
_LEGACY_CURSOR_UIDLS = 10  # the UIDLs a cursor of the earlier form (p=1) carried


def translate(exc: Pop3Error, secrets: tuple[str, ...] = ()) -> MailGatewayError:
    """Map the POP3 client's errors to the gateway's tree, once."""
    up = Upstream("pop3", scrub(exc.reply, secrets)) if exc.reply else None
    if isinstance(exc, Pop3InUseError | Pop3TempError) and is_connection_limit(
        UpstreamUnavailable(upstream=up)
    ):
        return UpstreamUnavailable(
            "The POP3 server refused one more connection for this user (its per-user "
            "limit is taken by the user's other clients).",
            upstream=up,
            retry_after=2,
        )
    if isinstance(exc, Pop3InUseError):
        return MailboxInUse("The maildrop is locked by another POP3 session.", upstream=up)
    if isinstance(exc, Pop3AuthError):
        return AuthFailed("The POP3 server refused the credentials.")
    if isinstance(exc, Pop3TimeoutError):
        return UpstreamTimeout("The POP3 server did not answer in time.")
    if isinstance(exc, Pop3ConnectError):
        return UpstreamUnavailable("Cannot connect to the POP3 server.")
    if isinstance(exc, Pop3TempError):
        return UpstreamUnavailable("The POP3 server failed temporarily.", upstream=up)
    if isinstance(exc, Pop3TLSError):
        return UpstreamError("TLS with the POP3 server failed.", upstream=up)
    if isinstance(exc, Pop3DisconnectedError):
        return UpstreamError("The POP3 server closed the connection.", upstream=up)
    if isinstance(exc, Pop3NoSuchMessage):
        return NotFound("No such message.", upstream=up)
    return UpstreamError("The POP3 server broke the protocol or refused.", upstream=up)


class _Session:
    """Context manager: a logged-in client in a slot of the mailbox's budget; errors
    translated. It never sends QUIT: a caller that must commit DELE marks calls
    ``client.quit()`` itself."""

    def __init__(self, reader: Pop3Reader) -> None:
        self._reader = reader
        self._slot: Slot[Pop3Client] | None = None

    async def __aenter__(self) -> Pop3Client:
        self._slot = await self._reader.connect()
        return self._slot.value

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._slot is None:
            return
        try:
            await self._slot.value.aclose_without_quit()  # after quit(): already closed
        except Exception as cleanup:  # never let the clean-up change a finished answer
            log.warning("closing a POP3 session failed: %s", type(cleanup).__name__)
        finally:
            self._reader.pool.release_slot(self._slot)
        if isinstance(exc, Pop3Error):
            raise translate(exc, self._reader.secrets) from None


class Pop3Reader:
    """MailboxReader over POP3 for one request's provider and credentials."""

    protocol: Literal["pop3"] = "pop3"

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        creds: Credentials,
        pool: SessionPool[PooledSession],
    ) -> None:
        if provider.pop3 is None:
            raise NotSupported(f"Provider {provider.name!r} has no POP3 server.")
        self.settings = settings
        self._server = provider.pop3
        self._ssl = settings.ssl_context(provider, "pop3")
        self._creds = creds
        self.secrets = (creds.secret,)
        self.pool = pool
        self.key = creds.pool_key(provider.name, "pop3")
        self.mailbox = mailbox_tag(provider.name, creds.user)

    async def connect(self) -> Slot[Pop3Client]:
        """A logged-in session in a slot of the mailbox's connection budget (give it back
        with ``pool.release_slot`` once the session is closed). A locked maildrop is
        retried briefly, then 409; no room in the budget within the wait: 503."""
        return await self.pool.acquire_slot(self.key, self._login_retrying_lock)

    async def _login_retrying_lock(self) -> Pop3Client:
        for delay in (*_IN_USE_RETRIES, None):
            try:
                return await self._connect_once()
            except Pop3Error as exc:
                error = translate(exc, self.secrets)
                if not isinstance(error, MailboxInUse) or delay is None:
                    raise error from None
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _connect_once(self) -> Pop3Client:
        client = await Pop3Client.connect(
            self._server.host,
            self._server.port,
            tls=self._server.security,
            ssl_context=self._ssl,
            timeout=self.settings.command_timeout,
        )
        try:
            await self._creds.guard.before_login()
            if self._creds.kind == "xoauth2":
                await client.auth_xoauth2(self._creds.user, self._creds.secret)
            else:
                await client.login(self._creds.user, self._creds.secret)
            await self._creds.guard.login_accepted()
        except BaseException as exc:
            await client.aclose_without_quit()
            if isinstance(exc, ValueError):  # CR, LF or NUL: cannot be sent, so refused
                raise AuthFailed("The credentials contain characters POP3 cannot carry.") from None
            raise
        return client

    async def verify(self) -> None:
        async with _Session(self):
            pass

    async def folders(self, *, counts: bool) -> list[Folder]:
        """One folder, INBOX, with its sync state (one UIDL) and, if asked, its count."""
        folder = Folder(name="INBOX", delimiter=None, role="inbox")
        async with _Session(self) as client:
            uidls = await client.uidl()
        folder.state = _state(uidls, mailbox=self.mailbox).encode()
        if counts:
            folder.messages = len(uidls)
        return [folder]

    async def list_messages(self, folder: str, query: ListQuery) -> MessagePage:
        """Newest first (highest message number). Filters that the headers answer
        (from, to, subject, since, before: by the Date header) read the headers of
        each message until the page is full; unseen, flagged and text answer 422."""
        _inbox_only(folder)
        if query.unseen is not None or query.flagged is not None or query.text is not None:
            raise NotSupported(
                "POP3 has no flags and no body search: unseen, flagged and text need IMAP."
            )
        wanted = _header_filter(query)
        async with _Session(self) as client:
            uidls = await client.uidl()
            state = _state(uidls, mailbox=self.mailbox)
            sizes = await client.list()
            numbers = sorted(uidls, reverse=True)
            below: list[int] = numbers
            if query.cursor is not None:
                below = _after_cursor(query.cursor, uidls)
            heads = _Heads(client)
            if wanted is None:  # the page is known: its headers in one round trip
                await heads.prefetch(below[: query.limit])
            total: int | None = len(uidls) if query.count and wanted is None else None
            page: list[int] = []
            items: list[MessageSummary] = []
            more = False
            scan = numbers if (query.count and wanted is not None) else below
            in_page = set(below)
            matched = 0
            for n in scan:
                if wanted is None and len(page) >= query.limit:
                    more = True
                    break
                try:
                    head = await heads.get(n)
                except Pop3NoSuchMessage:  # expunged by another session meanwhile
                    continue
                summary = _summary(uidls[n], sizes.get(n), *head)
                if wanted is not None and not wanted(summary):
                    continue
                matched += 1
                if n in in_page:
                    if len(page) < query.limit:
                        page.append(n)
                        items.append(summary)
                    else:
                        more = True
                        if not query.count:
                            break
            if query.count and wanted is not None:
                total = matched
        cursor = _make_cursor(page, uidls) if more else None
        return MessagePage(items=items, next_cursor=cursor, total=total, state=state.encode())

    async def open(
        self, ref: MessageRef, *, prefetch: Literal["body", "stream", "structure", "none"] = "body"
    ) -> Pop3Message:
        """Open one message on a session of its own (held until release: a POP3 read
        cannot resume); ``prefetch`` changes nothing here."""
        uidl = _pop3_ref(ref).uidl
        slot = await self.connect()
        client = slot.value
        try:
            n = _number_of(uidl, await client.uidl())
            # Not "LIST n": some servers (Mailpit) answer it with the whole listing.
            size = (await client.list()).get(n)
            if size is None:
                raise UpstreamError("The POP3 server's LIST lacks a message that UIDL has.")
        except BaseException as exc:
            try:
                await client.aclose_without_quit()
            finally:
                self.pool.release_slot(slot)
            if isinstance(exc, Pop3Error):
                raise translate(exc, self.secrets) from None
            raise
        return Pop3Message(
            self.pool, slot, ref, uidl, n, size, by_top=_reads_by_top(client.capabilities),
            limits=self.settings.mime_limits,
        )  # fmt: skip

    async def delete(self, refs: list[MessageRef]) -> list[DeleteResult]:
        """One result per ref, in order. Each UIDL is DELE'd once (duplicates share its
        result), by the number of a UIDL listing taken right before the DELEs; a DELE
        answered -ERR (already deleted, e.g. Dovecot's "Message is deleted.") is that id's
        404 and the others go on. QUIT commits the marks only when a DELE succeeded. If
        the session fails midway, the marks are withdrawn (RSET, best effort) and the
        error is raised: nothing of the batch was committed."""
        outcome: dict[str, tuple[int, str | None]] = {}
        async with _Session(self) as client:
            wanted = {ref.uidl for ref in refs if isinstance(ref, Pop3Ref)}
            numbers = {u: n for n, u in (await client.uidl()).items()} if wanted else {}
            marked = False
            for uidl in dict.fromkeys(r.uidl for r in refs if isinstance(r, Pop3Ref)):
                if uidl not in numbers:
                    outcome[uidl] = (404, "not-found")
                    continue
                try:
                    await client.dele(numbers[uidl])
                except Pop3NoSuchMessage:  # -ERR for this message alone: the session goes on
                    outcome[uidl] = (404, "not-found")
                    continue
                outcome[uidl] = (204, None)
                marked = True
            if marked:
                await client.quit()  # the DELE marks are committed when this returns
        results: list[DeleteResult] = []
        for ref in refs:
            if isinstance(ref, Pop3Ref):
                status, code = outcome[ref.uidl]
                results.append(DeleteResult(id=ref.encode(), status=status, code=code))
            else:
                results.append(DeleteResult(id=ref.encode(), status=400, code="invalid-id"))
        return results

    async def changes(self, folder: str, since: str, limit: int) -> ChangePage:
        """Arrivals since ``since``: the messages after an unchanged UIDL prefix, the
        oldest ``limit`` of them (events oldest first; ``/changes`` lists them newest
        first). A maildrop whose first messages are not those of the state (one was
        deleted) answers 410 CannotCalculateChanges: POP3 cannot say more."""
        _inbox_only(folder)
        state = decode_state(since, protocol="pop3", folder="INBOX", mailbox=self.mailbox)
        assert isinstance(state, Pop3State)  # noqa: S101 - decode_state checked the protocol
        async with _Session(self) as client:
            uidls = await client.uidl()
            numbers = sorted(uidls)
            if (
                len(numbers) < state.count
                or _state(uidls, state.count, mailbox=self.mailbox).digest != state.digest
            ):
                raise CannotCalculateChanges(
                    "Messages were deleted from the maildrop since this state: POP3 cannot "
                    "say which. List it again."
                )
            new = numbers[state.count : state.count + limit]
            changes: list[Change] = []
            if new:
                sizes = await client.list()
                heads = _Heads(client)
                for i, n in enumerate(new, state.count + 1):
                    try:
                        head = await heads.get(n)
                    except Pop3NoSuchMessage:  # expunged by another session meanwhile
                        raise CannotCalculateChanges(
                            "A message was deleted from the maildrop while it was read: "
                            "POP3 cannot say more. List it again."
                        ) from None
                    summary = _summary(uidls[n], sizes.get(n), *head)
                    changes.append(
                        Change("created", summary, _state(uidls, i, mailbox=self.mailbox).encode())
                    )
        reached = _state(uidls, state.count + len(new), mailbox=self.mailbox)
        more = len(numbers) > state.count + len(new)
        return ChangePage(since, reached.encode(), more, changes, oldest_first=True)

    async def state(self, folder: str) -> str:
        """The maildrop's current state (one UIDL)."""
        _inbox_only(folder)
        async with _Session(self) as client:
            return _state(await client.uidl(), mailbox=self.mailbox).encode()

    def feed(self, folder: str) -> Pop3Feed:
        """The /events feed: a short session every ``events_poll_seconds``."""
        _inbox_only(folder)
        return Pop3Feed(self)

    async def patch(self, ref: MessageRef, patch: MessagePatch) -> str | None:
        raise NotSupported("POP3 has no flags or folders.")

    async def append_sent(self, message: bytes) -> str:
        raise NotSupported("POP3 cannot store messages.")


class Pop3Feed:
    """A :class:`~service.sync.source.ChangeFeed` for POP3: polling, one short session
    per poll (a held session would lock the maildrop for every other client)."""

    def __init__(self, reader: Pop3Reader) -> None:
        self.key = f"{reader.key}\0INBOX"
        self.folder = "INBOX"
        self.mailbox = reader.mailbox
        self._reader = reader

    async def open(self) -> str:
        return await self._reader.state("INBOX")

    async def changes(self, since: str, limit: int) -> ChangePage:
        return await self._reader.changes("INBOX", since, limit)

    async def wait(self, wake: asyncio.Event) -> bool:
        try:
            async with asyncio.timeout(self._reader.settings.events_poll_seconds):
                await wake.wait()
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        """Nothing is held between polls."""


class Pop3Message:
    """One message on its own POP3 session, until release().

    Its bytes are those of ``TOP n 999999999`` where the server offers TOP (no \\Seen on
    Dovecot, unlike RETR), else RETR's: the same bytes on a server that follows RFC 1939.
    """

    exact_size = False  # LIST's size is the server's estimate, not the bytes it sends

    def __init__(
        self,
        pool: SessionPool[PooledSession],
        slot: Slot[Pop3Client],
        ref: MessageRef,
        uidl: str,
        number: int,
        size: int,
        *,
        by_top: bool,
        limits: Limits,
    ) -> None:
        self._pool = pool
        self._slot = slot
        self._client = slot.value
        self._uidl = uidl
        self._number = number
        self._by_top = by_top
        self._limits = limits
        self._unread: AsyncGenerator[bytes, None] | None = None
        self._done = False
        self.id = ref.encode()
        self.folder = "INBOX"
        self.size = size
        self.flags: list[str] = []

    async def _body(self) -> AsyncGenerator[bytes, None]:
        """The whole message as the server sends it; ends once its reply has ended."""
        if self._by_top:
            started = False
            try:
                top = self._client.top_stream(self._number, _TOP_WHOLE)
                async with contextlib.aclosing(top) as body:
                    async for chunk in body:
                        started = True
                        yield chunk
                return
            except Pop3NoSuchMessage:  # -ERR: TOP is optional (RFC 1939); the session is fine
                if started:
                    raise
                self._by_top = False
        # Without TOP, RETR: servers like Dovecot and GreenMail then set \Seen.
        async with contextlib.aclosing(self._client.retr(self._number)) as body:
            async for chunk in body:
                yield chunk

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The message's bytes ``[start, end)`` as the server sends them, as they arrive.

        ``end`` None: every byte, however many LIST announced; this returns only once
        the server's reply has ended with its "." line, so a reply cut short raises (the
        download fails and mode=remove never commits). With ``end`` (an HTTP Range,
        measured against LIST's size): stop there; a reply shorter than ``end`` raises
        rather than short-change the range.
        """
        pos = 0
        try:
            async with contextlib.aclosing(self._body()) as body:
                async for chunk in body:
                    lo = max(start - pos, 0)
                    hi = len(chunk) if end is None else min(end - pos, len(chunk))
                    pos += len(chunk)
                    if lo < hi:
                        yield chunk[lo:hi]
                    if end is not None and pos >= end:
                        break  # the reply may go on: leaving it unread drops the session
        except Pop3Error as exc:
            raise translate(exc) from None
        if end is not None and pos < end:
            raise UpstreamError("The POP3 server sent fewer bytes than the range needs.")

    async def read(self, limit: int) -> bytes:
        """The whole message as the server sends it (not cut to LIST's size), at most
        ``limit`` bytes."""
        if self.size > limit:
            raise TooLarge(f"The message is over {limit} bytes: fetch /raw instead.")
        out = bytearray()
        try:
            async with contextlib.aclosing(self._body()) as body:
                async for chunk in body:
                    out += chunk
                    if len(out) > limit:
                        raise TooLarge(f"The message is over {limit} bytes: fetch /raw instead.")
        except Pop3Error as exc:
            raise translate(exc) from None
        return bytes(out)

    async def open_part(self, section: str) -> tuple[PartInfo, AsyncIterator[bytes]] | None:
        """One leaf part by its section (a parsed fetch's attachment or body id), whatever
        the message's size: the message streams once past
        :class:`~service.mime.PartCutter`, and reading stops after the part. None when
        the message has no such leaf. The rest of the reply is read only by
        :meth:`remove` (the session must be in step for DELE); otherwise the session
        is dropped at :meth:`release`."""
        cutter = PartCutter(section, self._limits)
        self._unread = body = _translated(self._body())
        return await cut_from(cutter, body, close=False)

    async def check_size(self) -> None:
        """LIST's size cannot be checked without reading the message: it stays an estimate."""

    async def prepare_remove(self) -> None:
        """Nothing to check: remove() finds this message by its UIDL, DELE + QUIT."""

    async def mark_seen(self) -> None:
        raise NotSupported("POP3 has no flags.")

    async def remove(self) -> None:
        """UIDL, DELE then QUIT: the deletion is committed when this returns.

        The number found at open() may be stale by now: a server that numbers the live
        list (GreenMail) shifts numbers when another session's QUIT removes messages. So
        the number is taken from a fresh UIDL listing of this session; a UIDL that is gone
        raises NotFound without any DELE (the message is gone anyway).
        """
        self._done = True
        try:
            if self._unread is not None:  # the rest of a reply a part download left unread
                async for _ in self._unread:
                    pass
                self._unread = None
            number = _number_of(self._uidl, await self._client.uidl())
            await self._client.dele(number)
            await self._client.quit()
        except BaseException as exc:
            await self._client.aclose_without_quit()  # RSET first if the DELE may have marked
            if isinstance(exc, Pop3Error):
                raise translate(exc) from None
            raise
        finally:
            self._pool.release_slot(self._slot)

    async def release(self, *, healthy: bool) -> None:
        """End the session without QUIT: no DELE was sent, nothing is to be committed."""
        if self._done:
            return
        self._done = True
        try:
            unread, self._unread = self._unread, None
            if unread is not None:
                with contextlib.suppress(Exception):
                    await unread.aclose()  # mid-reply: the session is dropped, as wanted
            await self._client.aclose_without_quit()
        except Exception as cleanup:  # the answer is written: nothing to change there
            log.warning("closing a POP3 session failed: %s", type(cleanup).__name__)
        finally:
            self._pool.release_slot(self._slot)


class _Heads:
    """Header sections by message number: TOP n 0 (cut at the limit), or RETR where the
    server has no TOP (such a server may mark the message seen)."""

    def __init__(self, client: Pop3Client) -> None:
        self._client = client
        self._use_top = not client.capabilities or "TOP" in client.capabilities
        self._ready: dict[int, bytes] = {}

    async def prefetch(self, numbers: list[int]) -> None:
        """Read these headers in one go (pipelined where the server offers PIPELINING)."""
        if self._use_top and len(numbers) > 1:
            found = await self._client.tops(numbers, max_bytes=_TOP_MAX_BYTES)
            self._ready.update((n, head) for n, head in found.items() if head is not None)

    async def get(self, n: int) -> tuple[bytes, str | None]:
        """The header section, and the charset the message declares when the listing
        needs it (:func:`~service.mime.needs_declared_charset`: raw 8-bit bytes in a
        multipart's header); that is looked for in the first
        ``_DECLARED_LINES`` lines of the body only, and only where TOP works.

        Raises Pop3NoSuchMessage when message ``n`` is gone (expunged by another
        session since this one's UIDL)."""
        head: bytes | None = self._ready.pop(n, None)
        if head is None and self._use_top:
            try:
                head = await self._client.top(n, 0, max_bytes=_TOP_MAX_BYTES, truncate=True)
            except Pop3NoSuchMessage:
                # TOP is optional (RFC 1939), or another session expunged the message
                # ("-ERR Message 2 expunged."): RETR tells which, as it fails too when the
                # message is gone (then TOP stays: RETR sets \Seen on Dovecot).
                head = await _head_by_retr(self._client, n)
                self._use_top = False
                return head, None
        if head is not None:
            if not needs_declared_charset(head):
                return head, None
            more = await self._client.top(
                n, _DECLARED_LINES, max_bytes=_TOP_MAX_BYTES, truncate=True
            )
            parts = mime.MimeScanner(Limits())
            parts.feed(more, final=True)
            return head, mime.declared_charset(parts.headers_done)
        return await _head_by_retr(self._client, n), None


def _header_filter(query: ListQuery) -> Callable[[MessageSummary], bool] | None:
    """IMAP SEARCH's header criteria, applied to a summary (substrings match
    case-insensitively; since/before compare the Date header's own calendar day)."""
    texts = {"from": query.from_, "to": query.to, "subject": query.subject}
    if all(v is None for v in texts.values()) and query.since is None and query.before is None:
        return None

    def addresses(found: list[AddressOut]) -> str:
        return " ".join(f"{a.get('name') or ''} <{a['address']}>" for a in found)

    def ok(summary: MessageSummary) -> bool:
        values = {
            "from": addresses(summary.from_),
            "to": addresses(summary.to),
            "subject": summary.subject or "",
        }
        for key, needle in texts.items():
            if needle is not None and needle.casefold() not in values[key].casefold():
                return False
        if query.since is not None or query.before is not None:
            if summary.date is None:
                return False
            day = datetime.fromisoformat(summary.date).date()
            if query.since is not None and day < query.since:
                return False
            if query.before is not None and day >= query.before:
                return False
        return True

    return ok


async def _head_by_retr(client: Pop3Client, n: int) -> bytes:
    """The header section of message ``n`` for a server without TOP: RETR, keep the head.

    RETR is all such a server offers; some (GreenMail) then set \\Seen on the message.
    """
    head = bytearray()
    done = False
    async with contextlib.aclosing(client.retr(n)) as body:
        async for chunk in body:
            if not done:
                head += chunk
                cut = head.find(b"\r\n\r\n")
                if cut >= 0 or len(head) > _TOP_MAX_BYTES:
                    del head[cut + 4 if cut >= 0 else _TOP_MAX_BYTES :]
                    done = True
    return bytes(head)


def _reads_by_top(capabilities: dict[str, list[str]]) -> bool:
    """Whether to read whole messages with TOP: offered in CAPA, or no CAPA at all (then
    tried, and RETR after -ERR); never where TOP's reply is known not to be dot-stuffed."""
    implementation = " ".join(capabilities.get("IMPLEMENTATION", [])).lower()
    if implementation.startswith(_TOP_NOT_STUFFED):
        return False
    return not capabilities or "TOP" in capabilities


async def _translated(body: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """``body`` with the POP3 client's errors translated to the gateway's; closing this
    closes ``body`` (mid-reply, that drops the session)."""
    try:
        async for chunk in body:
            yield chunk
    except Pop3Error as exc:
        raise translate(exc) from None
    finally:
        await body.aclose()


def _state(uidls: dict[int, str], count: int | None = None, *, mailbox: str) -> Pop3State:
    """The state of ``mailbox``'s first ``count`` messages (all by default) in number
    order."""
    seq = [uidls[n] for n in sorted(uidls)]
    if count is not None:
        seq = seq[:count]
    return Pop3State(len(seq), uidl_digest(seq), mailbox=mailbox)


def _inbox_only(folder: str) -> None:
    if folder.upper() != "INBOX":
        raise NotFound("POP3 has one folder, INBOX.")


def _pop3_ref(ref: MessageRef) -> Pop3Ref:
    if not isinstance(ref, Pop3Ref):
        raise InvalidId("This id is an IMAP id; use protocol=imap.")
    return ref


def _number_of(uidl: str, uidls: dict[int, str]) -> int:
    for n, u in uidls.items():
        if u == uidl:
            return n
    raise NotFound("No such message in the maildrop.")


def _uidl_hash(uidl: str) -> bytes:
    """4 bytes that name a UIDL in a cursor: a page of 200 packs into about 1 KB."""
    return hashlib.sha256(uidl.encode("utf-8", "surrogateescape")).digest()[:4]


def _pack(uidls: list[str]) -> str:
    return base64.b64encode(b"".join(_uidl_hash(u) for u in uidls)).decode("ascii")


def _unpack(value: object, most: int) -> frozenset[bytes]:
    if not isinstance(value, str) or len(value) > (most * 4 + 2) // 3 * 4:
        raise ValidationFailed("The cursor is not a POP3 cursor.")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("The cursor is not a POP3 cursor.") from None
    if len(raw) % 4 or len(raw) > most * 4:
        raise ValidationFailed("The cursor is not a POP3 cursor.")
    return frozenset(raw[i : i + 4] for i in range(0, len(raw), 4))


def _make_cursor(page: list[int], uidls: dict[int, str]) -> str:
    """A cursor after ``page`` (message numbers, newest first): the number ``n`` of its
    last (oldest) item, a 4-byte hash of EVERY UIDL on the page, and of the few messages
    right below it ("o": the next older ones) and right above it ("e": newer ones), as
    numbered now. About 1.1 KB of hashes for a page of 200 (a URL parameter)."""
    first, last = page[0], page[-1]
    older = [uidls[k] for k in range(last - 1, last - 1 - _CURSOR_ANCHORS, -1) if k in uidls]
    newer = [uidls[k] for k in range(first + 1, first + 1 + _CURSOR_ANCHORS) if k in uidls]
    return encode_cursor(
        {
            "p": 2,
            "n": last,
            "h": _pack([uidls[k] for k in page]),
            "o": _pack(older),
            "e": _pack(newer),
        }
    )


def _after_cursor(token: str, uidls: dict[int, str]) -> list[int]:
    """The message numbers of the pages after the cursor's, newest first.

    Message numbers only shrink (when messages are deleted) and new messages get
    higher numbers, so every message older than the page's last item still has a number
    below that item's number ``n`` then, and the mailbox keeps its arrival order. So the
    next pages are the messages numbered below ``n`` whose UIDL hash is not one of the
    page's: page items that moved below ``n`` (messages below them were deleted) are
    left out by hash.

    Deletions can also move messages newer than the page (earlier pages) below ``n``;
    no hash names them. The neighbours in the cursor bound this: the newest of the next
    older messages ("o") still present, and everything below it, is older than the page
    (the older messages above it were deleted); where none is left, everything below
    the lowest page item or newer neighbour ("e") still present is older than the page.
    When all of them are gone, nothing separates earlier pages from older messages:
    410 stale-id (list again), never a repeat. A cursor of the earlier
    form (``p`` 1: the page's last few UIDLs and ``n``) is read the same way, with
    those UIDLs as the page and no neighbours.
    """
    data = decode_cursor(token)
    number = data.get("n")
    if type(number) is not int or number < 1:
        raise ValidationFailed("The cursor is not a POP3 cursor.")
    if data.get("p") == 2:
        page = _unpack(data.get("h"), _CURSOR_PAGE_MAX)
        older = _unpack(data.get("o"), _CURSOR_ANCHORS)
        newer = _unpack(data.get("e"), _CURSOR_ANCHORS)
    elif data.get("p") == 1:
        recent = data.get("u")
        if isinstance(recent, str):  # the form of a cursor from a still earlier version
            recent = [recent]
        if (
            not isinstance(recent, list)
            or len(recent) > _LEGACY_CURSOR_UIDLS
            or not all(isinstance(u, str) for u in recent)
        ):
            raise ValidationFailed("The cursor is not a POP3 cursor.")
        page, older, newer = frozenset(_uidl_hash(u) for u in recent), frozenset(), frozenset()
    else:
        raise ValidationFailed("The cursor is not a POP3 cursor.")
    below = [(k, _uidl_hash(uidls[k])) for k in sorted(uidls, reverse=True) if k < number]
    bound = number
    anchor = next((k for k, h in below if h in older), None)
    if anchor is not None:
        bound = anchor + 1
    else:
        ours = [k for k, h in below if h in page or h in newer]
        if ours:
            bound = min(ours)
        elif not any(_uidl_hash(u) in page or _uidl_hash(u) in newer for u in uidls.values()):
            # The page, its older and its newer neighbours are all gone: nothing tells
            # earlier pages (or new mail) from older messages any more. Say so rather
            # than risk showing a message twice.
            raise StaleId(
                "The maildrop changed too much since this cursor (every message around "
                "it was deleted); list again from the start."
            )
    return [k for k, h in below if k < bound and h not in page]


def _summary(uidl: str, size: int | None, head: bytes, assumed: str | None) -> MessageSummary:
    fields = summary_fields(head, assumed=assumed)

    def addrs(key: str) -> list[AddressOut]:
        value = fields.get(key)
        return list(value) if isinstance(value, list) else []

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) else None

    return MessageSummary.model_construct(
        None,
        **{
            "id": Pop3Ref(uidl).encode(),
            "folder": "INBOX",
            "uidl": uidl,
            "message_id": text("message_id"),
            "subject": text("subject"),
            "from": addrs("from"),
            "to": addrs("to"),
            "cc": addrs("cc"),
            "date": text("date"),
            "size": size,
            "flags": [],
            "seen": None,
            "has_attachments": bool(fields.get("has_attachments")),
        },
    )
