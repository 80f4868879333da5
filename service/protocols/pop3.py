"""POP3 adapter: the read endpoints over one short POP3 session per request.

POP3 sessions are not pooled: a session sees the maildrop as it was at login,
and DELE marks take effect only at QUIT. Keep mode never sends DELE; remove
mode sends DELE and QUIT only after the response was written. Any failure ends
the session without QUIT, so the server discards every DELE mark.

A message is read with ``TOP n 999999999`` (RFC 1939: a line count past the end of
the body gives the whole message) where the server offers TOP, because RETR makes
servers such as Dovecot set \\Seen; only without TOP is it read with RETR. LIST's
sizes are the server's estimate (GreenMail counts the content only), so a whole
message is streamed to the end of the server's reply, not to LIST's size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from typing import Literal

from service.config import Provider, Settings
from service.errors import (
    AuthFailed,
    BadRequest,
    InvalidId,
    MailboxInUse,
    MailGatewayError,
    NotFound,
    NotSupported,
    TooLarge,
    Upstream,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    scrub,
)
from service.ids import ImapRef, MessageRef, Pop3Ref, decode_cursor, encode_cursor
from service.mime import summary_fields
from service.models.message import (
    AddressOut,
    DeleteResult,
    Folder,
    MessagePage,
    MessagePatch,
    MessageSummary,
)
from service.protocols.base import Credentials, ListQuery
from service.protocols.pop3client import (
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

_IN_USE_RETRIES = (0.2, 0.5, 1.0)
_TOP_MAX_BYTES = 256 * 1024  # a listing's header section; a longer one is cut
_TOP_WHOLE = 999_999_999  # TOP's line count to read a whole message
# IMPLEMENTATION (RFC 2449) of servers whose TOP reply is not dot-stuffed, so that a body
# line "." would end it early: they are read with RETR. Mailpit's RETR sets no flag.
_TOP_NOT_STUFFED = ("mailpit",)
_CURSOR_UIDLS = 10  # the last messages of a page that a cursor names
_CURSOR_UIDL_CHARS = 1500  # and at most this many characters of them (a URL parameter)


def translate(exc: Pop3Error, secrets: tuple[str, ...] = ()) -> MailGatewayError:
    """Map the POP3 client's errors to the gateway's tree, once."""
    up = Upstream("pop3", scrub(exc.reply, secrets)) if exc.reply else None
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
    """Context manager: a logged-in client; errors translated; never QUIT on failure."""

    def __init__(self, reader: Pop3Reader) -> None:
        self._reader = reader
        self.client: Pop3Client | None = None

    async def __aenter__(self) -> Pop3Client:
        self.client = await self._reader.connect()
        return self.client

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.client is None:
            return
        if exc is None:
            try:
                await self.client.quit()
            except Pop3Error as err:
                raise translate(err) from None
        else:
            await self.client.aclose_without_quit()
            if isinstance(exc, Pop3Error):
                raise translate(exc, self._reader.secrets) from None


class Pop3Reader:
    """MailboxReader over POP3 for one request's provider and credentials."""

    protocol: Literal["pop3"] = "pop3"

    def __init__(self, settings: Settings, provider: Provider, creds: Credentials) -> None:
        if provider.pop3 is None:
            raise NotSupported(f"Provider {provider.name!r} has no POP3 server.")
        self._settings = settings
        self._server = provider.pop3
        self._ssl = settings.ssl_context(provider)
        self._creds = creds
        self.secrets = (creds.secret,)

    async def connect(self) -> Pop3Client:
        """A logged-in session; a locked maildrop is retried briefly, then 409."""
        for delay in (*_IN_USE_RETRIES, None):
            try:
                return await self._connect_once()
            except Pop3InUseError as exc:
                if delay is None:
                    raise translate(exc) from None
                await asyncio.sleep(delay)
            except Pop3Error as exc:
                raise translate(exc, self.secrets) from None
        raise AssertionError("unreachable")

    async def _connect_once(self) -> Pop3Client:
        client = await Pop3Client.connect(
            self._server.host,
            self._server.port,
            tls=self._server.security,
            ssl_context=self._ssl,
            timeout=self._settings.command_timeout,
        )
        try:
            if self._creds.kind == "xoauth2":
                await client.auth_xoauth2(self._creds.user, self._creds.secret)
            else:
                await client.login(self._creds.user, self._creds.secret)
        except BaseException as exc:
            await client.aclose_without_quit()
            if isinstance(exc, ValueError):  # CR, LF or NUL: cannot be sent, so refused
                raise AuthFailed("The credentials contain characters POP3 cannot carry.") from None
            raise
        return client

    async def folders(self, *, counts: bool) -> list[Folder]:
        folder = Folder(name="INBOX", delimiter=None, role="inbox")
        if counts:
            async with _Session(self) as client:
                folder.messages, _ = await client.stat()
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
            sizes = await client.list()
            numbers = sorted(uidls, reverse=True)
            below: list[int] = numbers
            if query.cursor is not None:
                start, shown = _cursor_position(query.cursor, uidls)
                below = [n for n in numbers if n < start and uidls[n] not in shown]
            heads = _Heads(client)
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
                summary = _summary(uidls[n], sizes.get(n), await heads.get(n))
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
        cursor = _make_cursor([uidls[n] for n in page], page[-1]) if more else None
        return MessagePage(items=items, next_cursor=cursor, total=total)

    async def open(self, ref: MessageRef) -> Pop3Message:
        uidl = _pop3_ref(ref).uidl
        client = await self.connect()
        try:
            n = _number_of(uidl, await client.uidl())
            # Not "LIST n": some servers (Mailpit) answer it with the whole listing.
            size = (await client.list()).get(n)
            if size is None:
                raise UpstreamError("The POP3 server's LIST lacks a message that UIDL has.")
        except BaseException as exc:
            await client.aclose_without_quit()
            if isinstance(exc, Pop3Error):
                raise translate(exc, self.secrets) from None
            raise
        return Pop3Message(client, ref, n, size, by_top=_reads_by_top(client.capabilities))

    async def delete(self, refs: list[MessageRef]) -> list[DeleteResult]:
        results: list[DeleteResult] = []
        async with _Session(self) as client:
            uidls = {u: n for n, u in (await client.uidl()).items()}
            for ref in refs:
                if isinstance(ref, ImapRef):
                    results.append(DeleteResult(id=ref.encode(), status=400, code="invalid-id"))
                elif ref.uidl not in uidls:
                    results.append(DeleteResult(id=ref.encode(), status=404, code="not-found"))
                else:
                    await client.dele(uidls[ref.uidl])
                    results.append(DeleteResult(id=ref.encode(), status=204))
        return results  # QUIT succeeded: the DELE marks are committed

    async def patch(self, ref: MessageRef, patch: MessagePatch) -> None:
        raise NotSupported("POP3 has no flags or folders.")

    async def append_sent(self, message: bytes) -> str:
        raise NotSupported("POP3 cannot store messages.")


class Pop3Message:
    """One message on its own POP3 session, until release().

    Its bytes are those of ``TOP n 999999999`` where the server offers TOP (no \\Seen on
    Dovecot, unlike RETR), else RETR's: the same bytes on a server that follows RFC 1939.
    """

    exact_size = False  # LIST's size is the server's estimate, not the bytes it sends

    def __init__(
        self, client: Pop3Client, ref: MessageRef, number: int, size: int, *, by_top: bool
    ) -> None:
        self._client = client
        self._number = number
        self._by_top = by_top
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

    async def open_part(self, section: str) -> tuple[bytes, AsyncIterator[bytes]] | None:
        raise TooLarge("POP3 cannot fetch one part alone: the message is over the size limit.")

    async def prepare_remove(self) -> None:
        """Nothing to check: DELE + QUIT removes exactly this message."""

    async def mark_seen(self) -> None:
        raise NotSupported("POP3 has no flags.")

    async def remove(self) -> None:
        """DELE then QUIT: the deletion is committed when this returns."""
        try:
            await self._client.dele(self._number)
            self._done = True
            await self._client.quit()
        except Pop3Error as exc:
            await self._client.aclose_without_quit()
            raise translate(exc) from None

    async def release(self, *, healthy: bool) -> None:
        if self._done:
            return
        self._done = True
        if healthy:
            with contextlib.suppress(Pop3Error):
                await self._client.quit()  # keep mode: no DELE was sent
                return
        await self._client.aclose_without_quit()


class _Heads:
    """Header sections by message number: TOP n 0 (cut at the limit), or RETR where the
    server has no TOP (such a server may mark the message seen)."""

    def __init__(self, client: Pop3Client) -> None:
        self._client = client
        self._use_top = not client.capabilities or "TOP" in client.capabilities

    async def get(self, n: int) -> bytes:
        if self._use_top:
            try:
                return await self._client.top(n, 0, max_bytes=_TOP_MAX_BYTES, truncate=True)
            except Pop3NoSuchMessage:
                self._use_top = False  # TOP is optional (RFC 1939): read the message
        return await _head_by_retr(self._client, n)


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


def _make_cursor(page_uidls: list[str], last: int) -> str:
    """A cursor naming the page's last (oldest) messages, oldest last, and the number of
    the oldest; a few, so that it survives their deletion, and short (a URL parameter)."""
    recent: list[str] = []
    chars = 0
    for uidl in reversed(page_uidls[-_CURSOR_UIDLS:]):
        chars += len(uidl)
        if chars > _CURSOR_UIDL_CHARS:
            break
        recent.insert(0, uidl)
    return encode_cursor({"p": 1, "u": recent, "n": last})


def _cursor_position(token: str, uidls: dict[int, str]) -> tuple[int, frozenset[str]]:
    """Where the next page starts: below this message number, skipping these UIDLs.

    Messages keep their arrival order, so the next page continues below the oldest of
    the cursor's messages still present. When all of them were deleted, older
    messages can only have moved down: below the cursor's stored number.
    """
    data = decode_cursor(token)
    recent, number = data.get("u"), data.get("n")
    if isinstance(recent, str):  # the form of a cursor from an earlier version
        recent = [recent]
    if (
        data.get("p") != 1
        or not isinstance(recent, list)
        or len(recent) > _CURSOR_UIDLS
        or not all(isinstance(u, str) for u in recent)
        or type(number) is not int
        or number < 1
    ):
        raise BadRequest("The cursor is not a POP3 cursor.")
    shown = frozenset(recent)
    numbers = {u: n for n, u in uidls.items()}
    for uidl in reversed(recent):  # the oldest first
        if uidl in numbers:
            return numbers[uidl], shown
    return min(number, len(uidls) + 1), shown


def _summary(uidl: str, size: int | None, head: bytes) -> MessageSummary:
    fields = summary_fields(head)

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
