"""TLS session resumption by the client contexts (scripted TLS servers with trustme
certificates: the test stack's Dovecot, one login process per connection, declines it)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trustme

from service.config import Settings
from service.tls import ResumingContext, client_context


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


@asynccontextmanager
async def _greeting_server(ctx: ssl.SSLContext, reused: list[bool]) -> AsyncIterator[int]:
    """A TLS server that records whether each connection resumed a session."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reused.append(writer.get_extra_info("ssl_object").session_reused)
        writer.write(b"* OK ready\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _greet(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    line = await reader.readline()  # the ticket comes after the handshake, with the data
    writer.close()
    await writer.wait_closed()
    return line


async def test_new_connections_resume_the_previous_session() -> None:
    ca = trustme.CA()
    client = client_context(None)
    ca.configure_trust(client)
    reused: list[bool] = []
    async with _greeting_server(_server_context(ca), reused) as port:
        for _ in range(3):
            assert await _greet(port, client) == b"* OK ready\r\n"
    assert reused == [False, True, True]
    assert client.session_for("localhost") is not None
    assert client.session_for("elsewhere") is None  # offered by server name only


async def test_a_server_that_declines_gets_a_full_handshake() -> None:
    """Another server under the same name (other ticket keys): the offered session is
    declined and the connection is made as usual, its certificate verified."""
    ca = trustme.CA()
    client = client_context(None)
    ca.configure_trust(client)
    first: list[bool] = []
    second: list[bool] = []
    async with _greeting_server(_server_context(ca), first) as port:
        await _greet(port, client)
    async with _greeting_server(_server_context(ca), second) as port:
        assert await _greet(port, client) == b"* OK ready\r\n"
        assert await _greet(port, client) == b"* OK ready\r\n"
    assert first == [False] and second == [False, True]


def test_one_verifying_context_per_ca_file_and_service() -> None:
    settings = Settings()
    provider = settings.providers["default"]
    imap = settings.ssl_context(provider, "imap")
    assert isinstance(imap, ResumingContext)
    assert imap is settings.ssl_context(provider, "imap")
    assert imap is not settings.ssl_context(provider, "pop3")
    assert imap.verify_mode == ssl.CERT_REQUIRED and imap.check_hostname
    assert imap.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_a_connection_still_in_its_handshake_lends_no_session() -> None:
    """The latest connection to a name may not have finished its handshake (its session
    cannot be copied yet): the next connection goes ahead without one."""
    ca = trustme.CA()
    client = client_context(None)
    ca.configure_trust(client)
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # never answers the ClientHello; hangs up when told
        writer.close()

    mute = await asyncio.start_server(silent, "127.0.0.1", 0)
    stuck = asyncio.create_task(
        asyncio.open_connection(
            "127.0.0.1",
            mute.sockets[0].getsockname()[1],
            ssl=client,
            server_hostname="localhost",
        )  # fmt: skip
    )
    await asyncio.sleep(0.1)  # its SSLObject exists, mid-handshake
    reused: list[bool] = []
    try:
        async with _greeting_server(_server_context(ca), reused) as port:
            assert await _greet(port, client) == b"* OK ready\r\n"
            assert await _greet(port, client) == b"* OK ready\r\n"
    finally:
        release.set()
        with contextlib.suppress(OSError, ssl.SSLError):
            await stuck
        mute.close()
        await mute.wait_closed()
    assert reused == [False, True]
