"""Pop3Client against a scripted POP3 server on a real localhost socket (no mocking)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trustme

from service.protocols.pop3.client import (
    Pop3AuthError,
    Pop3Client,
    Pop3ConnectError,
    Pop3DisconnectedError,
    Pop3Error,
    Pop3InUseError,
    Pop3NoSuchMessage,
    Pop3ProtocolError,
    Pop3TempError,
    Pop3TimeoutError,
    Pop3TLSError,
)

PAUSE = 0.02  # between the writes of a split reply, so that each one is a separate read


# -- the scripted server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    line: bytes  # the exact command line the client must send (without CRLF)


@dataclass(frozen=True)
class Send:
    chunks: tuple[bytes, ...]  # written one by one, with a pause in between
    pause: float = PAUSE


@dataclass(frozen=True)
class WaitFor:
    event: asyncio.Event


HANG = "hang"  # read until the client goes away, never answer
CLOSE = "close"  # close the connection right now
STARTTLS = "starttls"  # upgrade the server side of the connection to TLS

Step = Expect | Send | WaitFor | str


def send(*chunks: bytes, pause: float = PAUSE) -> Send:
    return Send(chunks, pause)


def hello(caps: bytes = b"USER\r\nTOP\r\nUIDL\r\n") -> list[Step]:
    return [send(b"+OK POP3 ready\r\n"), Expect(b"CAPA"), send(b"+OK\r\n" + caps + b".\r\n")]


QUIT = [Expect(b"QUIT"), send(b"+OK bye\r\n")]


@dataclass
class ScriptedServer:
    script: list[Step]
    tls_ctx: ssl.SSLContext | None = None
    port: int = 0
    received: list[bytes] = field(default_factory=list)  # every line, CRLF stripped
    over_tls: list[bool] = field(default_factory=list)  # per received line
    errors: list[str] = field(default_factory=list)
    started: bool = False  # False if e.g. the implicit TLS handshake failed
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def _readline(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        line = await reader.readline()
        if line:
            if not line.endswith(b"\r\n"):
                self.errors.append(f"line not CRLF-terminated: {line!r}")
            self.received.append(line.removesuffix(b"\r\n"))
            self.over_tls.append(writer.get_extra_info("ssl_object") is not None)
        return line

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.started = True
        try:
            for step in self.script:
                if isinstance(step, Expect):
                    line = await self._readline(reader, writer)
                    if line != step.line + b"\r\n":
                        self.errors.append(f"expected {step.line!r}, got {line!r}")
                        return
                elif isinstance(step, Send):
                    for i, chunk in enumerate(step.chunks):
                        if i:
                            await asyncio.sleep(step.pause)
                        writer.write(chunk)
                        await writer.drain()
                elif isinstance(step, WaitFor):
                    try:
                        await asyncio.wait_for(step.event.wait(), 3)
                    except TimeoutError:
                        self.errors.append("client never signalled (not streaming?)")
                        return
                elif step == HANG:
                    await reader.read()
                elif step == CLOSE:
                    return
                elif step == STARTTLS:
                    assert self.tls_ctx is not None
                    await writer.start_tls(self.tls_ctx)
            async with asyncio.timeout(5):  # record whatever else the client sends, e.g. QUIT
                while await self._readline(reader, writer):
                    pass
        except (OSError, TimeoutError) as exc:
            self.errors.append(f"server I/O: {exc!r}")
        finally:
            writer.transport.abort()
            self.done.set()

    async def finished(self) -> list[bytes]:
        await asyncio.wait_for(self.done.wait(), 5)
        return self.received


@contextlib.asynccontextmanager
async def serve(
    *script: Step | list[Step],
    ssl_ctx: ssl.SSLContext | None = None,
    tls_ctx: ssl.SSLContext | None = None,
) -> AsyncIterator[ScriptedServer]:
    flat: list[Step] = []
    for item in script:
        flat.extend(item if isinstance(item, list) else [item])
    scripted = ScriptedServer(flat, tls_ctx)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0, ssl=ssl_ctx)
    scripted.port = server.sockets[0].getsockname()[1]
    try:
        yield scripted
    finally:
        server.close()
        await server.wait_closed()
        if scripted.started:
            await asyncio.wait_for(scripted.done.wait(), 5)


async def connect(srv: ScriptedServer, **kwargs: object) -> Pop3Client:
    kwargs.setdefault("tls", "plain")
    kwargs.setdefault("timeout", 2.0)
    return await Pop3Client.connect("127.0.0.1", srv.port, **kwargs)  # type: ignore[arg-type]


async def retr_all(client: Pop3Client, n: int, **kwargs: int) -> list[bytes]:
    async with contextlib.aclosing(client.retr(n, **kwargs)) as chunks:
        return [chunk async for chunk in chunks]


# -- TLS material -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


# -- login --------------------------------------------------------------------------------------


async def test_user_pass_login_parses_capabilities_and_quits() -> None:
    caps = b"USER\r\nSASL login\r\nTOP\r\nIMPLEMENTATION Dovecot x\r\n"
    async with serve(
        hello(caps),
        Expect(b"USER bob"),
        send(b"+OK\r\n"),
        Expect(b"PASS s3cret"),
        send(b"+OK Logged in.\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        assert client.greeting == "POP3 ready"
        assert client.capabilities == {
            "USER": [],
            "SASL": ["LOGIN"],
            "TOP": [],
            "IMPLEMENTATION": ["Dovecot", "x"],
        }
        await client.login("bob", "s3cret")
        await client.quit()
        assert await srv.finished() == [b"CAPA", b"USER bob", b"PASS s3cret", b"QUIT"]
        assert srv.errors == []


async def test_auth_plain_is_used_when_offered() -> None:
    payload = base64.b64encode("\0bob\0pässwörd".encode()).decode()
    async with serve(
        hello(b"SASL PLAIN LOGIN\r\nUSER\r\n"),
        Expect(f"AUTH PLAIN {payload}".encode()),
        send(b"+OK Logged in.\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        await client.login("bob", "pässwörd")
        await client.quit()
        assert await srv.finished() == [b"CAPA", f"AUTH PLAIN {payload}".encode(), b"QUIT"]
        assert srv.errors == []


async def test_capa_unsupported_gives_empty_capabilities() -> None:
    async with serve(
        send(b"+OK hi\r\n"),
        Expect(b"CAPA"),
        send(b"-ERR unknown command\r\n"),
        Expect(b"USER bob"),
        send(b"+OK\r\n"),
        Expect(b"PASS pw"),
        send(b"+OK\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        assert client.capabilities == {}
        await client.login("bob", "pw")
        await client.quit()
        assert srv.errors == []


async def test_pass_in_use_raises_in_use_error() -> None:
    async with serve(
        hello(),
        Expect(b"USER bob"),
        send(b"+OK\r\n"),
        Expect(b"PASS pw"),
        send(b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n"),
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3InUseError) as info:
            await client.login("bob", "pw")
        assert info.value.code == "IN-USE"
        assert "locked" in str(info.value)
        await client.aclose_without_quit()


@pytest.mark.parametrize(
    ("reply", "exc_type"),
    [
        (b"-ERR [AUTH] Invalid password hunter2!", Pop3AuthError),
        (b"-ERR Authentication failed.", Pop3AuthError),
        (b"-ERR [SYS/TEMP] Try again later", Pop3TempError),
        (b"-ERR [LOGIN-DELAY] wait 5 minutes", Pop3TempError),
    ],
)
async def test_pass_rejected_maps_codes_and_never_shows_password(
    reply: bytes, exc_type: type[Pop3Error]
) -> None:
    async with serve(
        hello(),
        Expect(b"USER bob"),
        send(b"+OK\r\n"),
        Expect(b"PASS hunter2!"),
        send(reply + b"\r\n"),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
    ) as srv:
        client = await connect(srv)
        with pytest.raises(exc_type) as info:
            await client.login("bob", "hunter2!")
        exc = info.value
        for text in (str(exc), repr(exc), exc.reply or "", repr(exc.args)):
            assert "hunter2" not in text
        assert exc.reply is not None and exc.reply.startswith("-ERR")
        await client.noop()  # the session is still usable after -ERR
        await client.aclose_without_quit()
        assert srv.errors == []


async def test_auth_plain_failure_redacts_echoed_credentials() -> None:
    payload = base64.b64encode(b"\0bob\0topsecret").decode()
    async with serve(
        hello(b"SASL PLAIN\r\n"),
        Expect(f"AUTH PLAIN {payload}".encode()),
        send(f"-ERR [AUTH] bad {payload} topsecret\r\n".encode()),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3AuthError) as info:
            await client.login("bob", "topsecret")
        assert "topsecret" not in str(info.value)
        assert payload not in str(info.value)
        await client.noop()  # -ERR does not break the session
        client.abort()
        assert await srv.finished() == [b"CAPA", f"AUTH PLAIN {payload}".encode(), b"NOOP"]


# -- XOAUTH2 ------------------------------------------------------------------------------------


def xoauth2(user: str, token: str) -> bytes:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


async def test_xoauth2_initial_response() -> None:
    async with serve(
        hello(b"SASL XOAUTH2\r\n"),
        Expect(b"AUTH XOAUTH2 " + xoauth2("bob@example.com", "ya29.tok")),
        send(b"+OK Welcome\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        await client.auth_xoauth2("bob@example.com", "ya29.tok")
        await client.quit()
        assert srv.errors == []


async def test_xoauth2_long_token_waits_for_continuation() -> None:
    token = "ya29." + "t" * 400  # too long for an initial response (RFC 5034: 255 octets)
    async with serve(
        hello(b"SASL XOAUTH2\r\n"),
        Expect(b"AUTH XOAUTH2"),
        send(b"+ \r\n"),
        Expect(xoauth2("bob", token)),
        send(b"+OK Welcome\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        await client.auth_xoauth2("bob", token)
        await client.quit()
        assert srv.errors == []


async def test_xoauth2_failure_with_error_challenge() -> None:
    detail = b'{"status":"401","schemes":"bearer"}'
    async with serve(
        hello(b"SASL XOAUTH2\r\n"),
        Expect(b"AUTH XOAUTH2 " + xoauth2("bob", "expired")),
        send(b"+ " + base64.b64encode(detail) + b"\r\n"),
        Expect(b""),  # the client answers the error challenge with an empty line
        send(b"-ERR [AUTH] Authentication failed\r\n"),
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3AuthError) as info:
            await client.auth_xoauth2("bob", "expired")
        assert '"status":"401"' in str(info.value)
        assert "expired" not in str(info.value)
        client.abort()
        assert (await srv.finished())[-1] == b""
        assert srv.errors == []


# -- maildrop commands --------------------------------------------------------------------------


async def test_stat_list_uidl_parsing() -> None:
    async with serve(
        hello(),
        Expect(b"STAT"),
        send(b"+OK 2 320\r\n"),
        Expect(b"LIST"),
        send(b"+OK 2 messages\r\n1 120\r\n", b"2 200\r\n.\r\n"),
        Expect(b"LIST 2"),
        send(b"+OK 2 200\r\n"),
        Expect(b"UIDL"),
        send(b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n"),
        Expect(b"UIDL 1"),
        send(b"+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n"),
        Expect(b"LIST 9"),
        send(b"-ERR no such message\r\n"),
        Expect(b"RSET"),
        send(b"+OK\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        assert await client.stat() == (2, 320)
        assert await client.list() == {1: 120, 2: 200}
        assert await client.list_one(2) == 200
        assert await client.uidl() == {1: "whqtswO00WBw418f9t5JxYwZ", 2: "QhdPYR:00WBw1Ph7x7"}
        assert await client.uidl_one(1) == "whqtswO00WBw418f9t5JxYwZ"
        with pytest.raises(Pop3NoSuchMessage):
            await client.list_one(9)
        await client.rset()
        await client.quit()
        assert srv.errors == []


async def test_malformed_replies_raise_protocol_error() -> None:
    async with serve(
        hello(),
        Expect(b"STAT"),
        send(b"+OK lots\r\n"),
        Expect(b"NOOP"),
        send(b"HELLO there\r\n"),
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3ProtocolError):
            await client.stat()
        with pytest.raises(Pop3ProtocolError):
            await client.noop()
        with pytest.raises(Pop3DisconnectedError):  # an unparseable status line kills it
            await client.noop()


async def test_top_returns_unstuffed_headers() -> None:
    async with serve(
        hello(),
        Expect(b"TOP 1 0"),
        send(b"+OK\r\nSubject: hi\r\n", b"X-Dots: ..x\r\n\r\n", b".\r\n"),
        Expect(b"TOP 1 0"),
        send(b"+OK\r\nSubject: " + b"a" * 200 + b"\r\n\r\n.\r\n"),
    ) as srv:
        client = await connect(srv)
        assert await client.top(1, max_bytes=1000) == b"Subject: hi\r\nX-Dots: ..x\r\n\r\n"
        with pytest.raises(Pop3ProtocolError, match="exceeds 100 bytes"):
            await client.top(1, max_bytes=100)
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()


async def test_top_truncate_keeps_the_lines_that_fit_and_the_session() -> None:
    head = b"Subject: hi\r\n" + b"".join(b"X-%04d: %s\r\n" % (i, b"v" * 90) for i in range(100))
    wire = head + b"..dotted: x\r\n\r\n"  # about 10 KB, in several writes
    parts = tuple(wire[i : i + 3000] for i in range(0, len(wire), 3000))
    async with serve(
        hello(),
        Expect(b"TOP 1 0"),
        send(b"+OK\r\n", *parts, b".\r\n"),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
        Expect(b"TOP 2 0"),
        send(b"+OK\r\nSubject: small\r\n\r\n.\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        got = await client.top(1, 0, max_bytes=1000, truncate=True)
        assert len(got) <= 1000 and got.endswith(b"\r\n")
        assert got == head[: len(got)] and len(got) > 1000 - 110  # whole lines only
        await client.noop()  # the rest was read to the terminator: in step
        assert await client.top(2, 0, max_bytes=1000, truncate=True) == b"Subject: small\r\n\r\n"
        await client.quit()
        assert srv.errors == []


async def test_tops_pipelines_when_the_server_offers_it() -> None:
    """The server answers only once all three commands arrived: they went out at once."""
    long_head = b"".join(b"X-%03d: %s\r\n" % (i, b"v" * 90) for i in range(30))
    async with serve(
        hello(b"TOP\r\nUIDL\r\nPIPELINING\r\n"),
        Expect(b"TOP 3 0"),
        Expect(b"TOP 2 0"),
        Expect(b"TOP 1 0"),
        send(
            b"+OK\r\nSubject: three\r\n..dotted: x\r\n\r\n.\r\n-ERR no such message\r\n",
            b"+OK\r\n" + long_head + b"\r\n.\r\n",
        ),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        got = await client.tops([3, 2, 1], max_bytes=1000)
        assert got[3] == b"Subject: three\r\n.dotted: x\r\n\r\n" and got[2] is None
        assert len(got[1] or b"") <= 1000 and long_head.startswith(got[1] or b"-")
        assert len(got[1] or b"") > 1000 - 100  # whole lines, cut at the limit
        await client.noop()  # every reply was read to its terminator: in step
        await client.quit()
        assert srv.errors == []


async def test_tops_one_after_the_other_without_pipelining() -> None:
    async with serve(
        hello(),
        Expect(b"TOP 2 0"),
        send(b"+OK\r\nSubject: two\r\n\r\n.\r\n"),
        Expect(b"TOP 1 0"),
        send(b"-ERR gone\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        assert await client.tops([2, 1], max_bytes=1000) == {
            2: b"Subject: two\r\n\r\n",
            1: None,
        }
        await client.quit()
        assert srv.errors == []


async def test_tops_that_stall_drop_the_session() -> None:
    async with serve(
        hello(b"TOP\r\nPIPELINING\r\n"),
        Expect(b"TOP 2 0"),
        Expect(b"TOP 1 0"),
        send(b"+OK\r\nSubject: two\r\n\r\n.\r\n"),
        HANG,
    ) as srv:
        client = await connect(srv, timeout=0.3)
        with pytest.raises(Pop3TimeoutError):
            await client.tops([2, 1], max_bytes=1000)
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()  # a reply is still owed: never read as another's


async def test_top_truncate_reads_under_the_per_read_timeout() -> None:
    async with serve(
        hello(), Expect(b"TOP 1 0"), send(b"+OK\r\n" + b"X-Long: " + b"y" * 3000 + b"\r\n"), HANG
    ) as srv:
        client = await connect(srv, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(Pop3TimeoutError):
            await client.top(1, 0, max_bytes=100, truncate=True)
        assert time.monotonic() - start < 2
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()
        assert await srv.finished() == [b"CAPA", b"TOP 1 0"]


async def test_top_stream_reads_a_whole_message_like_retr() -> None:
    wire = b"+OK\r\nSubject: t\r\n\r\n..x\r\n..\r\n" + b"z" * 150 + b"\r\n.\r\n"
    async with serve(
        hello(),
        Expect(b"TOP 3 999999999"),
        send(wire[:20], wire[20:]),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
        Expect(b"TOP 4 999999999"),
        send(b"-ERR no such message\r\n"),
        QUIT,
    ) as srv:
        client = await connect(srv)
        async with contextlib.aclosing(client.top_stream(3, 999999999, chunk_size=64)) as body:
            chunks = [chunk async for chunk in body]
        assert b"".join(chunks) == b"Subject: t\r\n\r\n.x\r\n.\r\n" + b"z" * 150 + b"\r\n"
        assert max(len(c) for c in chunks) <= 64
        await client.noop()
        with pytest.raises(Pop3NoSuchMessage):  # -ERR: the session stays in step
            async with contextlib.aclosing(client.top_stream(4, 999999999)) as body:
                await anext(body)
        await client.quit()
        assert srv.errors == []


async def test_top_stream_closed_early_drops_the_session() -> None:
    async with serve(
        hello(), Expect(b"TOP 1 999999999"), send(b"+OK\r\n" + b"line\r\n" * 1000), HANG
    ) as srv:
        client = await connect(srv)
        async with contextlib.aclosing(client.top_stream(1, 999999999, chunk_size=100)) as body:
            await anext(body)
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()
        assert await srv.finished() == [b"CAPA", b"TOP 1 999999999"]


async def test_stream_arguments_are_checked_when_called() -> None:
    async with serve(hello(), QUIT) as srv:
        client = await connect(srv)
        with pytest.raises(ValueError):
            client.retr(0)
        with pytest.raises(ValueError):
            client.retr(1, chunk_size=0)
        with pytest.raises(ValueError):
            client.top_stream(1, -1)
        await client.quit()  # nothing was sent: the session is fine


async def test_list_one_answered_with_a_whole_listing_drops_the_session() -> None:
    # Such a reply's other lines would be read as the next command's answer.
    async with serve(
        hello(), Expect(b"LIST 1"), send(b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n"), HANG
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3ProtocolError):
            await client.list_one(1)
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()
        assert await srv.finished() == [b"CAPA", b"LIST 1"]


# -- RETR ---------------------------------------------------------------------------------------


async def test_retr_unstuffs_dots_across_tcp_writes() -> None:
    chunks = (
        b"+OK 60 octets\r\nSubject: t\r\n\r\n..hidden",  # "..hidden dot" split after the dots
        b" dot\r\n.",  # ".x" stuffed as "..x" split between the two dots
        b".x\r\n..\r\nend\r\n.",  # a lone "." line is stuffed as ".."; then the terminator ...
        b"\r\n",  # ... split between "." and CRLF
    )
    async with serve(
        hello(), Expect(b"RETR 1"), send(*chunks), Expect(b"NOOP"), send(b"+OK\r\n")
    ) as srv:
        client = await connect(srv)
        body = b"".join(await retr_all(client, 1))
        assert body == b"Subject: t\r\n\r\n.hidden dot\r\n.x\r\n.\r\nend\r\n"
        await client.noop()  # the terminator was consumed: the session is in sync
        client.abort()
        assert srv.errors == []


async def test_retr_byte_by_byte_delivery() -> None:
    wire = b"+OK\r\na\r\n..b\r\n..\r\n...\r\nc.\r\n\r\n.\r\n"
    one_byte_writes = tuple(wire[i : i + 1] for i in range(len(wire)))
    async with serve(
        hello(),
        Expect(b"RETR 3"),
        send(*one_byte_writes, pause=0.001),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
    ) as srv:
        client = await connect(srv)
        assert b"".join(await retr_all(client, 3)) == b"a\r\n.b\r\n.\r\n..\r\nc.\r\n\r\n"
        await client.noop()
        client.abort()
        assert srv.errors == []


async def test_retr_preserves_8bit_bytes_and_normalises_bare_lf() -> None:
    high = bytes(range(0x80, 0x100))
    wire = b"+OK\r\n" + high + b"\r\n\x00\tnul\r\nbare\nlf\r\nx\r\r\n.\r\n"
    async with serve(hello(), Expect(b"RETR 2"), send(wire)) as srv:
        client = await connect(srv)
        body = b"".join(await retr_all(client, 2))
        assert body == high + b"\r\n\x00\tnul\r\nbare\r\nlf\r\nx\r\r\n"
        client.abort()


async def test_retr_streams_a_large_message_in_bounded_chunks() -> None:
    lines = [(b"." if i % 100 == 0 else b"") + b"%06d" % i + b"x" * 1000 for i in range(5000)]
    expected = b"".join(line + b"\r\n" for line in lines)
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    half = len(wire) // 2
    first_chunk_seen = asyncio.Event()
    async with (
        serve(
            hello(),
            Expect(b"RETR 1"),
            send(b"+OK\r\n" + wire[:half]),
            WaitFor(first_chunk_seen),  # only sends the rest once the client has yielded data
            send(wire[half:] + b".\r\n"),
            QUIT,
        ) as srv
    ):
        client = await connect(srv)
        sizes = []
        digest = bytearray()
        async with contextlib.aclosing(client.retr(1, chunk_size=65536)) as chunks:
            async for chunk in chunks:
                first_chunk_seen.set()
                sizes.append(len(chunk))
                digest += chunk
        assert len(expected) > 5_000_000
        assert digest == expected
        assert max(sizes) <= 65536
        assert len(sizes) >= len(expected) // 65536
        await client.quit()
        assert srv.errors == []


async def test_retr_consumer_stopping_at_last_byte_keeps_session() -> None:
    body = b"x" * 98 + b"\r\n"  # 2 * chunk_size: the last chunk ends exactly on a boundary
    async with serve(
        hello(),
        Expect(b"RETR 1"),
        send(b"+OK\r\n" + body + b".\r\n"),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
    ) as srv:
        client = await connect(srv)
        got = b""
        async with contextlib.aclosing(client.retr(1, chunk_size=50)) as chunks:
            async for chunk in chunks:
                got += chunk
                if len(got) == len(body):  # like a reader that knows the size from LIST
                    break
        assert got == body
        await client.noop()
        client.abort()
        assert srv.errors == []


async def test_retr_no_such_message_keeps_session() -> None:
    async with serve(
        hello(),
        Expect(b"RETR 7"),
        send(b"-ERR no such message\r\n"),
        Expect(b"NOOP"),
        send(b"+OK\r\n"),
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3NoSuchMessage):
            await retr_all(client, 7)
        await client.noop()
        client.abort()


async def test_retr_closed_early_breaks_session_without_quit() -> None:
    async with serve(
        hello(), Expect(b"RETR 1"), send(b"+OK\r\n" + b"line\r\n" * 1000), HANG
    ) as srv:
        client = await connect(srv)
        gen = client.retr(1, chunk_size=100)
        assert await anext(gen) == b"line\r\n" * 16 + b"line"
        with pytest.raises(RuntimeError, match="in progress"):
            await client.noop()  # the reply is still being read
        await gen.aclose()
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()
        assert await srv.finished() == [b"CAPA", b"RETR 1"]


async def test_connection_dropped_mid_retr() -> None:
    async with serve(
        hello(), Expect(b"RETR 1"), send(b"+OK\r\nSubject: x\r\n\r\npart"), CLOSE
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3DisconnectedError) as info:
            await retr_all(client, 1)
        assert isinstance(info.value, ConnectionError)
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()


async def test_overlong_lines_raise_protocol_error() -> None:
    async with serve(hello(), Expect(b"RETR 1"), send(b"+OK\r\n" + b"a" * 5000), HANG) as srv:
        client = await connect(srv, max_line=1024)
        with pytest.raises(Pop3ProtocolError, match="longer than 1024"):
            await retr_all(client, 1)
        assert await srv.finished() == [b"CAPA", b"RETR 1"]
    async with serve(hello(), Expect(b"NOOP"), send(b"+OK " + b"z" * 20000 + b"\r\n")) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3ProtocolError, match="longer than"):
            await client.noop()
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()


# -- timeouts and connection errors ----------------------------------------------------------------


async def test_server_hang_times_out_and_breaks_session() -> None:
    async with serve(hello(), Expect(b"STAT"), HANG) as srv:
        client = await connect(srv, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(Pop3TimeoutError) as info:
            await client.stat()
        assert time.monotonic() - start < 2
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()
        assert await srv.finished() == [b"CAPA", b"STAT"]  # closed, and no QUIT


async def test_hang_mid_retr_times_out() -> None:
    async with serve(hello(), Expect(b"RETR 1"), send(b"+OK\r\nSubject: x\r\n"), HANG) as srv:
        client = await connect(srv, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(Pop3TimeoutError):
            await retr_all(client, 1)
        assert time.monotonic() - start < 2


async def test_silent_server_times_out_on_greeting() -> None:
    async with serve(HANG) as srv:
        start = time.monotonic()
        with pytest.raises(Pop3TimeoutError):
            await connect(srv, timeout=0.3)
        assert time.monotonic() - start < 2


async def test_connection_refused_raises_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it
    with pytest.raises(Pop3ConnectError) as info:
        await Pop3Client.connect("127.0.0.1", port, tls="plain", timeout=1)
    assert isinstance(info.value, ConnectionError)


# -- DELE / QUIT / abort --------------------------------------------------------------------------


async def test_dele_then_close_without_quit_withdraws_the_mark() -> None:
    # GreenMail keeps DELE marks as \Deleted flags that a later QUIT would expunge.
    async with serve(hello(), Expect(b"DELE 1"), send(b"+OK marked\r\n")) as srv:
        client = await connect(srv)
        await client.dele(1)
        await client.aclose_without_quit()
        assert await srv.finished() == [b"CAPA", b"DELE 1", b"RSET"]  # and never QUIT
        assert srv.errors == []
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()


async def test_dele_timeout_then_close_sends_rset_after_the_late_reply() -> None:
    late = send(b"", b"+OK marked\r\n", pause=0.7)  # after the 0.5 s deadline
    async with serve(hello(), Expect(b"DELE 1"), late, Expect(b"RSET"), send(b"+OK\r\n")) as srv:
        client = await connect(srv, timeout=0.5)
        with pytest.raises(Pop3TimeoutError):
            await client.dele(1)
        with pytest.raises(Pop3DisconnectedError):
            await client.noop()  # unusable, but the connection waits for the RSET
        start = time.monotonic()
        await client.aclose_without_quit()
        assert time.monotonic() - start < 1  # the server closed after RSET: no full grace
        assert await srv.finished() == [b"CAPA", b"DELE 1", b"RSET"]
        assert srv.errors == []


async def test_protocol_error_after_dele_withdraws_the_mark() -> None:
    async with serve(
        hello(), Expect(b"DELE 1"), send(b"+OK\r\n"), Expect(b"NOOP"), send(b"garbage\r\n")
    ) as srv:
        client = await connect(srv)
        await client.dele(1)
        with pytest.raises(Pop3ProtocolError):
            await client.noop()
        await client.aclose_without_quit()
        assert await srv.finished() == [b"CAPA", b"DELE 1", b"NOOP", b"RSET"]


async def test_no_rset_where_nothing_is_marked() -> None:
    async with serve(
        hello(),
        Expect(b"DELE 1"),
        send(b"-ERR Message is deleted.\r\n"),
        Expect(b"DELE 2"),
        send(b"+OK\r\n"),
        Expect(b"RSET"),
        send(b"+OK\r\n"),
        Expect(b"DELE 3"),
        send(b"-ERR no such message\r\n"),
    ) as srv:
        client = await connect(srv)
        with pytest.raises(Pop3NoSuchMessage):
            await client.dele(1)  # -ERR: marked nothing, the session goes on
        await client.dele(2)
        await client.rset()
        with pytest.raises(Pop3NoSuchMessage):
            await client.dele(3)
        await client.aclose_without_quit()
        assert await srv.finished() == [b"CAPA", b"DELE 1", b"DELE 2", b"RSET", b"DELE 3"]
        assert srv.errors == []


async def test_dele_then_close_over_tls_withdraws_the_mark(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with serve(hello(), Expect(b"DELE 1"), send(b"+OK\r\n"), ssl_ctx=server_ctx) as srv:
        client = await connect(srv, tls="implicit", ssl_context=client_ctx,
                               server_hostname="localhost")  # fmt: skip
        await client.dele(1)
        start = time.monotonic()
        await client.aclose_without_quit()
        assert time.monotonic() - start < 1
        assert await srv.finished() == [b"CAPA", b"DELE 1", b"RSET"]
        assert all(srv.over_tls)


async def test_dele_then_quit_commits() -> None:
    async with serve(hello(), Expect(b"DELE 1"), send(b"+OK marked\r\n"), QUIT) as srv:
        client = await connect(srv)
        await client.dele(1)
        await client.quit()
        assert await srv.finished() == [b"CAPA", b"DELE 1", b"QUIT"]
        assert srv.errors == []


async def test_quit_error_means_deletions_failed() -> None:
    async with serve(
        hello(),
        Expect(b"DELE 1"),
        send(b"+OK\r\n"),
        Expect(b"QUIT"),
        send(b"-ERR some not removed\r\n"),
    ) as srv:
        client = await connect(srv)
        await client.dele(1)
        with pytest.raises(Pop3Error, match="not removed"):
            await client.quit()
        assert await srv.finished() == [b"CAPA", b"DELE 1", b"QUIT"]


async def test_context_manager_aborts_on_exception() -> None:
    async with serve(hello(), Expect(b"DELE 2"), send(b"+OK\r\n")) as srv:
        with pytest.raises(KeyError):
            async with await connect(srv) as client:
                await client.dele(2)
                raise KeyError("boom")
        assert await srv.finished() == [b"CAPA", b"DELE 2", b"RSET"]


# -- TLS ------------------------------------------------------------------------------------------


async def test_stls_upgrade_then_capa_and_login_over_tls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with serve(
        hello(b"STLS\r\nUSER\r\n"),
        Expect(b"STLS"),
        send(b"+OK Begin TLS negotiation now.\r\n"),
        STARTTLS,
        Expect(b"CAPA"),
        send(b"+OK\r\nSASL PLAIN\r\nUSER\r\n.\r\n"),
        Expect(b"AUTH PLAIN " + base64.b64encode(b"\0bob\0pw")),
        send(b"+OK\r\n"),
        Expect(b"STAT"),
        send(b"+OK 0 0\r\n"),
        QUIT,
        tls_ctx=server_ctx,
    ) as srv:
        client = await connect(
            srv, tls="starttls", ssl_context=client_ctx, server_hostname="localhost"
        )
        assert client.capabilities == {"SASL": ["PLAIN"], "USER": []}  # the post-TLS CAPA
        await client.login("bob", "pw")
        assert await client.stat() == (0, 0)
        await client.quit()
        received = await srv.finished()
        assert srv.errors == []
        assert received[:2] == [b"CAPA", b"STLS"] and srv.over_tls[:2] == [False, False]
        assert all(srv.over_tls[2:]) and len(received) == 6


async def test_stls_not_offered_raises_tls_error(client_ctx: ssl.SSLContext) -> None:
    async with serve(hello(b"USER\r\n")) as srv:
        with pytest.raises(Pop3TLSError, match="STLS"):
            await connect(srv, tls="starttls", ssl_context=client_ctx, server_hostname="localhost")
        assert await srv.finished() == [b"CAPA"]  # no credentials, no QUIT


async def test_stls_rejects_injected_cleartext(client_ctx: ssl.SSLContext) -> None:
    async with serve(
        hello(b"STLS\r\n"), Expect(b"STLS"), send(b"+OK go\r\n+OK injected\r\n"), HANG
    ) as srv:
        with pytest.raises(Pop3TLSError, match="clear-text"):
            await connect(srv, tls="starttls", ssl_context=client_ctx, server_hostname="localhost")
        assert await srv.finished() == [b"CAPA", b"STLS"]


async def test_stls_with_untrusted_certificate(server_ctx: ssl.SSLContext) -> None:
    async with serve(
        hello(b"STLS\r\n"), Expect(b"STLS"), send(b"+OK\r\n"), STARTTLS, tls_ctx=server_ctx
    ) as srv:
        with pytest.raises(Pop3TLSError):  # default context: the throwaway CA is not trusted
            await connect(srv, tls="starttls", server_hostname="localhost")


async def test_implicit_tls(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    async with serve(hello(), Expect(b"NOOP"), send(b"+OK\r\n"), QUIT, ssl_ctx=server_ctx) as srv:
        client = await connect(
            srv, tls="implicit", ssl_context=client_ctx, server_hostname="localhost"
        )
        await client.noop()
        await client.quit()
        assert await srv.finished() == [b"CAPA", b"NOOP", b"QUIT"]
        assert all(srv.over_tls)


async def test_implicit_tls_hostname_mismatch(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with serve(hello(), ssl_ctx=server_ctx) as srv:
        with pytest.raises(Pop3TLSError):
            await connect(srv, tls="implicit", ssl_context=client_ctx, server_hostname="evil.test")
