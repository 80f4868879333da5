"""Sync faults found by the model test (tests/integration/test_sync_model.py), each pinned
down where it can be made to happen every time: a scripted server at the socket, or the
real Dovecot."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mailboxes import Mailbox
from scripted import serving

from service.sync.state import Pop3State, mailbox_tag, uidl_digest

pytestmark = pytest.mark.mailstack

HEAD = b"From: a@example.test\r\nSubject: s%d\r\n\r\n"


@asynccontextmanager
async def pop3_with_a_vanishing_message(gone: int) -> AsyncIterator[tuple[int, list[str]]]:
    """A POP3 maildrop of messages 1-3 (UIDLs u1-u3) whose message ``gone`` was expunged by
    another session after this one's UIDL: TOP and RETR of it answer -ERR, as Dovecot does
    ("-ERR Message 2 expunged."). Yields the port and every command received."""
    commands: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK ready\r\n")
        while line := await reader.readline():
            cmd = line.decode().strip()
            commands.append(cmd)
            verb, args = cmd.split()[0].upper(), cmd.split()[1:]
            if verb == "CAPA":
                writer.write(b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n")
            elif verb in ("USER", "PASS", "NOOP", "RSET"):
                writer.write(b"+OK\r\n")
            elif verb == "UIDL":
                writer.write(b"+OK\r\n1 u1\r\n2 u2\r\n3 u3\r\n.\r\n")
            elif verb == "LIST":
                writer.write(b"+OK\r\n1 40\r\n2 40\r\n3 40\r\n.\r\n")
            elif verb in ("TOP", "RETR") and int(args[0]) == gone:
                writer.write(f"-ERR Message {gone} expunged.\r\n".encode())
            elif verb in ("TOP", "RETR"):
                writer.write(b"+OK\r\n" + HEAD % int(args[0]) + b".\r\n")
            elif verb == "QUIT":
                writer.write(b"+OK bye\r\n")
                return
            else:
                writer.write(b"-ERR unknown\r\n")
            await writer.drain()

    async with serving(handle) as port:
        yield port, commands


async def test_pop3_changes_when_a_new_message_vanishes_mid_read_is_410_not_404(
    make_client: Any, mailbox: Mailbox
) -> None:
    since = Pop3State(
        1, uidl_digest(["u1"]), mailbox=mailbox_tag("default", mailbox.address)
    ).encode()
    async with pop3_with_a_vanishing_message(2) as (port, commands):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as gw:
            r = await gw.get("/v1/changes", params={"protocol": "pop3", "since": since},
                             headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 410, r.text  # was 404 "No such message": "no such folder"?
    assert r.json()["code"] == "cannot-calculate-changes"
    assert not any(c.startswith("RETR") and c != "RETR 2" for c in commands), commands


async def test_pop3_listing_skips_a_message_expunged_mid_listing(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with pop3_with_a_vanishing_message(2) as (port, commands):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as gw:
            r = await gw.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 200, r.text  # was 404 for the whole maildrop
    assert [i["subject"] for i in r.json()["items"]] == ["s3", "s1"]
    # TOP kept working for the others: no RETR, which sets \Seen on Dovecot.
    assert not any(c.startswith("RETR") and c != "RETR 2" for c in commands), commands


async def test_a_reader_with_a_backlog_larger_than_the_buffer_catches_up(
    stack: dict[str, str], mailbox: Mailbox
) -> None:
    # Missed while away: more changes than MAILGATE_EVENTS_BUFFER. The replay of them
    # came as one burst that overflowed the buffer, so the stream was dropped with
    # nothing sent, every time: an EventSource reconnecting with Last-Event-ID never
    # caught up, however fast it read.
    from test_sync_changes import raw
    from test_sync_events import live_gateway, stream

    mailbox.append(stack, raw("before"))
    async with live_gateway(stack, events_buffer=3) as gw:
        async with stream(gw, mailbox) as s:
            start = await s.next()
            assert start is not None and start.id is not None
        for i in range(7):
            mailbox.append(stack, raw(f"missed-{i}"))
        last, got = start.id, []
        for _ in range(10):  # reconnects, as EventSource does
            async with stream(gw, mailbox, headers={"Last-Event-ID": last}) as s:
                while (ev := await s.next()) is not None:
                    if ev.event == "created":
                        got.append(ev.data["subject"])
                    assert ev.event in (None, "created"), ev
                    last = ev.id or last
                    if len(got) == 7:
                        break
            if len(got) == 7:
                break
        assert sorted(got) == [f"missed-{i}" for i in range(7)]


@asynccontextmanager
async def imaps_proxy(
    stack: dict[str, str], port: int, before: dict[str, Callable[[], None]], tmp: Path
) -> AsyncIterator[tuple[int, str]]:
    """A TLS proxy to one of the real Dovecots' IMAPS ports that, the first time the
    gateway sends a command whose words start with a key of ``before`` (e.g. "UID
    FETCH"), first runs that function: another client's change, made at that exact
    moment of the gateway's session. Yields its port and the CA file that trusts it."""
    import trustme

    ca = trustme.CA()
    ca_file = tmp / "proxy-ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    upstream_ctx = ssl.create_default_context(cafile=stack["MAILSTACK_CA_FILE"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("localhost", port, ssl=upstream_ctx)

        async def down() -> None:
            while data := await up_r.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(down())
        try:
            while line := await reader.readline():
                command = b" ".join(line.split()[1:3]).decode(errors="replace").upper()
                for key in list(before):
                    if command.startswith(key):
                        await asyncio.to_thread(before.pop(key))
                up_w.write(line)
                await up_w.drain()
        finally:
            task.cancel()
            up_w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    try:
        yield server.sockets[0].getsockname()[1], str(ca_file)
    finally:
        server.close()


@pytest.mark.dovecot("a second Dovecot on the same mailboxes without CONDSTORE")
async def test_a_listing_never_holds_a_message_newer_than_its_state(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox, tmp_path: Path
) -> None:
    # Without CONDSTORE a listing's state is a snapshot plus a UID FETCH of every flag;
    # Dovecot brings the view up to date at the end of that FETCH, so a message that
    # arrived meanwhile was found by the listing's SEARCH, though the state did not
    # know it. Expunged before the next /changes, it was "created and destroyed since
    # the state", which /changes leaves out: the client kept a phantom forever.
    from test_sync_changes import Other, raw

    mailbox.append(stack, raw("old"))
    before: dict[str, Callable[[], None]] = {}
    basic = int(stack["MAILSTACK_BASIC_IMAPS_PORT"])
    async with imaps_proxy(stack, basic, before, tmp_path) as (port, ca_file):
        async with make_client(imap_url=f"imaps://localhost:{port}", ca_file=ca_file) as gw:
            params = {"protocol": "imap"}
            before["UID FETCH"] = lambda: mailbox.append(stack, raw("racing"))
            r = await gw.get("/v1/messages", params=params, headers=mailbox.auth)
            assert r.status_code == 200 and not before, r.text  # it raced the listing
            copy = {i["id"] for i in r.json()["items"]}
            other = Other(mailbox, stack)
            other.expunge("racing")
            other.close()
            r = await gw.get("/v1/changes", params={**params, "since": r.json()["state"]},
                             headers=mailbox.auth)  # fmt: skip
            assert r.status_code == 200, r.text
            body = r.json()
            copy |= {c["id"] for c in body["created"]}
            copy -= set(body["destroyed"])
            listed = await gw.get("/v1/messages", params=params, headers=mailbox.auth)
            assert copy == {i["id"] for i in listed.json()["items"]}  # no phantom


async def test_the_document_lists_409_where_a_locked_pop3_maildrop_answers_it(
    make_client: Any, mailbox: Mailbox
) -> None:
    # /changes and /events over POP3 answer 409 conflict while another session holds the
    # maildrop's lock (RFC 2449 [IN-USE]); the OpenAPI document did not list 409 there.
    from test_pop3_api import fake_pop3

    since = Pop3State(0, uidl_digest([]), mailbox=mailbox_tag("default", mailbox.address)).encode()
    async with fake_pop3("ok", pass_reply=b"-ERR [IN-USE] locked\r\n") as (port, _):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as gw:
            r = await gw.get("/v1/changes", params={"protocol": "pop3", "since": since},
                             headers=mailbox.auth)  # fmt: skip
            assert r.status_code == 409, r.text
            r = await gw.get("/v1/events", params={"protocol": "pop3"}, headers=mailbox.auth)
            assert r.status_code == 409, r.text
            doc = (await gw.get("/openapi.json")).json()
    assert "409" in doc["paths"]["/v1/changes"]["get"]["responses"]
    assert "409" in doc["paths"]["/v1/events"]["get"]["responses"]
