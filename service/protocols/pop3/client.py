"""A small asyncio POP3 client (RFC 1939, 2449, 2595, 3206, 5034) using only the stdlib."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from types import TracebackType
from typing import Literal

from service.observability.mail import mail_command
from service.protocols.refusals import says_temporary
from service.protocols.transport import abort_transport

__all__ = [
    "Pop3AuthError",
    "Pop3Client",
    "Pop3ConnectError",
    "Pop3DisconnectedError",
    "Pop3Error",
    "Pop3InUseError",
    "Pop3NoSuchMessage",
    "Pop3ProtocolError",
    "Pop3TLSError",
    "Pop3TempError",
    "Pop3TimeoutError",
]

_MAX_RESPONSE_LINE = 8192  # status lines and CAPA/LIST/UIDL entries
_MAX_LISTING_BYTES = 64 * 1024 * 1024  # total size of a CAPA/LIST/UIDL reply
_MAX_COMMAND_LINE = 255  # RFC 2449 section 4; decides on SASL initial responses
_READ_SIZE = 64 * 1024
_RSET_GRACE = 2.0  # seconds for the RSET that withdraws DELE marks before a drop
_RESP_CODE = re.compile(r"^-ERR\s+\[([A-Za-z0-9/-]+)\]")
_Lines = list[bytes]  # alias: inside Pop3Client, "list" names the LIST command


class Pop3Error(Exception):
    """Base class; ``reply`` is the server's (redacted) reply line, ``code`` its RFC 2449 code."""

    def __init__(self, message: str, *, reply: str | None = None) -> None:
        super().__init__(message if reply is None else f"{message}: {reply}")
        self.reply = reply
        self.mail_outcome: str | None = None  # "refused" when the server answered -ERR
        match = _RESP_CODE.match(reply or "")
        self.code: str | None = match.group(1).upper() if match else None


class Pop3ConnectError(Pop3Error, ConnectionError):
    """The TCP connection could not be established."""


class Pop3TLSError(Pop3Error):
    """TLS handshake/certificate failure, or STLS unavailable or refused."""


class Pop3AuthError(Pop3Error):
    """Credentials rejected (-ERR on USER/PASS/AUTH, or ``[AUTH]``)."""


class Pop3InUseError(Pop3Error):
    """The maildrop is locked by another session (``[IN-USE]``)."""


class Pop3TempError(Pop3Error):
    """Temporary server-side failure (``[SYS/TEMP]`` or ``[LOGIN-DELAY]``, or a refused
    login without a code whose words say so: see :mod:`service.protocols.refusals`)."""


class Pop3ProtocolError(Pop3Error):
    """Malformed or unexpected reply, over-long line or reply over a size limit."""


class Pop3NoSuchMessage(Pop3Error):
    """-ERR on a command naming a message number (RETR, DELE, TOP, LIST n, UIDL n)."""


class Pop3TimeoutError(Pop3Error, TimeoutError):
    """The server did not answer in time; the connection has been dropped."""


class Pop3DisconnectedError(Pop3Error, ConnectionError):
    """The connection was closed or reset, or the client is no longer usable."""


_CODE_ERRORS: dict[str, type[Pop3Error]] = {
    "IN-USE": Pop3InUseError,
    "SYS/TEMP": Pop3TempError,
    "LOGIN-DELAY": Pop3TempError,
    "AUTH": Pop3AuthError,
}


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _check_msgno(n: int) -> None:
    if type(n) is not int or n < 1:
        raise ValueError("message number must be a positive int")


def _check_chunk_size(chunk_size: int) -> None:
    if type(chunk_size) is not int or chunk_size < 1:
        raise ValueError("chunk_size must be an int >= 1")


class Pop3Client:
    """One POP3 session. Create it with :meth:`connect`; commands must not run concurrently.

    Message bodies (``retr``/``top``) are dot-unstuffed and every line is returned with a
    CRLF ending; a bare LF on the wire is normalised to CRLF, all other bytes are kept.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float,
        max_line: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._max_line = max_line
        self._buf = bytearray()
        self._busy = False
        self._closed = False
        self._marked = False  # a DELE may have marked a message since login or RSET
        self.greeting = ""
        self.capabilities: dict[str, list[str]] = {}
        self.server: tuple[str | None, int | None] = (None, None)  # host, port (for spans)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: Literal["implicit", "starttls", "plain"],
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 -- the session's per-command deadline
        max_line: int = 1024 * 1024,
    ) -> Pop3Client:
        """Connect, read the greeting and CAPA; with ``starttls`` upgrade via STLS first."""
        if tls not in ("implicit", "starttls", "plain"):
            raise ValueError(f"unknown tls mode {tls!r}")
        ctx = None if tls == "plain" else (ssl_context or ssl.create_default_context())
        hostname = server_hostname or host
        implicit = tls == "implicit"
        try:
            with mail_command("pop3", "CONNECT", host, port):
                async with asyncio.timeout(timeout):
                    reader, writer = await asyncio.open_connection(
                        host,
                        port,
                        ssl=ctx if implicit else None,
                        server_hostname=hostname if implicit else None,
                        limit=4 * _READ_SIZE,
                    )
        except TimeoutError as exc:
            raise Pop3TimeoutError(f"connect to {host}:{port} timed out") from exc
        except ssl.SSLError as exc:
            raise Pop3TLSError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        except OSError as exc:
            raise Pop3ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        client = cls(reader, writer, timeout=timeout, max_line=max_line)
        client.server = (host, port)
        try:
            async with client._op("GREETING"):
                client.greeting = await client._ok(Pop3ProtocolError, "server refused session")
            await client.capa()
            if ctx is not None and tls == "starttls":
                await client._starttls(ctx, hostname)
                await client.capa()  # RFC 2595: capabilities may change after TLS
        except BaseException:
            client.abort()
            raise
        return client

    async def __aenter__(self) -> Pop3Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self._closed:
            await self.quit()
        else:
            await self.aclose_without_quit()

    # -- commands ---------------------------------------------------------------------------

    async def capa(self) -> dict[str, list[str]]:
        """Fetch CAPA into ``capabilities`` (empty if the server does not support CAPA)."""
        async with self._op("CAPA"):
            await self._send("CAPA")
            kind, text = await self._reply_line()
            caps: dict[str, list[str]] = {}
            if kind == "+":
                raise self._fatal(Pop3ProtocolError("unexpected continuation", reply=text))
            if kind == "+OK":
                for raw in await self._listing():
                    words = raw.decode("utf-8", "replace").split()
                    if words:
                        name = words[0].upper()
                        args = [w.upper() for w in words[1:]] if name == "SASL" else words[1:]
                        caps[name] = args
        self.capabilities = caps
        return caps

    async def login(self, user: str, password: str) -> None:
        """Authenticate with SASL PLAIN when offered, otherwise USER/PASS."""
        if any(c in s for s in (user, password) for c in "\r\n\0"):
            raise ValueError("user name and password must not contain CR, LF or NUL")
        if "PLAIN" in self.capabilities.get("SASL", []):
            raw = f"\0{user}\0{password}".encode()
            await self._sasl("PLAIN", base64.b64encode(raw).decode("ascii"), (password,))
            return
        async with self._op("USER"):
            await self._send(f"USER {user}")
            await self._ok(Pop3AuthError, "USER rejected", (password,))
            await self._send(f"PASS {password}")
            await self._ok(Pop3AuthError, "authentication failed", (password,))

    async def auth_xoauth2(self, user: str, token: str) -> None:
        """Authenticate with SASL XOAUTH2 using an OAuth 2.0 bearer token."""
        if any(c in s for s in (user, token) for c in "\r\n\x01"):
            raise ValueError("user name and token must not contain CR, LF or ^A")
        raw = f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
        await self._sasl("XOAUTH2", base64.b64encode(raw).decode("ascii"), (token,))

    async def stat(self) -> tuple[int, int]:
        """Return (message count, maildrop size in octets)."""
        async with self._op("STAT"):
            await self._send("STAT")
            words = (await self._ok(Pop3ProtocolError, "STAT failed")).split()
        try:
            return int(words[0]), int(words[1])
        except (IndexError, ValueError):
            raise Pop3ProtocolError("malformed STAT reply", reply=" ".join(words)) from None

    async def list(self) -> dict[int, int]:
        """Return {message number: size in octets} for all messages not marked deleted."""
        async with self._op("LIST"):
            await self._send("LIST")
            await self._ok(Pop3ProtocolError, "LIST failed")
            lines = await self._listing()
        return {n: _int(v, "LIST") for n, v in _pairs(lines, "LIST")}

    async def list_one(self, n: int) -> int:
        """The size of message ``n``. A reply that is not one "n size" line (some servers
        answer with the whole multi-line listing) drops the connection: the rest of such a
        reply would be read as the next command's answer. :meth:`list` is the safe choice."""
        _check_msgno(n)
        async with self._op("LIST"):
            await self._send(f"LIST {n}")
            text = await self._ok(Pop3NoSuchMessage, f"LIST {n} failed")
            return int(self._single(text, "LIST", numeric=True))

    async def uidl(self) -> dict[int, str]:
        """Return {message number: unique id} for all messages not marked deleted."""
        async with self._op("UIDL"):
            await self._send("UIDL")
            await self._ok(Pop3ProtocolError, "UIDL failed")
            lines = await self._listing()
        return dict(_pairs(lines, "UIDL"))

    async def uidl_one(self, n: int) -> str:
        """The unique id of message ``n``; a malformed reply drops the connection, as for
        :meth:`list_one`."""
        _check_msgno(n)
        async with self._op("UIDL"):
            await self._send(f"UIDL {n}")
            text = await self._ok(Pop3NoSuchMessage, f"UIDL {n} failed")
            return self._single(text, "UIDL")

    async def top(self, n: int, lines: int = 0, *, max_bytes: int, truncate: bool = False) -> bytes:
        """Return the headers plus ``lines`` body lines, at most ``max_bytes`` of them.

        A longer reply drops the connection (:class:`Pop3ProtocolError`), or with
        ``truncate`` returns the whole lines that fit in ``max_bytes`` and reads the rest
        to its terminator, discarding it, so the session stays usable. The timeout
        applies to each read, not to the whole reply.
        """
        _check_msgno(n)
        if lines < 0:
            raise ValueError("lines must be >= 0")
        out = bytearray()
        full = False
        async with contextlib.aclosing(self._chunked(f"TOP {n} {lines}", _READ_SIZE)) as reply:
            async for chunk in reply:
                if full:
                    continue  # read to the terminator, discarding
                out += chunk
                if len(out) > max_bytes:
                    if not truncate:
                        raise self._fatal(Pop3ProtocolError(f"TOP reply exceeds {max_bytes} bytes"))
                    cut = out.rfind(b"\r\n", 0, max_bytes)
                    del out[cut + 2 if cut >= 0 else 0 :]
                    full = True
        return bytes(out)

    async def tops(self, numbers: Sequence[int], *, max_bytes: int) -> dict[int, bytes | None]:
        """``TOP n 0`` of each message, cut to whole lines within ``max_bytes`` as
        :meth:`top` with ``truncate`` does; None where the server answered -ERR.

        With PIPELINING (RFC 2449 6.6) the commands go out in one write and the replies
        are read in order: one round trip instead of one per message. Without it, one
        after the other. The timeout applies to each read.
        """
        for n in numbers:
            _check_msgno(n)
        out: dict[int, bytes | None] = {}
        if "PIPELINING" not in self.capabilities or len(numbers) < 2:
            for n in numbers:
                try:
                    out[n] = await self.top(n, 0, max_bytes=max_bytes, truncate=True)
                except Pop3NoSuchMessage:
                    out[n] = None
            return out
        self._begin()
        pending = len(numbers)
        try:
            async with self._guard():
                self._writer.write(b"".join(b"TOP %d 0\r\n" % n for n in numbers))
                await self._writer.drain()
            for n in numbers:
                async with self._guard():
                    kind, text = await self._reply_line()
                if kind == "-ERR":
                    out[n] = None
                    pending -= 1
                    continue
                if kind != "+OK":
                    raise self._fatal(Pop3ProtocolError("TOP failed", reply=text[:200]))
                head = bytearray()
                room = max_bytes
                while (line := await self._body_line(self._max_line, timed=True)) is not None:
                    if len(head) + len(line) + 2 <= room:
                        head += line + b"\r\n"
                    else:
                        room = -1  # cut to whole lines: the rest is read and dropped
                out[n] = bytes(head)
                pending -= 1
        finally:
            self._busy = False
            if pending:
                self._break()  # replies still on the wire: the session is out of step
        return out

    def retr(self, n: int, *, chunk_size: int = 65536) -> AsyncGenerator[bytes, None]:
        """Stream message ``n`` in chunks of at most ``chunk_size`` bytes.

        The timeout applies to each read, not to the whole message. The last chunk is only
        yielded once the terminating "." line has been read, so a consumer that stops after
        the last byte leaves the session usable. Closing the generator earlier drops the
        connection (no QUIT); use ``contextlib.aclosing`` so that happens promptly.
        """
        _check_msgno(n)
        _check_chunk_size(chunk_size)
        return self._chunked(f"RETR {n}", chunk_size)

    def top_stream(
        self, n: int, lines: int, *, chunk_size: int = 65536
    ) -> AsyncGenerator[bytes, None]:
        """Stream ``TOP n lines`` like :meth:`retr` streams RETR (same chunks, same rules).

        RFC 1939: a line count past the end of the body returns the whole message, and
        unlike RETR, TOP does not make servers such as Dovecot set \\Seen.
        """
        _check_msgno(n)
        if type(lines) is not int or lines < 0:
            raise ValueError("lines must be an int >= 0")
        _check_chunk_size(chunk_size)
        return self._chunked(f"TOP {n} {lines}", chunk_size)

    async def dele(self, n: int) -> None:
        """Mark message ``n`` deleted; it is removed only by a successful :meth:`quit`.

        -ERR (no such message, already deleted) raises :class:`Pop3NoSuchMessage` and
        leaves the session usable.
        """
        _check_msgno(n)
        marked = self._marked
        self._marked = True  # from the moment it is sent, until the reply says otherwise
        try:
            async with self._op("DELE"):
                await self._send(f"DELE {n}")
                await self._ok(Pop3NoSuchMessage, f"DELE {n} failed")
        except Pop3Error:
            if not self._closed:  # a clean -ERR: this DELE marked nothing
                self._marked = marked
            raise

    async def rset(self) -> None:
        """Unmark every message marked by DELE in this session."""
        async with self._op("RSET"):
            await self._send("RSET")
            await self._ok(Pop3ProtocolError, "RSET failed")
        self._marked = False

    async def noop(self) -> None:
        async with self._op("NOOP"):
            await self._send("NOOP")
            await self._ok(Pop3ProtocolError, "NOOP failed")

    async def quit(self) -> None:
        """Send QUIT (this commits DELE marks) and close; -ERR raises :class:`Pop3Error`."""
        try:
            async with self._op("QUIT"):
                self._marked = False  # committed or not, nothing can withdraw them after QUIT
                await self._send("QUIT")
                await self._ok(Pop3Error, "QUIT failed, deletions may not have been applied")
        finally:
            self._closed = True
            self._writer.close()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._writer.wait_closed()
            except (TimeoutError, OSError):
                abort_transport(self._writer.transport)

    def abort(self) -> None:
        """Drop the connection now, without QUIT and without RSET: an RFC 1939 server
        discards pending DELE marks. :meth:`aclose_without_quit` also sends RSET."""
        self._closed = True
        abort_transport(self._writer.transport)

    async def aclose_without_quit(self) -> None:
        """End the session without QUIT, so that nothing is committed, and wait until the
        transport has been closed.

        When a DELE may have marked a message (even one whose reply never came: a timeout),
        RSET goes first, best effort, within a short grace: RFC 1939 servers discard marks
        of a session that ends without QUIT anyway, but some (GreenMail) keep them as
        \\Deleted flags that a later QUIT of any session would expunge. The RSET is
        followed by a graceful close (FIN, or TLS close_notify), so that the server reads it
        before the end of the stream, and the replies are read (not left to reset the
        connection) until the server closes or the grace is over.
        """
        transport = self._writer.transport
        if self._marked and not transport.is_closing():
            self._marked = False
            self._closed = True
            try:
                with contextlib.suppress(Exception):  # best effort: the drop follows anyway
                    async with asyncio.timeout(min(self._timeout, _RSET_GRACE)):
                        self._writer.write(b"RSET\r\n")
                        if self._writer.can_write_eof():
                            self._writer.write_eof()
                            while await self._reader.read(_READ_SIZE):
                                pass  # the late replies and RSET's, until the server closes
                        else:  # TLS: close_notify after RSET; wait for the server's close
                            self._writer.close()
                            await self._writer.wait_closed()
            finally:
                self.abort()
        self.abort()
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self._timeout):
                await self._writer.wait_closed()

    # -- internals --------------------------------------------------------------------------

    def _break(self) -> None:
        """The session is out of step or gone: refuse further commands and drop the
        connection, unless a DELE mark may be pending; then the connection stays for
        :meth:`aclose_without_quit` to withdraw it with RSET first."""
        self._closed = True
        if not self._marked:
            abort_transport(self._writer.transport)

    def _begin(self) -> None:
        if self._closed:
            raise Pop3DisconnectedError("the POP3 connection is closed or unusable")
        if self._busy:
            raise RuntimeError("another POP3 command (or an unfinished retr()) is in progress")
        self._busy = True

    @contextlib.asynccontextmanager
    async def _op(self, command: str) -> AsyncIterator[None]:
        """One command: exclusive, under the deadline, errors converted, observed."""
        self._begin()
        try:
            with mail_command("pop3", command, *self.server):
                async with self._guard():
                    yield
        finally:
            self._busy = False

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except Pop3Error:
            raise
        except TimeoutError as exc:
            self._break()
            raise Pop3TimeoutError(f"no reply within {self._timeout} s") from exc
        except ssl.SSLError as exc:
            self._break()
            raise Pop3TLSError(f"TLS failure: {exc}") from exc
        except OSError as exc:
            self._break()
            raise Pop3DisconnectedError(f"connection lost: {exc}") from exc
        except BaseException:  # cancelled mid-command: the session state is unknown
            self._break()
            raise

    def _single(self, text: str, what: str, *, numeric: bool = False) -> str:
        """The value of a one-line "n value" reply; anything else (such as the first line
        of a multi-line listing) means the session is out of step: it is dropped."""
        try:
            value = _pair(text, what)[1]
            if numeric:
                _int(value, what)
        except Pop3ProtocolError as exc:
            raise self._fatal(exc) from None
        return value

    def _fatal(self, exc: Pop3Error) -> Pop3Error:
        self._break()
        return exc

    async def _send(self, line: str) -> None:
        self._writer.write(line.encode("utf-8") + b"\r\n")
        await self._writer.drain()

    async def _fill(self) -> None:
        data = await self._reader.read(_READ_SIZE)
        if not data:
            raise self._fatal(Pop3DisconnectedError("connection closed by the server"))
        self._buf += data

    async def _readline(self, limit: int, *, timed: bool = False) -> bytes:
        """Next line without its LF (and one trailing CR); at most ``limit`` bytes."""
        start = 0
        while (end := self._buf.find(b"\n", start)) < 0 and len(self._buf) <= limit + 1:
            start = len(self._buf)
            if timed:
                async with self._guard():
                    await self._fill()
            else:
                await self._fill()
        line = bytes(self._buf[:end]) if end >= 0 else b""
        if line.endswith(b"\r"):
            line = line[:-1]
        if end < 0 or len(line) > limit:
            raise self._fatal(Pop3ProtocolError(f"line longer than {limit} bytes"))
        del self._buf[: end + 1]
        return line

    async def _reply_line(self, secrets: tuple[str, ...] = ()) -> tuple[str, str]:
        """Read a reply line; return ("+OK" | "-ERR" | "+", the redacted text)."""
        raw = await self._readline(_MAX_RESPONSE_LINE)
        text = _redact(raw.decode("utf-8", "replace"), secrets)
        for kind in ("+OK", "-ERR"):
            if raw == kind.encode() or raw.startswith(kind.encode() + b" "):
                return kind, text
        if raw == b"+" or raw.startswith(b"+ "):
            return "+", text
        raise self._fatal(Pop3ProtocolError("malformed reply", reply=text[:200]))

    def _error(self, default: type[Pop3Error], what: str, text: str) -> Pop3Error:
        match = _RESP_CODE.match(text)
        cls = _CODE_ERRORS.get(match.group(1).upper(), default) if match else default
        if not match and default is Pop3AuthError and says_temporary(text):
            # a refused login without a code whose words say "not now" (Cyrus: "-ERR
            # Too many open connections (11 of 10 for USER)"): not a refused password
            cls = Pop3TempError
        err = cls(what, reply=text[:512])
        err.mail_outcome = "refused"  # the server answered -ERR
        return err

    async def _ok(self, err: type[Pop3Error], what: str, secrets: tuple[str, ...] = ()) -> str:
        kind, text = await self._reply_line(secrets)
        if kind == "+OK":
            return text[3:].strip()
        if kind == "-ERR":
            raise self._error(err, what, text)
        raise self._fatal(Pop3ProtocolError("unexpected continuation", reply=text[:200]))

    async def _body_line(self, limit: int, *, timed: bool = False) -> bytes | None:
        """Next dot-unstuffed line of a multi-line reply, or None at the terminator."""
        line = await self._readline(limit, timed=timed)
        if line.startswith(b"."):
            return None if line == b"." else line[1:]
        return line

    async def _listing(self) -> _Lines:
        lines: _Lines = []
        total = 0
        while (line := await self._body_line(_MAX_RESPONSE_LINE)) is not None:
            total += len(line) + 2
            if total > _MAX_LISTING_BYTES:
                raise self._fatal(Pop3ProtocolError("multi-line reply too large"))
            lines.append(line)
        return lines

    async def _chunked(self, command: str, chunk_size: int) -> AsyncGenerator[bytes, None]:
        """``command``'s multi-line reply in chunks of at most ``chunk_size`` bytes, each line
        with CRLF; the last chunk only once the terminator has been read."""
        out = bytearray()
        self._begin()
        in_reply = False
        with mail_command("pop3", command.split(" ", 1)[0], *self.server):
            try:
                async with self._guard():
                    await self._send(command)
                    await self._ok(Pop3NoSuchMessage, f"{command} failed")
                in_reply = True
                while (line := await self._body_line(self._max_line, timed=True)) is not None:
                    out += line + b"\r\n"
                    while len(out) > chunk_size:  # keep >= 1 byte back until the terminator
                        yield bytes(out[:chunk_size])
                        del out[:chunk_size]
                in_reply = False
            finally:
                self._busy = False
                if in_reply:
                    self._break()
            if out:
                yield bytes(out)

    async def _sasl(self, mech: str, payload: str, secrets: tuple[str, ...]) -> None:
        secrets = (*secrets, payload)
        what = f"AUTH {mech} failed"
        async with self._op("AUTH"):
            if len(f"AUTH {mech} {payload}") <= _MAX_COMMAND_LINE - 2:
                await self._send(f"AUTH {mech} {payload}")
            else:  # RFC 5034: too long for an initial response, wait for the "+ " prompt
                await self._send(f"AUTH {mech}")
                kind, text = await self._reply_line(secrets)
                if kind == "-ERR":
                    raise self._error(Pop3AuthError, what, text)
                if kind != "+":
                    raise self._fatal(Pop3ProtocolError(what, reply=text))
                await self._send(payload)
            kind, text = await self._reply_line(secrets)
            if kind == "+":  # e.g. XOAUTH2 error details; an empty response ends the exchange
                detail = _decode_challenge(text[1:].strip())
                await self._send("")
                kind, text = await self._reply_line(secrets)
                if kind == "-ERR" and detail:
                    text = f"{text} ({_redact(detail, secrets)[:300]})"
            if kind == "-ERR":
                raise self._error(Pop3AuthError, what, text)
            if kind != "+OK":
                raise self._fatal(Pop3ProtocolError(what, reply=text))

    async def _starttls(self, ctx: ssl.SSLContext, hostname: str) -> None:
        if "STLS" not in self.capabilities:
            raise Pop3TLSError("server does not offer STLS")
        async with self._op("STLS"):
            await self._send("STLS")
            await self._ok(Pop3TLSError, "STLS refused")
            # Anything already buffered was sent in clear text and could be injected.
            if self._buf or getattr(self._reader, "_buffer", bytearray()):
                raise self._fatal(Pop3TLSError("clear-text data received after STLS reply"))
            await self._writer.start_tls(ctx, server_hostname=hostname)


def _decode_challenge(b64: str) -> str:
    try:
        return base64.b64decode(b64, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return b64


def _pair(text: str, what: str) -> tuple[int, str]:
    words = text.split()
    if len(words) < 2:
        raise Pop3ProtocolError(f"malformed {what} entry", reply=text[:200])
    return _int(words[0], what), words[1]


def _pairs(lines: list[bytes], what: str) -> list[tuple[int, str]]:
    return [_pair(line.decode("utf-8", "replace"), what) for line in lines]


def _int(value: str, what: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise Pop3ProtocolError(f"malformed {what} entry", reply=value[:200])
    return int(value)
