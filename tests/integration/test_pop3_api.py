"""POP3 through the API: every TLS mode against real Dovecot, and faults a real server
will not produce, from a scripted POP3 server at the socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack

RAW = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nbody\r\n"

POP3_URLS = {
    "plain": lambda s: f"pop3+plain://127.0.0.1:{s['MAILSTACK_POP3_PORT']}",
    "stls": lambda s: f"pop3://localhost:{s['MAILSTACK_POP3_PORT']}",
    "implicit": lambda s: f"pop3s://localhost:{s['MAILSTACK_POP3S_PORT']}",
}


@pytest.mark.parametrize("mode", sorted(POP3_URLS))
async def test_every_tls_mode_lists_fetches_and_removes(
    mode: str, make_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, RAW)
    mailbox.append(stack, RAW.replace(b"hi", b"second"))
    async with make_client(pop3_url=POP3_URLS[mode](stack)) as client:
        r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [i["subject"] for i in items] == ["second", "hi"]
        r = await client.get(f"/v1/messages/{items[1]['id']}/raw", params={"mode": "remove"},
                             headers=mailbox.auth)  # fmt: skip
        assert r.status_code == 200 and r.content == RAW
    left = mailbox.messages(stack)
    assert [raw for _, raw, _ in left] == [RAW.replace(b"hi", b"second")]


class Recorded(list[str]):
    """Command verbs in order; ``lines`` keeps whole AUTH lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []


@asynccontextmanager
async def fake_pop3(
    retr: str,
    *,
    pass_reply: bytes = b"+OK logged in\r\n",
    capa: bytes = b"USER\r\nUIDL\r\nTOP\r\nSASL XOAUTH2\r\n",
    list_skew: int = 0,
) -> AsyncIterator[tuple[int, Recorded]]:
    """A scripted POP3 server with one message; ``retr`` says how RETR misbehaves."""
    received = Recorded()
    body = b"Subject: x\r\n\r\n" + b"line of body text\r\n" * 2000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK fake ready\r\n")
        try:
            while line := await reader.readline():
                cmd = line.decode().strip()
                received.append(cmd.split()[0].upper())
                verb = received[-1]
                if verb == "CAPA":
                    writer.write(b"+OK\r\n" + capa + b".\r\n")
                elif verb == "AUTH":
                    received.lines.append(cmd)
                    writer.write(b"+OK authenticated\r\n")
                elif verb == "USER":
                    writer.write(b"+OK\r\n")
                elif verb == "PASS":
                    writer.write(pass_reply)
                elif verb == "UIDL":
                    writer.write(b"+OK\r\n1 uid-one\r\n.\r\n")
                elif verb == "LIST" and cmd.upper() == "LIST":
                    writer.write(f"+OK\r\n1 {len(body) + list_skew}\r\n.\r\n".encode())
                elif verb == "LIST":
                    writer.write(f"+OK 1 {len(body) + list_skew}\r\n".encode())
                elif verb == "TOP" and b"TOP" in capa:
                    writer.write(b"+OK\r\nSubject: x\r\n\r\n.\r\n")
                elif verb == "RETR":
                    if retr == "hang":
                        await asyncio.sleep(30)
                    if retr == "ok":
                        writer.write(b"+OK\r\n" + body + b".\r\n")
                        await writer.drain()
                        continue
                    writer.write(b"+OK\r\n" + body[: len(body) // 2])
                    await writer.drain()
                    if retr == "drop":
                        writer.transport.abort()
                        return
                elif verb in ("DELE", "NOOP", "RSET"):
                    writer.write(b"+OK\r\n")
                elif verb == "QUIT":
                    writer.write(b"+OK bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"-ERR unknown\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, received
    finally:
        server.close()
        await server.wait_closed()


def _id() -> str:
    from service.ids import Pop3Ref

    return Pop3Ref("uid-one").encode()


async def test_connection_dropped_mid_retr_is_502_and_nothing_deleted(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with (
        fake_pop3("drop") as (port, received),
        make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client,
    ):
        r = await client.get(f"/v1/messages/{_id()}", params={"mode": "remove"},
                             headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 502 and r.json()["code"] == "upstream-error"
    assert "DELE" not in received and "QUIT" not in received


async def test_hang_is_504_within_the_deadline(make_client: Any, mailbox: Mailbox) -> None:
    async with (
        fake_pop3("hang") as (port, received),
        make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}", command_timeout=0.5) as client,
    ):
        start = time.monotonic()
        r = await client.get(f"/v1/messages/{_id()}", params={"mode": "remove"},
                             headers=mailbox.auth)  # fmt: skip
        elapsed = time.monotonic() - start
    assert r.status_code == 504 and r.json()["code"] == "upstream-timeout"
    assert elapsed < 3
    assert "DELE" not in received and "QUIT" not in received


async def test_maildrop_in_use_is_409_with_retry_after(make_client: Any, mailbox: Mailbox) -> None:
    locked = b"-ERR [IN-USE] locked by another session\r\n"
    async with fake_pop3("ok", pass_reply=locked) as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 409 and r.json()["code"] == "conflict"
    assert int(r.headers["retry-after"]) > 0
    assert received.count("PASS") == 4  # tried, then retried briefly before answering


async def test_repeated_refused_logins_are_rate_limited(make_client: Any, mailbox: Mailbox) -> None:
    refused = b"-ERR [AUTH] Authentication failed.\r\n"
    async with fake_pop3("ok", pass_reply=refused) as (port, received):
        async with make_client(
            pop3_url=f"pop3+plain://127.0.0.1:{port}", auth_failures_max=2
        ) as client:
            codes = []
            for _ in range(3):
                r = await client.get(
                    "/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth
                )
                codes.append((r.status_code, r.json()["code"]))
            assert int(r.headers["retry-after"]) > 0
            other = Mailbox("someone-else@example.test", "x")
            r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=other.auth)
            assert r.status_code == 401  # another mailbox is not affected
    assert codes == [(401, "auth-failed"), (401, "auth-failed"), (429, "rate-limited")]
    assert received.count("PASS") == 3  # the third call never reached the server


async def test_bearer_token_is_sent_as_xoauth2(make_client: Any) -> None:
    import base64

    async with fake_pop3("ok") as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get(
                "/v1/messages",
                params={"protocol": "pop3"},
                headers={"Authorization": "Bearer ya29.token-xyz", "X-Mail-User": "u@example.test"},
            )
    assert r.status_code == 200, r.text
    assert "PASS" not in received and "USER" not in received
    [auth] = received.lines
    verb, mech, payload = auth.split(" ")
    assert (verb, mech) == ("AUTH", "XOAUTH2")
    assert base64.b64decode(payload) == b"user=u@example.test\x01auth=Bearer ya29.token-xyz\x01\x01"


async def test_server_without_top_lists_by_retr(make_client: Any, mailbox: Mailbox) -> None:
    async with fake_pop3("ok", capa=b"USER\r\nUIDL\r\n") as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    assert [i["subject"] for i in r.json()["items"]] == ["x"]
    assert "TOP" not in received and "RETR" in received and "DELE" not in received


async def test_list_size_that_lies_never_yields_a_wrong_body(
    make_client: Any, make_live_gateway: Any, mailbox: Mailbox
) -> None:
    async with fake_pop3("ok", list_skew=-10) as (port, received):
        url = f"pop3+plain://127.0.0.1:{port}"
        async with make_client(pop3_url=url) as client:
            r = await client.get(f"/v1/messages/{_id()}", headers=mailbox.auth)
            assert r.status_code == 200 and r.json()["subject"] == "x"  # parsed: RETR's bytes
        async with make_live_gateway(pop3_url=url) as base, httpx.AsyncClient() as http:
            with pytest.raises(httpx.HTTPError):  # the download is cut, never short-changed
                await http.get(f"{base}/v1/messages/{_id()}/raw", params={"mode": "remove"},
                               headers=mailbox.auth)  # fmt: skip
    assert "DELE" not in received


async def test_attachment_over_the_limit_is_413_on_pop3(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, RAW + b"x" * 5000 + b"\r\n")
    async with make_client(max_message_bytes=2048) as client:
        r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
        [item] = r.json()["items"]
        r = await client.get(f"/v1/messages/{item['id']}/attachments/1", headers=mailbox.auth)
    assert r.status_code == 413 and r.json()["code"] == "too-large"
    assert len(mailbox.messages(stack)) == 1
