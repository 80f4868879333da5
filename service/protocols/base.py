"""The two narrow interfaces between the API and the protocol adapters.

``MessageSender`` only sends (SMTP). ``MailboxReader`` reads and deletes (IMAP
or POP3). Every method raises only :mod:`service.errors` classes; an adapter
translates its library's errors once, at its edge.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from typing import Literal, Protocol

from service.ids import MessageRef
from service.mime import PartInfo
from service.models.message import DeleteResult, Folder, MessagePage, MessagePatch


class LoginGuard(Protocol):
    """Told by an adapter about each login it makes with a request's credentials."""

    async def before_login(self) -> None:
        """Just before the credentials go on the wire; RateLimited to send nothing."""
        ...

    async def login_accepted(self) -> None:
        """The server accepted the credentials."""
        ...


class _Unguarded:
    async def before_login(self) -> None:
        return None

    async def login_accepted(self) -> None:
        return None


UNGUARDED: LoginGuard = _Unguarded()


@dataclass(frozen=True)
class Credentials:
    """Mailbox credentials of one request; never stored, never logged.

    Every adapter calls ``guard.before_login()`` right before it sends them in a
    login (LOGIN, AUTHENTICATE, AUTH, USER/PASS) and ``guard.login_accepted()``
    when the server accepted them; a reused session makes no login and no call.
    """

    user: str
    secret: str = field(repr=False)
    kind: Literal["basic", "xoauth2"] = "basic"
    guard: LoginGuard = field(default=UNGUARDED, repr=False, compare=False)

    def pool_key(self, provider: str, protocol: str) -> str:
        """A key for session reuse that does not reveal the secret:
        ``protocol:provider:user:digest``, the user in lower case (its head up to the
        user is the connection budget's key, :func:`~service.protocols.pool.budget_key`:
        servers such as Dovecot find a user whatever the case of its name, and count
        its connections so)."""
        digest = hashlib.sha256(f"{self.kind}\0{self.user}\0{self.secret}".encode()).hexdigest()
        return f"{protocol}:{provider}:{self.user.lower()}:{digest[:32]}"


@dataclass(frozen=True)
class SendOutcome:
    accepted: list[str]
    rejected: dict[str, str]


class MessageSender(Protocol):
    """Sends one message over SMTP."""

    async def send(self, message: bytes, *, mail_from: str, rcpt_to: list[str]) -> SendOutcome:
        """Transmit ``message`` unchanged to ``rcpt_to``.

        Raises AuthRequired/AuthFailed, RecipientRejected (all refused), TooLarge,
        UpstreamError, UpstreamUnavailable, UpstreamTimeout.
        """
        ...


@dataclass(frozen=True)
class ListQuery:
    """What a caller asked to list; filters are None when not given."""

    limit: int = 50
    cursor: str | None = None
    unseen: bool | None = None
    flagged: bool | None = None
    since: date | None = None
    before: date | None = None
    from_: str | None = None
    to: str | None = None
    subject: str | None = None
    text: str | None = None
    count: bool = False


class OpenedMessage(Protocol):
    """One message held open on its session until :meth:`release`."""

    id: str
    folder: str
    size: int
    flags: list[str]
    exact_size: bool
    """True when ``size`` is known to be the exact byte count (IMAP, checked); False when
    it is the server's estimate (POP3 LIST sizes; some servers report sizes loosely)."""

    def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The raw bytes ``[start, end)`` in bounded chunks, never whole in memory."""
        ...

    async def read(self, limit: int) -> bytes:
        """The whole raw message; TooLarge when it exceeds ``limit`` bytes."""
        ...

    async def open_part(self, section: str) -> tuple[PartInfo, AsyncIterator[bytes]] | None:
        """One leaf MIME part by its IMAP section number (an attachment id of the parsed
        fetch, or its text or HTML body's): what its MIME header says, and its bytes as
        the server has them, decoded by their Content-Transfer-Encoding only, in bounded
        chunks, for a message of any size; None when the message has no such leaf (no
        such section, a multipart with parts, a part inside an attached message).
        The message is not parsed whole: IMAP fetches the part alone, POP3 reads the
        message once and stops after the part."""
        ...

    async def check_size(self) -> None:
        """Set :attr:`exact_size` where one cheap round trip can tell (IMAP); only the
        raw download needs it, so only it asks."""
        ...

    async def prepare_remove(self) -> None:
        """Before a mode=remove answer starts: raise (NotSupported, Conflict) if the
        message could not be removed afterwards, so that ``removed: true`` is never
        promised in vain."""
        ...

    async def mark_seen(self) -> None:
        """Set \\Seen (IMAP); NotSupported on POP3."""
        ...

    async def remove(self) -> None:
        """Delete this message on the server, committed when this returns."""
        ...

    async def release(self, *, healthy: bool) -> None:
        """Give the session back (or discard it when not healthy).

        Never deletes anything that :meth:`remove` did not commit: a POP3 session
        that sent no DELE ends without QUIT (there is nothing to commit, and some
        servers expunge other clients' \\Deleted messages at QUIT)."""
        ...


class MailboxReader(Protocol):
    """Reads, lists and deletes mail in one mailbox (IMAP or POP3)."""

    async def verify(self) -> None:
        """Log in (or reuse a logged-in session) and do nothing else: AuthFailed when the
        server refuses the credentials. For routes that might otherwise answer without
        asking the server (no 2xx for refused credentials)."""
        ...

    async def folders(self, *, counts: bool) -> list[Folder]: ...

    async def list_messages(self, folder: str, query: ListQuery) -> MessagePage: ...

    async def open(
        self, ref: MessageRef, *, prefetch: Literal["body", "stream", "structure", "none"] = "body"
    ) -> OpenedMessage:
        """Open one message; NotFound, StaleId, InvalidId (id of the other protocol).

        ``prefetch`` says what the caller reads next, so that the opening round trip can
        bring it along (IMAP): the body's first chunk, or the MIME structure."""
        ...

    async def delete(self, refs: list[MessageRef]) -> list[DeleteResult]:
        """Delete these messages; one result per ref (status 204/404/410/400)."""
        ...

    async def patch(self, ref: MessageRef, patch: MessagePatch) -> str | None:
        """Set flags and/or move (IMAP); the moved message's new id where the server
        names it (IMAP UIDPLUS), else None. NotSupported on POP3."""
        ...

    async def append_sent(self, message: bytes) -> str:
        """APPEND to the \\Sent folder; returns that folder's name (IMAP)."""
        ...
