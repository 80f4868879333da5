"""One IMAP session over aioimaplib 2.0.3: TLS, login and typed commands, errors mapped once.

aioimaplib gives us the line/literal framing (``IMAP4ClientProtocol``) and the
``Command`` objects; this module fixes what was measured to break in it and
adds what it lacks:

- STARTTLS (``imap://``): the transport is upgraded in place with
  ``loop.start_tls``; plaintext bytes that arrive after the tagged ``OK`` are a
  protocol violation (command injection) and abort the session.
- The response loop is iterative (the library recurses once per line, which
  raised RecursionError on big responses) and the FETCH completeness check is
  incremental and ignores parentheses inside quoted strings (the library's is
  quadratic in lines and counts them).
- Untagged lines lose only their leading ``* `` (the library removed every
  ``* `` in the line, e.g. from a folder named ``Price * 2``).
- A lost connection fails the pending command at once (the library leaves it
  pending forever); every command also runs under ``command_timeout``.
- Literals are sent by us (LITERAL+ when offered, else on the server's
  continuation), so non-ASCII search strings, passwords and APPEND work.

One command is in flight per session at a time. NO and BAD come back as
values in the library; every reply is checked here. Any timeout, lost
connection, BAD or framing error marks the session unusable so that the pool
discards it. Errors leave this module only as :mod:`service.errors` classes:

=================================================  ===========================
connect refused / unreachable / reset              UpstreamUnavailable (503)
greeting ``BYE`` or ``[UNAVAILABLE]``              UpstreamUnavailable (503)
any timeout (connect, greeting, command)           UpstreamTimeout (504)
TLS certificate or handshake failure               UpstreamError (502): a
                                                   retry will not help
``imap://`` server without STARTTLS                UpstreamError (502)
login/authenticate ``NO``                          AuthFailed (401)
BAD, unexpected NO, garbled response               UpstreamError (502)
=================================================  ===========================
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aioimaplib.aioimaplib import (
    AUTH,
    CONNECTED,
    CRLF,
    LOGOUT,
    NONAUTH,
    Command,
    IMAP4ClientProtocol,
    IncompleteRead,
    literal_data_re,
)

from service.config import ServerUrl, Settings
from service.errors import (
    AuthFailed,
    MailGatewayError,
    NotFound,
    NotSupported,
    Upstream,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    ValidationFailed,
    scrub,
)
from service.observability.mail import mail_command
from service.protocols.base import Credentials
from service.protocols.imap.journal import ChangeJournal
from service.protocols.imap.wire import (
    CTL,
    FETCH_HEAD,
    FetchItem,
    Line,
    MailboxInfo,
    SearchResult,
    Word,
    astring,
    mailbox_arg,
    parse_fetch,
    parse_list,
    parse_namespace,
    parse_search,
    parse_status,
    parse_vanished,
    quote,
    reports_change,
    response_code,
    track_exists,
)
from service.protocols.refusals import says_no_such_mailbox, says_temporary
from service.protocols.transport import abort_transport

__all__ = ["ImapSession", "Reply", "SelectData"]

# --------------------------------------------------------------------------- protocol layer


class _ConnectionLost(Exception):
    """The connection closed while a command was pending."""


def _balance(line: bytes) -> int:
    """Open minus close parentheses outside quoted strings."""
    stripped = _QUOTED.sub(b"", line)
    return stripped.count(b"(") - stripped.count(b")")


_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"')


class _Command(Command):  # type: ignore[misc]
    """A command whose wire bytes (with literals) we build; the library frames replies."""

    def __init__(self, tag: str, name: str, segments: list[bytes], loop: Any) -> None:
        super().__init__(name, tag, loop=loop)
        self.segments = segments

    def __repr__(self) -> str:  # never the arguments: they may hold secrets
        return f"{self.tag} {self.name}"

    def on_continuation(self) -> bool:
        """A continuation request (``+``) for this command was handled here."""
        return False


class _IdleCommand(_Command):
    """IDLE (RFC 2177): ``idling`` once the server accepted it, ``activity`` at the first
    untagged response other than ``OK`` (EXISTS, EXPUNGE, VANISHED, FETCH, …)."""

    def __init__(self, tag: str, loop: Any) -> None:
        super().__init__(tag, "IDLE", [f"{tag} IDLE\r\n".encode()], loop)
        self.idling: asyncio.Future[None] = loop.create_future()
        self.activity = asyncio.Event()

    def on_continuation(self) -> bool:
        if not self.idling.done():
            self.idling.set_result(None)
        return True

    def append_to_resp(self, line: Line, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if result == "Pending" and isinstance(line, bytes) and line[:3].upper() != b"OK ":
            self.activity.set()


class _FetchCommand(_Command):
    """Waits for the closing parenthesis of each FETCH response, counted incrementally."""

    def __init__(self, tag: str, name: str, segments: list[bytes], loop: Any) -> None:
        super().__init__(tag, name, segments, loop)
        self._depth = 0

    def append_to_resp(self, line: Line, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if result != "Pending" or isinstance(line, bytearray):
            return
        if self._depth > 0:
            self._depth = max(0, self._depth + _balance(line))
        elif FETCH_HEAD.match(line):
            self._depth = max(0, _balance(line))

    def wait_data(self) -> bool:
        return bool(self.wait_literal_data()) or self._depth > 0

    def idle(self) -> bool:
        """Between responses: no literal and no open parenthesis pending."""
        return self._depth == 0 and not self.wait_literal_data()


FAST_FETCH_FRAMING = True  # off only in the test that compares both paths
_LITERAL_AT_END = re.compile(rb"\{(\d+)\}$")


def _take_simple_fetch_responses(data: bytes, cmd: _FetchCommand) -> bytes:
    """Append the complete untagged responses at the front of ``data`` to ``cmd`` exactly
    as the general loop would (line without ``* ``; a literal as a ``bytearray``; the rest
    of its line); return the rest of ``data`` for the general loop.

    The general loop costs a few microseconds per line (the library's dispatch, the
    per-line checks), which a page of 51 flag lines or header sections pays 51 times.
    This takes only what needs no judgement: lines without quoted strings whose
    parentheses balance, each with at most one literal that is wholly in ``data`` and is
    followed by the closing rest of its line; BYE and anything else stop it.
    """
    lines = cmd._resp_lines
    pos = 0
    size = len(data)
    while data.startswith(b"* ", pos):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        head = data[pos + 2 : end]
        if b'"' in head or head[:4].upper() in (b"BYE", b"BYE "):
            break
        depth = head.count(b"(") - head.count(b")")
        if not head.endswith(b"}"):
            if depth:
                break
            lines.append(head)
            pos = end + 2
            continue
        m = _LITERAL_AT_END.search(head)
        if m is None:
            break
        start = end + 2
        stop = start + int(m.group(1))
        tail_end = data.find(b"\r\n", stop) if stop <= size else -1
        if tail_end < 0:
            break
        tail = data[stop:tail_end]
        if (
            tail[:1] not in (b")", b" ")
            or b'"' in tail
            or tail.endswith(b"}")
            or depth + tail.count(b"(") - tail.count(b")")
        ):
            break
        lines += (head, bytearray(data[start:stop]), tail)
        pos = tail_end + 2
    return data[pos:] if pos else data


class _Protocol(IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's client protocol with the fixes listed in the module docstring."""

    # attributes of the (untyped) base class that we use
    incomplete_line: bytes
    current_command: Command | None
    pending_sync_command: Command | None
    pending_async_commands: dict[str, Command]
    transport: Any
    state: str
    loop: asyncio.AbstractEventLoop

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.greeting: asyncio.Future[bytes] = loop.create_future()
        self.closed = False
        self.bye: bytes | None = None
        self.outgoing: deque[bytes] = deque()
        self.tls_guard: str | None = None  # tag of STARTTLS until the upgrade
        self.tls_violation = False
        self.dropped = 0  # untagged responses that arrived outside any command

    # -- incoming data
    def data_received(self, d: bytes) -> None:
        if self.tls_guard is not None:
            d = self._guard_starttls(d)
        try:
            data = self.incomplete_line + d
            cmd = self.pending_sync_command
            if (
                FAST_FETCH_FRAMING
                and self.current_command is None
                and isinstance(cmd, _FetchCommand)
                and cmd.idle()
            ):
                data = _take_simple_fetch_responses(data, cmd)
            self._handle_responses(data, self._handle_line, self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except IncompleteRead as incomplete:
            self.current_command = incomplete.cmd
            self.incomplete_line = incomplete.data
        except Exception as exc:  # garbled framing: fail the command, drop the link
            self._fail_pending(_ConnectionLost(f"protocol error: {type(exc).__name__}"))
            abort_transport(self.transport)

    def _guard_starttls(self, d: bytes) -> bytes:
        """Keep bytes up to the tagged STARTTLS reply; anything after it is injected."""
        if self.tls_guard == "":
            self.tls_violation = True
            return b""
        buf = self.incomplete_line + d
        tag = f"{self.tls_guard} ".encode()
        pos = 0 if buf.startswith(tag) else buf.find(b"\r\n" + tag)
        if pos < 0:
            return d
        start = pos if pos == 0 else pos + 2
        end = buf.find(b"\r\n", start)
        if end < 0:
            return d
        self.tls_guard = ""
        if end + 2 < len(buf):
            self.tls_violation = True
        keep = buf[: end + 2]
        return keep[len(self.incomplete_line) :]

    def _handle_responses(
        self, data: bytes, line_handler: Any, current_cmd: Command | None = None
    ) -> None:
        # Same logic as the library's, as a loop instead of one recursion per line.
        while True:
            if not data:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                data = current_cmd.append_literal_data(data)
                if current_cmd.wait_literal_data():
                    raise IncompleteRead(current_cmd)
            line, separator, tail = data.partition(CRLF)
            if not separator:
                raise IncompleteRead(current_cmd, data)
            cmd = line_handler(line, current_cmd)
            begin_literal = literal_data_re.match(line)
            if begin_literal:
                if cmd is None:
                    cmd = Command("NIL", "unused", loop=self.loop)
                cmd.begin_literal_data(int(begin_literal.group("size")))
                data, current_cmd = tail, cmd
            elif cmd is not None and cmd.wait_data():
                data, current_cmd = tail, cmd
            else:
                data, current_cmd = tail, None

    def _handle_line(self, line: bytes, current_cmd: Command | None) -> Command | None:
        if self.state == CONNECTED:
            if line and not self.greeting.done():
                self._on_greeting(line)
            return None
        result: Command | None = super()._handle_line(line, current_cmd)
        return result

    def _on_greeting(self, line: bytes) -> None:
        word = line[2:].split(b" ", 1)[0].upper() if line.startswith(b"* ") else b""
        if word == b"OK":
            self.state = NONAUTH
        elif word == b"PREAUTH":
            self.state = AUTH
        else:
            self.state = LOGOUT
        self.greeting.set_result(line)

    def _untagged_response(self, line: bytes) -> Command | None:
        if line.startswith(b"* "):
            line = line[2:]
        elif line.startswith(b"*"):
            line = line[1:]
        if line.split(b" ", 1)[0].upper() == b"BYE":
            self.bye = line
        cmd: Command | None = self.pending_sync_command
        if cmd is not None:
            cmd.append_to_resp(line)
        else:
            self.dropped += 1  # told between commands: no reply carries it
        return cmd

    def _continuation(self, line: bytes) -> None:
        cmd = self.pending_sync_command
        if self.outgoing:
            self.transport.write(self.outgoing.popleft())
        elif isinstance(cmd, _Command) and cmd.on_continuation():
            pass
        elif cmd is not None and cmd.name == "AUTHENTICATE":
            # an error challenge (XOAUTH2 sends JSON): answer empty, the server then says NO
            self.transport.write(CRLF)
        elif cmd is not None:
            self._fail_pending(_ConnectionLost("unexpected continuation request"))
            abort_transport(self.transport)

    # -- connection state
    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = "connection closed by the server"
        if self.bye is not None:
            reason += ": " + self.bye.decode("utf-8", "replace")
        self._fail_pending(_ConnectionLost(reason))

    def _fail_pending(self, exc: Exception) -> None:
        if not self.greeting.done():
            self.greeting.set_exception(exc)
            self.greeting.exception()  # retrieved: no "never retrieved" log if unused
        cmds = [self.pending_sync_command, *self.pending_async_commands.values()]
        for cmd in cmds:
            if cmd is not None and not cmd._event.is_set():
                cmd._exception = exc
                cmd._event.set()

    # -- sending
    async def run(self, cmd: _Command) -> tuple[str, list[Line]]:
        """Send ``cmd`` (one at a time) and wait for its tagged reply."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _ConnectionLost("connection already closed")
        if self.pending_sync_command is not None:
            raise _ConnectionLost("a command is still pending")
        self.pending_sync_command = cmd
        self.outgoing = deque(cmd.segments[1:])
        self.transport.write(cmd.segments[0])
        await cmd.wait()
        return str(cmd.response.result), list(cmd.response.lines)


# --------------------------------------------------------------------------- the session

_CYRUS_GREETING = re.compile(r"\bCyrus IMAP\b", re.IGNORECASE)
_CAPS_RE = re.compile(r"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_UIDNEXT_RE = re.compile(rb"\[UIDNEXT (\d+)\]", re.IGNORECASE)
_HIGHESTMODSEQ_RE = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]", re.IGNORECASE)
_EXISTS_RE = re.compile(rb"(\d+) EXISTS$", re.IGNORECASE)
_EXPUNGE_RE = re.compile(rb"\d+ EXPUNGE$", re.IGNORECASE)
_VANISHED_RE = re.compile(rb"VANISHED ", re.IGNORECASE)
_UNAVAILABLE = {"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "OVERQUOTA", "THROTTLED"}


def _no_such_mailbox(reply: Reply) -> bool:
    """A NO saying that the folder named does not exist: ``[TRYCREATE]`` (RFC 3501
    §6.4.7) or ``[NONEXISTENT]`` (RFC 5530), or no code and words that say so (Cyrus)."""
    code = reply.code
    return code in ("TRYCREATE", "NONEXISTENT") or (not code and says_no_such_mailbox(reply.text))


def _temporary(reply: Reply) -> bool:
    """A NO that means "not now" rather than "no": retrying later may work."""
    code = reply.code
    return code in _UNAVAILABLE or (not code and says_temporary(reply.text))


@dataclass(frozen=True)
class SelectData:
    """What one SELECT reported, all at the same moment: UIDVALIDITY, UIDNEXT (None if
    the server left it out), EXISTS and HIGHESTMODSEQ (None without CONDSTORE, or
    ``[NOMODSEQ]``)."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None


@dataclass(frozen=True)
class Reply:
    """A tagged reply: ``OK``/``NO``; its text (scrubbed, fit for error bodies), the raw
    text (for parsing response codes only) and the untagged lines before it."""

    result: str
    text: str
    lines: list[Line]
    raw: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.result == "OK"

    @property
    def code(self) -> str:
        return response_code(self.raw or self.text)[0]


def _clean_noop(reply: Reply) -> bool:
    """NOOP said OK and no untagged NO/BAD/BYE (Dovecot's sign of a vanished folder)."""
    return reply.ok and not any(
        isinstance(line, bytes) and line.split(b" ", 1)[0].upper() in (b"NO", b"BAD", b"BYE")
        for line in reply.lines
    )


def _caps_from(text: str) -> frozenset[str] | None:
    m = _CAPS_RE.search(text)
    return frozenset(c.upper() for c in m.group(1).split()) if m else None


def _connect_error(exc: BaseException) -> MailGatewayError:
    """Map an exception of connect/TLS/greeting to our error tree."""
    if isinstance(exc, MailGatewayError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("The IMAP server did not answer in time.")
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or "certificate verify failed"
        return UpstreamError(f"TLS with the IMAP server failed: {reason}.")
    if isinstance(exc, ssl.SSLError):
        return UpstreamError(f"TLS handshake with the IMAP server failed ({exc.reason}).")
    if isinstance(exc, OSError | _ConnectionLost):
        return UpstreamUnavailable("Cannot connect to the IMAP server.")
    return UpstreamError("The IMAP server broke the protocol.")


class ImapSession:
    """One authenticated IMAP connection; not shared between concurrent requests.

    ``selected``/``uidvalidity`` remember the selected folder so that a pooled
    session re-SELECTs only when a lease needs another folder. A reused
    session does not notice that its selected folder was deleted and
    re-created meanwhile (UIDVALIDITY is only reported by SELECT); Dovecot
    ends such sessions itself (BYE), which fails the command and the reader
    retries once on a fresh session.
    """

    def __init__(
        self,
        protocol: _Protocol,
        settings: Settings,
        secrets: tuple[str, ...],
    ) -> None:
        self._proto = protocol
        self._settings = settings
        self._secrets = secrets
        self._broken = False
        self.server: tuple[str | None, int | None] = (None, None)  # host, port (for spans)
        self.capabilities: frozenset[str] = frozenset()
        self.selected: str | None = None
        self.read_only = False  # the selected folder was opened [READ-ONLY]
        self.uidvalidity: int | None = None
        self.exists: int | None = None  # messages in the selected folder, as this view has it
        self.select_data: SelectData | None = None  # of the last real SELECT
        # The selected folder's state at a past moment (a SELECT's or a STATUS's), kept
        # while no reply since has reported a change in the view: see view_mark.
        self._mark: SelectData | None = None
        self.changes_reported = 0  # replies seen to report a change (with a mark, or STATUS)
        # What this session was told in its selected folder since the SELECT (QRESYNC
        # enabled): lets /changes skip the server's MODSEQ scan (see journal_for)
        self._journal: ChangeJournal | None = None
        self._dropped = 0  # protocol.dropped when the journal started
        # the names of the commands before the last one and of the last (``UID`` left out)
        self._previous_command = self._last_command = ""
        self.enabled: set[str] = set()  # extensions ENABLEd (RFC 5161)
        self.leases = 0  # how often a reader has leased it (0: brand new)
        # False where the server's BODYSTRUCTURE is known to cut some messages elsewhere
        # than RFC 2046 does (Cyrus 3: a boundary line with trailing white space is not
        # one there), so that its BODY[n] need not be the part the gateway parsed
        self.parts_as_parsed = True
        # False where IDLE and NOOP stay silent when another client deletes the selected
        # folder (Cyrus 3: a SEARCH there finds nothing, a FETCH answers NO): select()
        # then SELECTs on each lease; True for Dovecot (BYE or an untagged NO)
        self.tells_deletion = True
        self.commands_in_lease = 0
        self._synced_this_lease = False
        self._fresh_for_next_lease = False

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls, settings: Settings, server: ServerUrl, ctx: ssl.SSLContext, creds: Credentials
    ) -> ImapSession:
        """Connect (TLS as the URL says), authenticate; errors mapped as documented."""
        loop = asyncio.get_running_loop()
        proto = _Protocol(loop)
        secrets = (creds.secret,)
        session = cls(proto, settings, secrets)
        session.server = (server.host, server.port)
        try:
            with mail_command("imap", "CONNECT", server.host, server.port):
                async with asyncio.timeout(settings.connect_timeout):
                    await session._open(loop, server, ctx)
            await session._authenticate(creds)
        except BaseException as exc:
            session.abort()
            if isinstance(exc, Exception):
                raise _connect_error(exc) from None
            raise
        return session

    async def _open(
        self, loop: asyncio.AbstractEventLoop, server: ServerUrl, ctx: ssl.SSLContext
    ) -> None:
        proto = self._proto
        if server.security == "implicit":
            await loop.create_connection(
                lambda: proto, server.host, server.port, ssl=ctx, server_hostname=server.host
            )
        else:
            await loop.create_connection(lambda: proto, server.host, server.port)
        greeting = (await proto.greeting).decode("utf-8", "replace")
        if proto.state == LOGOUT or "[UNAVAILABLE]" in greeting.upper():
            raise UpstreamUnavailable(
                "The IMAP server refused the connection.",
                upstream=Upstream("imap", scrub(greeting, self._secrets)),
            )
        caps = _caps_from(greeting)
        self.parts_as_parsed = self.tells_deletion = _CYRUS_GREETING.search(greeting) is None
        if server.security == "starttls":
            if caps is None:
                caps = await self._capability()
            if "STARTTLS" not in caps:
                raise UpstreamError(
                    "The IMAP server does not offer STARTTLS; imap:// requires TLS "
                    "(use imaps:// or, on loopback only, imap+plain://)."
                )
            tag = proto.new_tag()
            proto.tls_guard = tag
            reply = await self._send(
                _Command(tag, "STARTTLS", [f"{tag} STARTTLS\r\n".encode()], loop)
            )
            if not reply.ok:
                raise UpstreamError(
                    "The IMAP server refused STARTTLS.", upstream=Upstream("imap", reply.text)
                )
            if proto.tls_violation or proto.incomplete_line:
                raise UpstreamError("The IMAP server sent data after STARTTLS before TLS began.")
            transport = await loop.start_tls(
                proto.transport, proto, ctx, server_hostname=server.host
            )
            if proto.tls_violation:
                raise UpstreamError("The IMAP server sent data after STARTTLS before TLS began.")
            proto.transport = transport
            proto.tls_guard = None
            caps = None  # capabilities before TLS must not be trusted
        self.capabilities = caps if caps is not None else await self._capability()

    async def _authenticate(self, creds: Credentials) -> None:
        proto = self._proto
        if proto.state == AUTH:  # PREAUTH
            return
        caps = self.capabilities
        if creds.kind == "xoauth2" and "AUTH=XOAUTH2" not in caps:
            raise AuthFailed("The IMAP server does not offer XOAUTH2 (Bearer) logins.")
        # LOGINDISABLED disables only the LOGIN command
        if creds.kind == "basic" and "AUTH=PLAIN" not in caps and "LOGINDISABLED" in caps:
            raise UpstreamError("The IMAP server does not allow a password login here.")
        await creds.guard.before_login()
        if creds.kind == "xoauth2":
            raw = f"user={creds.user}\x01auth=Bearer {creds.secret}\x01\x01".encode()
            reply = await self._sasl("XOAUTH2", base64.b64encode(raw).decode("ascii"))
        elif "AUTH=PLAIN" in caps:
            raw = f"\0{creds.user}\0{creds.secret}".encode()
            reply = await self._sasl("PLAIN", base64.b64encode(raw).decode("ascii"))
        else:
            reply = await self.command("LOGIN", [astring(creds.user), astring(creds.secret)])
        if not reply.ok:
            if _temporary(reply):
                raise UpstreamUnavailable(
                    "The IMAP server cannot log in now.", upstream=Upstream("imap", reply.text)
                )
            raise AuthFailed(
                "The IMAP server refused the credentials.", upstream=Upstream("imap", reply.text)
            )
        proto.state = AUTH
        await creds.guard.login_accepted()
        self.capabilities = _caps_from(reply.raw) or await self._capability()

    async def _sasl(self, mechanism: str, payload: str) -> Reply:
        proto = self._proto
        tag = proto.new_tag()
        head = f"{tag} AUTHENTICATE {mechanism}"
        if "SASL-IR" in self.capabilities:
            segments = [f"{head} {payload}\r\n".encode()]
        else:
            segments = [f"{head}\r\n".encode(), f"{payload}\r\n".encode()]
        return await self._execute(_Command(tag, "AUTHENTICATE", segments, proto.loop), payload)

    async def _capability(self) -> frozenset[str]:
        reply = await self.command("CAPABILITY", [])
        self._expect_ok(reply, "CAPABILITY")
        caps: set[str] = set()
        for line in reply.lines:
            if isinstance(line, bytes) and line[:11].upper() == b"CAPABILITY ":
                caps.update(line[11:].decode("ascii", "replace").upper().split())
        return frozenset(caps)

    @property
    def usable(self) -> bool:
        """False once anything went wrong; the pool then discards the session."""
        t = self._proto.transport
        return not (self._broken or self._proto.closed or t is None or t.is_closing())

    @property
    def tls(self) -> bool:
        """True when the connection is encrypted (imaps:// or after STARTTLS)."""
        t = self._proto.transport
        return t is not None and t.get_extra_info("ssl_object") is not None

    def abort(self) -> None:
        """Drop the connection now."""
        self._broken = True
        abort_transport(self._proto.transport)

    async def ping(self) -> bool:
        """A cheap liveness check (NOOP); it also refreshes the view for the next lease."""
        try:
            reply = await self.command("NOOP", [])
        except MailGatewayError:
            return False
        self._fresh_for_next_lease = _clean_noop(reply)
        return reply.ok

    async def close(self) -> None:
        """LOGOUT politely (briefly), then drop the connection; never raises."""
        if self.usable:
            try:
                async with asyncio.timeout(min(2.0, self._settings.command_timeout)):
                    await self._send(self._build("LOGOUT", []))
            except Exception:  # noqa: S110 - best effort, the link is dropped below
                pass
        self.abort()

    # -- sending ----------------------------------------------------------------------------
    def _build(self, prefix: str, words: Sequence[Word], *, fetch: bool = False) -> _Command:
        """Wire bytes of one command; ``bytes`` words become literals (LITERAL+ if offered)."""
        proto = self._proto
        tag = proto.new_tag()
        head = prefix.split(" ", 2)
        name = head[1] if head[0] == "UID" and len(head) > 1 else head[0]
        literal_plus = "LITERAL+" in self.capabilities
        segments: list[bytes] = []
        cur = bytearray(f"{tag} {prefix}".encode("ascii"))
        for word in words:
            cur += b" "
            if isinstance(word, bytes):
                if literal_plus or ("LITERAL-" in self.capabilities and len(word) <= 4096):
                    cur += b"{%d+}\r\n" % len(word)
                    cur += word
                else:
                    cur += b"{%d}\r\n" % len(word)
                    segments.append(bytes(cur))
                    cur = bytearray(word)
            else:
                if CTL.search(word) or not word.isascii():
                    raise ValidationFailed("Control characters are not allowed here.")
                cur += word.encode("ascii")
        cur += CRLF
        segments.append(bytes(cur))
        cls = _FetchCommand if fetch else _Command
        return cls(tag, name, segments, proto.loop)

    async def _send(self, cmd: _Command, *extra_secrets: str) -> Reply:
        """Send and wait (no timeout here); BAD or anything but OK/NO raises UpstreamError."""
        self._previous_command, self._last_command = self._last_command, cmd.name
        try:
            result, lines = await self._proto.run(cmd)
        except BaseException:
            self._broken = True
            raise
        raw = (bytes(lines.pop()) if lines else b"").decode("utf-8", "replace")
        self.exists = track_exists(lines, self.exists)
        if (journal := self._journal) is not None:
            journal.hear(lines, fetch_command=cmd.name == "FETCH")
            if self._proto.dropped != self._dropped:
                journal.lost_untagged()
        if (self._mark is not None or cmd.name == "STATUS") and reports_change(
            lines, solicited_fetch=cmd.name == "FETCH"
        ):
            self._mark = None
            self.changes_reported += 1
        reply = Reply(result, scrub(raw, self._secrets + extra_secrets), lines, raw)
        if result not in ("OK", "NO"):
            self._broken = True
            raise UpstreamError(
                f"The IMAP server rejected {cmd.name}.", upstream=Upstream("imap", reply.text)
            )
        return reply

    async def _execute(self, cmd: _Command, *extra_secrets: str) -> Reply:
        """:meth:`_send` under ``command_timeout``, transport failures mapped."""
        try:
            with mail_command("imap", cmd.name, *self.server) as call:
                async with asyncio.timeout(self._settings.command_timeout):
                    reply = await self._send(cmd, *extra_secrets)
                if not reply.ok:
                    call.refused()
        except TimeoutError:
            self._broken = True
            raise UpstreamTimeout(f"The IMAP server did not answer {cmd.name} in time.") from None
        except _ConnectionLost as exc:
            self._broken = True
            raise UpstreamUnavailable(
                "The IMAP server closed the connection.",
                upstream=Upstream("imap", scrub(str(exc), self._secrets)),
            ) from None
        self.commands_in_lease += 1
        return reply

    async def command(self, prefix: str, words: Sequence[Word], *, fetch: bool = False) -> Reply:
        """Run one command under ``command_timeout``; OK or NO come back, the rest raises."""
        return await self._execute(self._build(prefix, words, fetch=fetch))

    def _expect_ok(self, reply: Reply, what: str) -> None:
        if not reply.ok:
            if self.selected is not None and _no_such_mailbox(reply):
                # The selected folder was deleted under this session, which Cyrus tells
                # only now (its NOOP stays silent): not reused, a fresh one selects anew.
                self._broken = True
                self.selected = self.uidvalidity = self._journal = None
                raise NotFound("The folder is gone.", upstream=Upstream("imap", reply.text))
            if _temporary(reply):
                raise UpstreamUnavailable(
                    f"The IMAP server cannot {what} now.", upstream=Upstream("imap", reply.text)
                )
            raise UpstreamError(
                f"The IMAP server refused {what}.", upstream=Upstream("imap", reply.text)
            )

    # -- typed commands ---------------------------------------------------------------------
    def begin_lease(self) -> None:
        """Called by the reader each time it leases this session (see :meth:`select`)."""
        self.leases += 1
        self.commands_in_lease = 0
        self._synced_this_lease = self._fresh_for_next_lease
        self._fresh_for_next_lease = False

    @property
    def view_mark(self) -> SelectData | None:
        """UIDVALIDITY, UIDNEXT, EXISTS and HIGHESTMODSEQ of the selected folder as a real
        SELECT or a STATUS reported them (:meth:`keep_mark`), as long as no reply since
        has reported a change in this session's view (an EXISTS, EXPUNGE, RECENT or
        VANISHED, a FETCH carrying a MODSEQ, any FETCH outside this session's own FETCH
        commands, a HIGHESTMODSEQ response code): then the view is the one the mark
        describes, and a STATUS now would tell no more than the mark. Only with a MODSEQ
        (CONDSTORE: the server then sends a MODSEQ with every flag change it reports,
        RFC 7162 §3.1). A server that changed something it never reported makes the
        mark older than its own state, never newer: it was the state at its moment."""
        mark = self._mark
        if mark is None or self.uidvalidity != mark.uidvalidity or self.selected is None:
            return None
        return mark

    def keep_mark(self, mark: SelectData) -> None:
        """Remember the selected folder's state as a STATUS reported it just now (the
        caller checks that the STATUS reply itself reported no change: Dovecot reports
        changes at the end of each command, after the STATUS values were taken)."""
        if mark.uidnext is not None and mark.highestmodseq is not None:
            self._mark = mark
            journal = self._journal
            # A known point for the journal only right after a full sync of the view: after
            # a FETCH, STORE or SEARCH by sequence numbers Dovecot holds expunges back
            # (RFC 3501 §7.4.1), while a STATUS already counts their MODSEQ.
            if (
                journal is not None
                and mark.uidvalidity == journal.uidvalidity
                and (
                    self._last_command == "SELECT"
                    or (
                        self._last_command == "STATUS"
                        and self._previous_command in ("NOOP", "SELECT", "IDLE")
                    )
                )
            ):
                journal.seen(mark.highestmodseq, mark.uidnext)

    def journal_for(self, folder: str, modseq: int, uidnext: int) -> ChangeJournal | None:
        """The journal of what this session was told in ``folder`` since its SELECT, if
        it can answer for a state of that folder at MODSEQ ``modseq`` and UIDNEXT
        ``uidnext`` (see :mod:`service.protocols.imap.journal`); None otherwise."""
        journal = self._journal
        if journal is None or self.selected != folder:
            return None
        return journal if journal.usable(folder, self.uidvalidity, modseq, uidnext) else None

    def forget_view(self, *, selection: bool = False) -> None:
        """The selected folder's view may be stale: the next :meth:`select` brings it up
        to date (a NOOP), or, with ``selection`` (a command on it failed: the folder may
        be gone or re-created), selects it anew (a real SELECT, a new UIDVALIDITY)."""
        self._synced_this_lease = False
        self._mark = None
        if selection:
            self.selected = self.uidvalidity = self._journal = None

    async def select(self, folder: str, *, fresh: bool = False) -> int:
        """Make ``folder`` selected with an up-to-date view; its UIDVALIDITY.

        NotFound when the folder does not exist (the session is then not reused: see
        the code). Dovecot refreshes a selected
        folder's view only at the end of a command, so a pooled session still
        sees the folder as it was when its last lease ended (measured: new
        messages invisible to SEARCH, expunged ones still listed). Hence, on a
        session that already has ``folder`` selected, one NOOP per lease
        brings the view up to date (cheaper for the server than SELECT;
        pipelining it with the next command does not work: Dovecot runs the
        two in parallel). An untagged NO/BYE in the NOOP reply (Dovecot's
        answer when the folder was deleted meanwhile) forces a real SELECT,
        which also reports a new UIDVALIDITY. Otherwise a delete + re-create
        of the folder by another client is not noticed until the next SELECT.
        Cyrus says nothing in that case (and its SEARCH then finds nothing): on a
        server that does not tell (:attr:`tells_deletion`), each lease SELECTs.

        :attr:`select_data` is what a real SELECT (with ``CONDSTORE`` where offered,
        RFC 7162 §3.1.8) reported, None after the NOOP path. ``fresh``: always a real
        SELECT (on a big Maildir, Dovecot's SELECT costs far more than a NOOP).
        """
        if not fresh and self.selected == folder and self.uidvalidity is not None:
            self.select_data = None
            if self._synced_this_lease:
                return self.uidvalidity
            # where NOOP cannot tell a folder deleted and created again: a real SELECT
            if self.tells_deletion and _clean_noop(await self.command("NOOP", [])):
                self._synced_this_lease = True
                return self.uidvalidity
        arg = mailbox_arg(folder)
        self.selected = self.uidvalidity = self.exists = self._mark = self._journal = None
        words: list[Word] = [arg]
        if "CONDSTORE" in self.capabilities:
            words.append("(CONDSTORE)")
        reply = await self.command("SELECT", words)
        if not reply.ok:
            if _temporary(reply):
                self._expect_ok(reply, "open the folder")
            # Not reused: a Dovecot session that had the folder open while another client
            # deleted and re-created it may answer "NO Mailbox was deleted under us" for
            # the new folder, every time (measured); a fresh session opens it.
            self._broken = True
            raise NotFound("No such folder.", upstream=Upstream("imap", reply.text))
        uidnext = modseq = None
        exists = 0
        for line in reply.lines:
            if not isinstance(line, bytes):
                continue
            if m := _UIDVALIDITY_RE.search(line):
                self.uidvalidity = int(m.group(1))
            elif m := _UIDNEXT_RE.search(line):
                uidnext = int(m.group(1))
            elif m := _HIGHESTMODSEQ_RE.search(line):
                modseq = int(m.group(1))
            elif m := _EXISTS_RE.match(line):
                exists = int(m.group(1))
        if self.uidvalidity is None:
            self.abort()
            raise UpstreamError("The IMAP server did not report UIDVALIDITY.")
        if m := _HIGHESTMODSEQ_RE.search(reply.raw.encode()):
            modseq = int(m.group(1))
        self.select_data = SelectData(self.uidvalidity, uidnext, exists, modseq)
        self.read_only = "[READ-ONLY]" in reply.raw.upper()
        self.selected = folder
        if "QRESYNC" in self.enabled and modseq is not None and uidnext is not None:
            self._journal = ChangeJournal(folder, self.uidvalidity, modseq, uidnext)
            self._dropped = self._proto.dropped
        self.keep_mark(self.select_data)
        self._synced_this_lease = True
        return self.uidvalidity

    async def enable(self, *extensions: str) -> frozenset[str]:
        """ENABLE (RFC 5161) those of ``extensions`` the server offers; what it enabled.

        ENABLE is valid only while no folder is selected: a selected folder is closed
        first with UNSELECT (RFC 3691) where offered (else ENABLE is tried anyway,
        as Dovecot accepts it). Enabled once per session; asking again is free.
        """
        wanted = [e for e in extensions if e in self.capabilities and e not in self.enabled]
        if not wanted or "ENABLE" not in self.capabilities:
            return frozenset(e for e in extensions if e in self.enabled)
        if self.selected is not None and "UNSELECT" in self.capabilities:
            self._expect_ok(await self.command("UNSELECT", []), "UNSELECT")
            self.selected = self.uidvalidity = self.exists = self._mark = self._journal = None
        reply = await self.command("ENABLE", wanted)
        if reply.ok:
            for line in reply.lines:
                if isinstance(line, bytes) and line[:8].upper() == b"ENABLED ":
                    self.enabled |= {w.upper() for w in line[8:].decode("ascii", "replace").split()}
            if "QRESYNC" in self.enabled:
                self.enabled.add("CONDSTORE")  # RFC 7162 §3.2.3: QRESYNC implies it
        return frozenset(e for e in extensions if e in self.enabled)

    async def idle(self, wake: asyncio.Event, seconds: float) -> bool:
        """IDLE (RFC 2177) in the selected folder until the server reports something
        (a new message, an expunge, a flag change), ``wake`` is set, or ``seconds``
        have passed; then DONE. True when the server reported something.

        The server's replies (accepting IDLE, answering DONE) are awaited for at most
        ``command_timeout`` (UpstreamTimeout); NO is UpstreamError, a lost connection
        UpstreamUnavailable. A cancelled wait drops the connection."""
        proto = self._proto
        cmd = _IdleCommand(proto.new_tag(), proto.loop)
        running: asyncio.Future[Any] = asyncio.ensure_future(self._send(cmd))
        idling: asyncio.Future[Any] = cmd.idling
        limit = self._settings.command_timeout
        try:
            async with asyncio.timeout(limit):
                await asyncio.wait({idling, running}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                woken: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
                told: asyncio.Future[Any] = asyncio.ensure_future(cmd.activity.wait())
                try:
                    await asyncio.wait(
                        {woken, told, running}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    woken.cancel()
                    told.cancel()
                if not running.done():
                    proto.transport.write(b"DONE\r\n")
            async with asyncio.timeout(limit):
                reply = await running
        except TimeoutError:
            self.abort()
            raise UpstreamTimeout("The IMAP server did not answer IDLE in time.") from None
        except _ConnectionLost as exc:
            self._broken = True
            raise UpstreamUnavailable(
                "The IMAP server closed the connection.",
                upstream=Upstream("imap", scrub(str(exc), self._secrets)),
            ) from None
        except BaseException:
            running.cancel()
            self.abort()
            raise
        self._expect_ok(reply, "IDLE")
        return cmd.activity.is_set()

    async def uid_search(self, criteria: Sequence[Word], *, count: bool = False) -> SearchResult:
        """UID SEARCH (ESEARCH ``RETURN (ALL [COUNT])`` when offered, compact for big folders)."""
        charset: list[Word] = (
            ["CHARSET", "UTF-8"] if any(isinstance(w, bytes) for w in criteria) else []
        )
        if "ESEARCH" in self.capabilities:
            ret = "RETURN (COUNT)" if count else "RETURN (ALL)"
            reply = await self.command(f"UID SEARCH {ret}", [*charset, *criteria])
        else:
            reply = await self.command("UID SEARCH", [*charset, *criteria])
        if not reply.ok:
            if reply.code == "BADCHARSET":
                raise NotSupported("The IMAP server cannot search non-ASCII text.")
            self._expect_ok(reply, "SEARCH")
        return parse_search(reply.lines)

    async def search_max_number(self, criteria: Sequence[Word]) -> int:
        """The highest sequence number matching ``criteria``, 0 for none: ``SEARCH RETURN
        (MAX)`` (RFC 4731 3.1) when ESEARCH is offered, else the highest of a plain SEARCH."""
        if "ESEARCH" in self.capabilities:
            reply = await self.command("SEARCH RETURN (MAX)", criteria)
        else:
            reply = await self.command("SEARCH", criteria)
        self._expect_ok(reply, "SEARCH")
        return parse_search(reply.lines).maximum or 0

    async def fetch_numbers(self, numbers: str, items: str) -> dict[int, FetchItem]:
        """FETCH by message sequence numbers (RFC 3501 6.4.5), by UID, each with its
        ``seq``. The server may not send EXPUNGE while a non-UID FETCH runs (7.4.1), so the
        numbers hold for the command; keep them within :attr:`exists`."""
        reply = await self.command("FETCH", [numbers, items], fetch=True)
        self._expect_ok(reply, "FETCH")
        return parse_fetch(reply.lines)

    async def uid_fetch(self, uids: str, items: str) -> dict[int, FetchItem]:
        """UID FETCH; keep ``uids`` to one page (the library buffers the whole reply)."""
        reply = await self.command("UID FETCH", [uids, items], fetch=True)
        self._expect_ok(reply, "FETCH")
        return parse_fetch(reply.lines)

    async def uid_fetch_changed(
        self, uids: str, modseq: int, *, vanished: bool
    ) -> tuple[dict[int, FetchItem], set[int]]:
        """``UID FETCH uids (UID FLAGS) (CHANGEDSINCE modseq [VANISHED])`` (RFC 7162
        §3.1.4.1, §3.2.6): the messages changed since ``modseq`` and, with ``vanished``
        (QRESYNC enabled), the UIDs expunged since."""
        modifier = f"(CHANGEDSINCE {modseq}{' VANISHED' if vanished else ''})"
        reply = await self.command("UID FETCH", [uids, "(UID FLAGS)", modifier], fetch=True)
        self._expect_ok(reply, "FETCH")
        try:
            gone = parse_vanished(reply.lines)
        except ValueError:
            self._broken = True
            raise UpstreamError("The IMAP server sent a garbled VANISHED response.") from None
        return parse_fetch(reply.lines), gone

    async def uid_store(
        self, uids: str, op: str, flags: Sequence[str], *, silent: bool = True
    ) -> dict[int, FetchItem]:
        """UID STORE ``op`` (``+FLAGS``/``-FLAGS``); non-silent returns the touched UIDs."""
        item = op + (".SILENT" if silent else "")
        reply = await self.command(
            "UID STORE", [uids, item, "(" + " ".join(flags) + ")"], fetch=True
        )
        self._expect_ok(reply, "STORE")
        return parse_fetch(reply.lines)

    async def uid_expunge(self, uids: str) -> int:
        """UID EXPUNGE (UIDPLUS) of exactly ``uids``; how many EXPUNGE responses came back."""
        if "UIDPLUS" not in self.capabilities:
            raise NotSupported("The IMAP server cannot expunge single messages (no UIDPLUS).")
        reply = await self.command("UID EXPUNGE", [uids])
        self._expect_ok(reply, "EXPUNGE")
        return sum(
            1
            for line in reply.lines
            if isinstance(line, bytes) and (_EXPUNGE_RE.match(line) or _VANISHED_RE.match(line))
        )

    async def expunge(self) -> None:
        """Plain EXPUNGE: removes every message flagged \\Deleted in the selected folder.
        Only for servers without UIDPLUS, after checking no other message is flagged."""
        reply = await self.command("EXPUNGE", [])
        self._expect_ok(reply, "EXPUNGE")

    async def uid_move(self, uids: str, folder: str) -> Reply:
        """UID MOVE (RFC 6851); NotFound when the destination does not exist."""
        reply = await self.command("UID MOVE", [uids, mailbox_arg(folder)])
        return self._copy_result(reply, "MOVE")

    async def uid_copy(self, uids: str, folder: str) -> Reply:
        """UID COPY; NotFound when the destination does not exist."""
        reply = await self.command("UID COPY", [uids, mailbox_arg(folder)])
        return self._copy_result(reply, "COPY")

    def _copy_result(self, reply: Reply, what: str) -> Reply:
        if not reply.ok:
            if _no_such_mailbox(reply):
                raise NotFound("No such destination folder.", upstream=Upstream("imap", reply.text))
            self._expect_ok(reply, what)
        return reply

    async def list_mailboxes(
        self, *, status: bool = False, items: Sequence[str] = ("MESSAGES", "UNSEEN")
    ) -> list[MailboxInfo]:
        """LIST "" "*" with special-use attributes (and LIST-STATUS ``items`` if asked)."""
        opts: list[str] = []
        if "SPECIAL-USE" in self.capabilities and "LIST-EXTENDED" in self.capabilities:
            opts.append("SPECIAL-USE")
        if status and "LIST-STATUS" in self.capabilities:
            opts.append(f"STATUS ({' '.join(items)})")
        words: list[Word] = ['""', '"*"']
        if opts:
            words.append("RETURN (" + " ".join(opts) + ")")
        reply = await self.command("LIST", words)
        self._expect_ok(reply, "LIST")
        return parse_list(reply.lines)

    async def status(
        self, raw_name: str, items: Sequence[str] = ("MESSAGES", "UNSEEN")
    ) -> dict[str, int]:
        """STATUS ``items`` of a folder given by its wire name; {} if refused."""
        reply = await self.command("STATUS", [quote(raw_name), f"({' '.join(items)})"])
        if not reply.ok:
            return {}
        found = parse_status(reply.lines)
        return found.get(raw_name) or next(iter(found.values()), {})

    async def personal_prefix(self) -> str:
        """The prefix of the user's personal folders (NAMESPACE, RFC 2342): "" where they
        sit at the top (Dovecot; servers without NAMESPACE), "INBOX." on Cyrus with its
        default namespace, where a folder created at the top is refused ("NO Permission
        denied")."""
        if "NAMESPACE" not in self.capabilities:
            return ""
        reply = await self.command("NAMESPACE", [])
        found = parse_namespace(reply.lines) if reply.ok else None
        return found[0] if found is not None else ""

    async def create(self, folder: str, special_use: str | None = None) -> None:
        """CREATE ``folder`` (with USE (special-use) where CREATE-SPECIAL-USE is offered);
        a folder that already exists is fine."""
        words: list[Word] = [mailbox_arg(folder)]
        if special_use and "CREATE-SPECIAL-USE" in self.capabilities:
            words.append(f"(USE ({special_use}))")
        reply = await self.command("CREATE", words)
        if not reply.ok and reply.code != "ALREADYEXISTS":
            self._expect_ok(reply, "CREATE")

    async def append(self, folder: str, message: bytes, flags: Sequence[str]) -> Reply:
        """APPEND to ``folder``; NotFound when it does not exist."""
        words: list[Word] = [mailbox_arg(folder)]
        if flags:
            words.append("(" + " ".join(flags) + ")")
        words.append(message)
        reply = await self.command("APPEND", words)
        if not reply.ok and _no_such_mailbox(reply):
            raise NotFound("No such folder.", upstream=Upstream("imap", reply.text))
        self._expect_ok(reply, "APPEND")
        return reply
