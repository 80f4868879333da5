"""POP3 through the API: every TLS mode against real Dovecot, and faults a real server
will not produce, from a scripted POP3 server at the socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import pytest
from mailboxes import Mailbox
from scripted import serving

from service.config import Settings
from service.errors import AuthFailed
from service.ids import Pop3Ref
from service.protocols.base import Credentials, ListQuery
from service.protocols.pool import PooledSession, SessionPool
from service.protocols.pop3.reader import Pop3Reader

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
    async with make_client(live=True, pop3_url=POP3_URLS[mode](stack)) as client:
        r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [i["subject"] for i in items] == ["second", "hi"]
        r = await client.get(f"/v1/messages/{items[1]['id']}/raw", params={"mode": "remove"},
                             headers=mailbox.auth)  # fmt: skip
        assert r.status_code == 200 and r.content == RAW
    left = await mailbox.after_removal(stack, 1)
    assert [raw for _, raw, _ in left] == [RAW.replace(b"hi", b"second")]


class Recorded(list[str]):
    """Command verbs in order; ``lines`` keeps whole AUTH lines, ``commands`` every line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.commands: list[str] = []


BODY = (
    b"Subject: x\r\n\r\n"
    + b"line of body text\r\n" * 1000
    + b".\r\n..two\r\n" * 2
    + (b"line of body text\r\n" * 1000)
)
CAPA_TOP = b"USER\r\nUIDL\r\nTOP\r\nSASL XOAUTH2\r\n"


@asynccontextmanager
async def fake_pop3(
    retr: str,
    *,
    pass_reply: bytes = b"+OK logged in\r\n",
    capa: bytes | None = CAPA_TOP,
    top: bool | None = None,
    list_skew: int = 0,
    body: bytes = BODY,
    list_n_multiline: bool = False,
    listings: list[dict[int, str]] | None = None,
    dele: dict[int, bytes | float] | None = None,
    guess_delay: float | None = None,
) -> AsyncIterator[tuple[int, Recorded]]:
    """A scripted POP3 server with one message (``body``, sent dot-stuffed).

    ``retr`` says how the reading of the whole message (RETR, or TOP with a line count)
    goes: "ok", "drop" (half of it, then the connection closes) or "hang". ``capa``
    None: no CAPA command. ``top``: whether TOP works (default: when CAPA lists it).
    ``list_skew`` is added to LIST's size.
    ``list_n_multiline``: "LIST n" answered with the whole listing (as Mailpit's once was).
    ``listings``: the maildrop as successive UIDL commands see it, {number: uidl}, the
    last one repeated (default: message 1 "uid-one"); LIST lists the numbers the last
    UIDL gave, and every number reads as ``body``. That is how a server that numbers
    the live list (GreenMail) answers when another session's QUIT removes messages.
    ``dele``: DELE n's reply (bytes), or seconds to wait before its "+OK" (float).
    ``guess_delay``: a PASS other than "secret" is refused after this many seconds (as
    Dovecot holds a wrong password for its auth_failure_delay, 2 s by default).
    """
    received = Recorded()
    views = listings or [{1: "uid-one"}]
    seen = 0  # UIDL commands answered
    top_works = (capa is not None and b"TOP" in capa) if top is None else top
    size = len(body) + list_skew
    stuffed = b"".join(
        (b"." + line if line.startswith(b".") else line) for line in body.splitlines(True)
    )
    head = body[: body.find(b"\r\n\r\n") + 4]

    async def send_message(writer: asyncio.StreamWriter) -> bool:
        """The whole message as ``retr`` says; False when the connection is to end."""
        if retr == "hang":
            await asyncio.sleep(30)
        if retr == "ok":
            writer.write(b"+OK\r\n" + stuffed + b".\r\n")
            return True
        writer.write(b"+OK\r\n" + stuffed[: len(stuffed) // 2])
        await writer.drain()
        writer.transport.abort()
        return False

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        writer.write(b"+OK fake ready\r\n")
        while line := await reader.readline():
            cmd = line.decode().strip()
            received.commands.append(cmd)
            received.append(cmd.split()[0].upper())
            verb, args = received[-1], cmd.split()[1:]
            if verb == "CAPA" and capa is not None:
                writer.write(b"+OK\r\n" + capa + b".\r\n")
            elif verb == "AUTH":
                received.lines.append(cmd)
                writer.write(b"+OK authenticated\r\n")
            elif verb == "USER":
                writer.write(b"+OK\r\n")
            elif verb == "PASS" and guess_delay is not None and args != ["secret"]:
                await asyncio.sleep(guess_delay)
                writer.write(b"-ERR [AUTH] Authentication failed.\r\n")
            elif verb == "PASS":
                writer.write(pass_reply)
            elif verb == "UIDL":
                view = views[min(seen, len(views) - 1)]
                seen += 1
                lines = "".join(f"{n} {u}\r\n" for n, u in view.items())
                writer.write(f"+OK\r\n{lines}.\r\n".encode())
            elif verb == "STAT":
                view = views[min(max(seen - 1, 0), len(views) - 1)]
                writer.write(f"+OK {len(view)} {len(view) * size}\r\n".encode())
            elif verb == "LIST" and (not args or list_n_multiline):
                view = views[min(max(seen - 1, 0), len(views) - 1)]
                lines = "".join(f"{n} {size}\r\n" for n in view)
                writer.write(f"+OK\r\n{lines}.\r\n".encode())
            elif verb == "LIST":
                writer.write(f"+OK {args[0]} {size}\r\n".encode())
            elif verb == "TOP" and top_works and args[1:] == ["0"]:
                writer.write(b"+OK\r\n" + head + b".\r\n")
            elif verb == "RETR" or (verb == "TOP" and top_works):
                if not await send_message(writer):
                    return
            elif verb == "DELE" and dele and int(args[0]) in dele:
                reply = dele[int(args[0])]
                if isinstance(reply, float):
                    await asyncio.sleep(reply)
                    reply = b"+OK\r\n"
                writer.write(reply)
            elif verb in ("DELE", "NOOP", "RSET"):
                writer.write(b"+OK\r\n")
            elif verb == "QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"-ERR unknown\r\n")
            await writer.drain()

    async with serving(handle) as port:
        yield port, received


def _id() -> str:
    return Pop3Ref("uid-one").encode()


async def test_connection_dropped_mid_retr_is_502_and_nothing_deleted(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with (
        fake_pop3("drop") as (port, received),
        make_client(live=True, pop3_url=f"pop3+plain://127.0.0.1:{port}") as client,
    ):
        r = await client.get(f"/v1/messages/{_id()}", params={"mode": "remove"},
                             headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 502 and r.json()["code"] == "upstream-error"
    assert "DELE" not in received and "QUIT" not in received


async def test_hang_is_504_within_the_deadline(make_client: Any, mailbox: Mailbox) -> None:
    async with (
        fake_pop3("hang") as (port, received),
        make_client(
            live=True, pop3_url=f"pop3+plain://127.0.0.1:{port}", command_timeout=0.5
        ) as client,
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


async def test_login_refused_for_too_many_connections_is_503_not_401(
    make_client: Any, mailbox: Mailbox
) -> None:
    """Cyrus refuses a login past maxlogins_per_user with no response code: the words say
    it, and a refused password it is not (401 would tell the app to ask for a new one)."""
    full = b"-ERR Too many open connections (11 of 10 for t@example.test)\r\n"
    async with fake_pop3("ok", pass_reply=full) as (port, received):
        async with make_client(
            pop3_url=f"pop3+plain://127.0.0.1:{port}", command_timeout=1.0
        ) as client:
            r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "upstream-unavailable"
    assert "Too many open connections" in r.json()["upstream"]["reply"]
    assert int(r.headers["retry-after"]) > 0
    assert received.count("PASS") >= 2  # retried within its wait, as for [IN-USE]


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


async def test_guessed_passwords_leave_the_owner_room(make_client: Any, mailbox: Mailbox) -> None:
    """Strangers guessing the password without pause, each guess held by the server for
    a while, never take more than a quarter of the mailbox's budget: the owner, whose
    password worked before, gets in at once (before: behind every queued guess, 503)."""
    stranger = Mailbox(mailbox.address, "guess")
    params = {"protocol": "pop3"}
    codes: set[int] = set()
    done = False
    async with (
        fake_pop3("ok", guess_delay=2.0) as (port, _),
        make_client(
            pop3_url=f"pop3+plain://127.0.0.1:{port}", auth_failures_max=0, command_timeout=3
        ) as client,
    ):

        async def guess() -> None:
            while not done:
                r = await client.get("/v1/messages", params=params, headers=stranger.auth)
                codes.add(r.status_code)

        r = await client.get("/v1/messages", params=params, headers=mailbox.auth)
        assert r.status_code == 200, r.text
        guesses = [asyncio.create_task(guess()) for _ in range(40)]
        await asyncio.sleep(0.5)  # the guesses fill what they can
        r = await client.get("/v1/messages", params=params, headers=mailbox.auth)
        done = True
        await asyncio.gather(*guesses)
    assert r.status_code == 200, r.text
    assert codes <= {401, 503}  # refused, or no room for the guess


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


@pytest.mark.parametrize("skew", [-10, 0, 25])
async def test_list_size_is_an_estimate_the_whole_reply_is_sent(
    skew: int, make_client: Any, make_live_gateway: Any, mailbox: Mailbox
) -> None:
    # GreenMail's LIST counts the content only; others round. Neither cuts nor pads.
    async with fake_pop3("ok", list_skew=skew) as (port, received):
        url = f"pop3+plain://127.0.0.1:{port}"
        async with make_client(pop3_url=url) as client:
            r = await client.get(f"/v1/messages/{_id()}", headers=mailbox.auth)
            assert r.status_code == 200 and r.json()["subject"] == "x"
            assert r.json()["size"] == len(BODY) + skew  # LIST's size, as announced
        async with make_live_gateway(pop3_url=url) as base, httpx.AsyncClient() as http:
            r = await http.get(f"{base}/v1/messages/{_id()}/raw", params={"mode": "remove"},
                               headers=mailbox.auth)  # fmt: skip
            assert r.status_code == 200 and r.content == BODY
            assert "content-length" not in r.headers  # streamed chunked, to the reply's end
            assert r.headers["transfer-encoding"] == "chunked"
    assert received.count("DELE") == 1 and received[-2:] == ["DELE", "QUIT"]


async def test_raw_cut_short_by_the_server_fails_and_is_never_removed(
    make_live_gateway: Any, mailbox: Mailbox
) -> None:
    # LIST says half the size: the half that arrives must not pass for the whole message.
    async with (
        fake_pop3("drop", list_skew=-len(BODY) // 2) as (port, received),
        make_live_gateway(pop3_url=f"pop3+plain://127.0.0.1:{port}") as base,
        httpx.AsyncClient() as http,
    ):
        with pytest.raises(httpx.HTTPError):  # no "." line: the chunked body never ends
            await http.get(f"{base}/v1/messages/{_id()}/raw", params={"mode": "remove"},
                           headers=mailbox.auth)  # fmt: skip
    assert "DELE" not in received and "QUIT" not in received


async def test_attachment_over_the_limit_streams_one_part_on_pop3(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """POP3 cannot fetch a part alone, but the message streams once past the cutter:
    a part of a message over the parse limit is served, and reading stops after it."""
    import base64
    import os

    blob = os.urandom(40_000)
    big = (
        b"From: a@example.test\r\nTo: b@example.test\r\nSubject: big\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="b.bin"\r\n\r\n'
        + base64.encodebytes(blob).replace(b"\n", b"\r\n")
        + b"--b\r\nContent-Type: text/plain\r\n\r\n"
        + b"x" * 5000
        + b"\r\n--b--\r\n"
    )
    mailbox.append(stack, big)
    async with make_client(live=True, max_message_bytes=2048) as client:
        r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
        [item] = r.json()["items"]
        r = await client.get(f"/v1/messages/{item['id']}", headers=mailbox.auth)
        assert r.status_code == 413 and r.json()["code"] == "too-large"  # not parsed whole
        url = f"/v1/messages/{item['id']}/attachments"
        r = await client.get(f"{url}/2", headers=mailbox.auth)
        assert r.status_code == 200 and r.content == blob
        assert 'filename="b.bin"' in r.headers["content-disposition"]
        r = await client.get(f"{url}/1", headers=mailbox.auth)  # the text body is a part too
        assert r.status_code == 200 and r.content == b"body"
        r = await client.get(f"{url}/4", headers=mailbox.auth)
        assert r.status_code == 404 and r.json()["code"] == "not-found"
        assert len(mailbox.messages(stack)) == 1
        # remove: the rest of the reply is read so that DELE + QUIT can follow
        r = await client.get(f"{url}/2", params={"mode": "remove"}, headers=mailbox.auth)
        assert r.status_code == 200 and r.content == blob
        assert await mailbox.after_removal(stack, 0) == []


# -- reading: TOP where it works (no \\Seen), RETR where it does not --------------------------

TOP_WHOLE = "TOP 1 999999999"


@pytest.mark.parametrize(
    ("capa", "top", "reads"),
    [
        (CAPA_TOP, None, [TOP_WHOLE]),
        (None, True, [TOP_WHOLE]),  # no CAPA: TOP is tried
        (None, False, [TOP_WHOLE, "RETR 1"]),  # ... and RETR follows its -ERR
        (b"USER\r\nUIDL\r\n", None, ["RETR 1"]),  # CAPA without TOP (GreenMail)
        (CAPA_TOP + b"IMPLEMENTATION Mailpit v1\r\n", None, ["RETR 1"]),  # TOP not dot-stuffed
    ],
    ids=["capa-top", "no-capa-top-works", "no-capa-no-top", "capa-without-top", "mailpit"],
)
async def test_message_is_read_with_top_where_the_server_offers_it(
    capa: bytes | None, top: bool | None, reads: list[str], make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_pop3("ok", capa=capa, top=top) as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get(f"/v1/messages/{_id()}/raw", headers=mailbox.auth)
            assert r.status_code == 200 and r.content == BODY  # dot-unstuffed either way
    assert [c for c in received.commands if c.startswith(("TOP", "RETR"))] == reads
    assert "DELE" not in received and "QUIT" not in received  # keep: nothing to commit


async def test_list_n_answered_with_the_whole_listing_is_not_needed(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_pop3("ok", list_n_multiline=True) as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get(f"/v1/messages/{_id()}", headers=mailbox.auth)
            assert r.status_code == 200, r.text
            assert r.json()["size"] == len(BODY)
            r = await client.get(f"/v1/messages/{_id()}/raw", headers=mailbox.auth)
            assert r.status_code == 200 and r.content == BODY
    assert not [c for c in received.commands if c.startswith(("LIST ", "UIDL "))]


@pytest.mark.parametrize("skew", [-10, 25])
async def test_range_on_an_estimated_size_is_measured_against_the_reply(
    skew: int, make_client: Any, mailbox: Mailbox
) -> None:
    # LIST's size is an estimate: the message is measured first, so that a range (and a
    # resumed download) is exact, never shifted nor cut short.
    url = f"/v1/messages/{_id()}/raw"
    async with fake_pop3("ok", list_skew=skew) as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get(url, headers={**mailbox.auth, "Range": "bytes=100-199"})
            assert r.status_code == 206 and r.content == BODY[100:200]
            assert r.headers["content-range"] == f"bytes 100-199/{len(BODY)}"
            r = await client.get(url, headers={**mailbox.auth, "Range": "bytes=-50"})
            assert r.status_code == 206 and r.content == BODY[-50:]
            assert (
                r.headers["content-range"] == f"bytes {len(BODY) - 50}-{len(BODY) - 1}/{len(BODY)}"
            )
    assert "DELE" not in received and "QUIT" not in received


# -- listing ------------------------------------------------------------------------------------


def _subjects(page: dict[str, Any]) -> list[str]:
    return [i["subject"] for i in page["items"]]


@pytest.mark.parametrize(
    ("deleted", "page_2"),
    [(["m4", "m1"], ["m3", "m2"]), (["m5", "m4"], ["m3", "m2"]), (["m4", "m3"], ["m2", "m1"])],
)
async def test_cursor_never_repeats_when_messages_are_deleted_between_pages(
    deleted: list[str], page_2: list[str], client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    for i in range(1, 6):
        mailbox.append(stack, RAW.replace(b"hi", f"m{i}".encode()))
    r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    uidls = {i["subject"]: i["uidl"] for i in r.json()["items"]}
    params = {"protocol": "pop3", "limit": 2}
    r = await client.get("/v1/messages", params=params, headers=mailbox.auth)
    page = r.json()
    assert _subjects(page) == ["m5", "m4"] and page["next_cursor"]
    pop = mailbox.pop3(stack)  # deleted behind the gateway's back
    try:
        numbers = {u.split()[1].decode(): int(u.split()[0]) for u in pop.uidl()[1]}
        for subject in deleted:
            pop.dele(numbers[uidls[subject]])
    finally:
        pop.quit()
    r = await client.get("/v1/messages", params={**params, "cursor": page["next_cursor"]},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200, r.text
    assert _subjects(r.json()) == page_2


async def test_cursor_stays_short_with_long_uidls() -> None:
    from service.protocols.pop3 import reader as pop3

    uidls = {n: f"{n:04d}" + "u" * 66 for n in range(1, 451)}  # 70 characters each
    page = list(range(400, 200, -1))  # a page of 200, the largest limit
    cursor = pop3._make_cursor(page, uidls)
    assert len(cursor) < 2048  # well under the 4096 of the query parameter
    assert pop3._after_cursor(cursor, uidls) == list(range(200, 0, -1))


async def test_cursor_of_the_earlier_form_is_still_read() -> None:
    from service.ids import encode_cursor
    from service.protocols.pop3 import reader as pop3

    uidls = {n: f"u{n}" for n in range(1, 8)}
    old = encode_cursor({"p": 1, "u": ["u5", "u4"], "n": 4})  # page 7..4, u4 at 4
    assert pop3._after_cursor(old, uidls) == [3, 2, 1]
    shifted = {1: "u1", 2: "u3", 3: "u4", 4: "u5", 5: "u6", 6: "u7"}  # u2 deleted
    assert pop3._after_cursor(old, shifted) == [2, 1]


@pytest.mark.parametrize(
    "cursor",
    [{"p": 2, "n": 3, "h": "!!", "o": "", "e": ""}, {"p": 2, "n": 3, "h": "AAA=", "o": "",
     "e": ""}, {"p": 2, "n": 0, "h": "", "o": "", "e": ""}, {"p": 3, "n": 3}],
)  # fmt: skip
async def test_a_cursor_that_is_not_ours_is_422(cursor: dict[str, Any]) -> None:
    from service.errors import ValidationFailed
    from service.ids import encode_cursor
    from service.protocols.pop3 import reader as pop3

    with pytest.raises(ValidationFailed):  # an invalid query parameter
        pop3._after_cursor(encode_cursor(cursor), {1: "a", 2: "b"})


async def test_header_over_the_top_limit_lists_with_the_fields_that_fit(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, RAW)
    filler = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"y" * 100) for i in range(3000))
    assert len(filler) > 256 * 1024
    huge = b"From: Big <big@example.test>\r\nSubject: big\r\n" + filler + b"\r\nbody\r\n"
    mailbox.append(stack, huge)
    r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    big, small = r.json()["items"]
    assert big["subject"] == "big" and big["from"] == [
        {"name": "Big", "address": "big@example.test"}
    ]
    assert small["subject"] == "hi"  # the next TOP, on the same session, is in step
    r = await client.get(f"/v1/messages/{big['id']}/raw", headers=mailbox.auth)
    assert r.status_code == 200 and r.content == huge


# -- credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["basic", "xoauth2"])
@pytest.mark.parametrize("bad", ["sec\r\nret", "sec\nret", "sec\0ret"])
async def test_credentials_pop3_cannot_carry_are_auth_failed_not_500(
    kind: Literal["basic", "xoauth2"], bad: str, settings: Settings, mailbox: Mailbox
) -> None:
    creds = Credentials(mailbox.address, bad, kind)
    pool = SessionPool[PooledSession](settings)
    reader = Pop3Reader(settings, settings.providers["default"], creds, pool)
    with pytest.raises(AuthFailed) as info:
        await reader.list_messages("INBOX", ListQuery())
    assert "sec" not in str(info.value) and "ret" not in str(info.value)
    with pytest.raises(AuthFailed):
        await reader.open(Pop3Ref("uid-one"))
    assert pool.stats().open == 0  # refused logins give their budget back
    await pool.close_all()


# -- DELE: by the number of now, once per message, QUIT only to commit ---------------------------


async def test_remove_deletes_the_number_the_uidl_has_now(
    make_client: Any, mailbox: Mailbox
) -> None:
    # GreenMail numbers the live list: another session's QUIT removed message 1 while
    # this one streamed message 2, so "uid-one" is number 1 by the time of the DELE.
    views = [{1: "uid-zero", 2: "uid-one"}, {1: "uid-one"}]
    async with fake_pop3("ok", listings=views) as (port, received):
        async with make_client(live=True, pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get(f"/v1/messages/{_id()}/raw", params={"mode": "remove"},
                                 headers=mailbox.auth)  # fmt: skip
            assert r.status_code == 200 and r.content == BODY
    assert [c for c in received.commands if c.startswith(("TOP", "DELE"))] == [
        "TOP 2 999999999",
        "DELE 1",
    ]
    assert received[-3:] == ["UIDL", "DELE", "QUIT"]


async def test_remove_of_a_message_gone_meanwhile_sends_no_dele(
    make_client: Any, mailbox: Mailbox
) -> None:
    views = [{1: "uid-one", 2: "uid-two"}, {1: "uid-two"}]  # uid-one went while streaming
    async with fake_pop3("ok", listings=views) as (port, received):
        async with make_client(live=True, pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.get(f"/v1/messages/{_id()}/raw", params={"mode": "remove"},
                                 headers=mailbox.auth)  # fmt: skip
            assert r.status_code == 200 and r.content == BODY
    assert received.count("UIDL") == 2
    assert "DELE" not in received and "QUIT" not in received and "RSET" not in received


async def test_only_a_session_that_deletes_sends_quit(make_client: Any, mailbox: Mailbox) -> None:
    # GreenMail's QUIT expunges every \Deleted message of INBOX, also an IMAP client's.
    async with fake_pop3("ok") as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            auth = mailbox.auth
            r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=auth)
            assert r.status_code == 200 and len(r.json()["items"]) == 1
            r = await client.get("/v1/folders", params={"protocol": "pop3", "counts": "true"},
                                 headers=auth)  # fmt: skip
            assert r.status_code == 200 and r.json()["items"][0]["messages"] == 1
            r = await client.get(f"/v1/messages/{_id()}", headers=auth)  # keep mode
            assert r.status_code == 200 and r.json()["removed"] is False
            r = await client.get(f"/v1/messages/{_id()}/raw", headers=auth)
            assert r.status_code == 200
            assert received.count("PASS") == 4 and "QUIT" not in received
            assert "DELE" not in received and "RSET" not in received
            r = await client.delete(f"/v1/messages/{_id()}", headers=auth)
            assert r.status_code == 204
    assert received[-3:] == ["UIDL", "DELE", "QUIT"]


async def test_batch_delete_answers_per_id_and_deletes_each_message_once(
    make_client: Any, mailbox: Mailbox
) -> None:
    views = [{1: "uid-a", 2: "uid-b", 3: "uid-c"}]
    gone = {2: b"-ERR Message is deleted.\r\n"}  # e.g. deleted by another session meanwhile
    ids = [Pop3Ref(u).encode() for u in ("uid-a", "uid-b", "uid-c", "uid-a", "uid-x")]
    async with fake_pop3("ok", listings=views, dele=gone) as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.post("/v1/messages/delete", params={"protocol": "pop3"},
                                  json={"ids": ids}, headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200, r.text
    assert [(x["id"], x["status"], x["code"]) for x in r.json()["results"]] == [
        (ids[0], 204, None),
        (ids[1], 404, "not-found"),
        (ids[2], 204, None),
        (ids[3], 204, None),
        (ids[4], 404, "not-found"),
    ]
    assert [c for c in received.commands if c.startswith("DELE")] == ["DELE 1", "DELE 2", "DELE 3"]
    assert received[-1] == "QUIT"


async def test_batch_delete_whose_deles_all_fail_sends_no_quit(
    make_client: Any, mailbox: Mailbox
) -> None:
    gone = {1: b"-ERR Message is deleted.\r\n"}
    async with fake_pop3("ok", dele=gone) as (port, received):
        async with make_client(pop3_url=f"pop3+plain://127.0.0.1:{port}") as client:
            r = await client.post("/v1/messages/delete", params={"protocol": "pop3"},
                                  json={"ids": [_id()]}, headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200 and r.json()["results"][0]["status"] == 404
    assert "DELE" in received and "QUIT" not in received and "RSET" not in received


async def test_batch_delete_that_fails_midway_withdraws_its_marks(
    make_client: Any, mailbox: Mailbox
) -> None:
    # GreenMail keeps DELE marks as \Deleted flags that a later QUIT would expunge: after
    # a failure, RSET goes before the connection is dropped, and never QUIT.
    views = [{1: "uid-a", 2: "uid-b", 3: "uid-c"}]
    slow = {2: 1.0}  # DELE 2 answers after the command timeout
    ids = [Pop3Ref(u).encode() for u in ("uid-a", "uid-b", "uid-c")]
    async with fake_pop3("ok", listings=views, dele=slow) as (port, received):
        url = f"pop3+plain://127.0.0.1:{port}"
        async with make_client(pop3_url=url, command_timeout=0.5) as client:
            r = await client.post("/v1/messages/delete", params={"protocol": "pop3"},
                                  json={"ids": ids}, headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 504 and r.json()["code"] == "upstream-timeout"
    assert received.commands[-3:] == ["DELE 1", "DELE 2", "RSET"]
    assert "QUIT" not in received


async def test_remove_that_fails_after_its_dele_withdraws_the_mark(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with fake_pop3("ok", dele={1: 1.0}) as (port, received):
        url = f"pop3+plain://127.0.0.1:{port}"
        async with make_client(pop3_url=url, command_timeout=0.5) as client:
            r = await client.delete(f"/v1/messages/{_id()}", headers=mailbox.auth)
    assert r.status_code == 504
    assert received.commands[-2:] == ["DELE 1", "RSET"] and "QUIT" not in received


def _pop3_delete(mailbox: Mailbox, stack: dict[str, str], uidls: list[str]) -> None:
    """Delete these messages behind the gateway's back (stdlib poplib)."""
    pop = mailbox.pop3(stack)
    try:
        numbers = {u.split()[1].decode(): int(u.split()[0]) for u in pop.uidl()[1]}
        for uidl in uidls:
            pop.dele(numbers[uidl])
    finally:
        pop.quit()


def _stored_subjects(mailbox: Mailbox, stack: dict[str, str]) -> list[str]:
    pop = mailbox.pop3(stack)
    try:
        count = len(pop.list()[1])
        heads = [b"\n".join(pop.top(n, 0)[1]) for n in range(1, count + 1)]
    finally:
        pop.quit()
    return [h.split(b"Subject: ")[1].split(b"\n")[0].decode() for h in heads]


async def test_batch_delete_with_a_duplicate_id_on_dovecot(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    for i in range(1, 5):
        mailbox.append(stack, RAW.replace(b"hi", f"m{i}".encode()))
    r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    ids = {i["subject"]: i["id"] for i in r.json()["items"]}
    a, b = ids["m2"], ids["m4"]
    r = await client.post("/v1/messages/delete", params={"protocol": "pop3"},
                          json={"ids": [a, a, b]}, headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200, r.text
    assert [(x["id"], x["status"]) for x in r.json()["results"]] == [(a, 204), (a, 204), (b, 204)]
    assert _stored_subjects(mailbox, stack) == ["m1", "m3"]
    assert [raw for _, raw, _ in mailbox.messages(stack)] == [
        RAW.replace(b"hi", b"m1"),
        RAW.replace(b"hi", b"m3"),
    ]


# -- the cursor never repeats or skips -----------------------------------------------------------


async def _all_pages(
    client: Any, mailbox: Mailbox, limit: int, cursor: str | None = None
) -> list[list[str]]:
    pages = []
    while True:
        params: dict[str, Any] = {"protocol": "pop3", "limit": limit}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/v1/messages", params=params, headers=mailbox.auth)
        assert r.status_code == 200, r.text
        pages.append(_subjects(r.json()))
        cursor = r.json()["next_cursor"]
        if not cursor:
            return pages


def _fill(mailbox: Mailbox, stack: dict[str, str], count: int) -> dict[str, str]:
    """Messages m01 (oldest) .. m{count}; their UIDLs by subject."""
    for i in range(1, count + 1):
        mailbox.append(stack, RAW.replace(b"hi", f"m{i:02d}".encode()))
    pop = mailbox.pop3(stack)
    try:
        uidls = [u.split()[1].decode() for u in pop.uidl()[1]]
    finally:
        pop.quit()
    return {f"m{i:02d}": u for i, u in enumerate(uidls, 1)}


def _m(*numbers: int) -> list[str]:
    return [f"m{i:02d}" for i in numbers]


async def test_cursor_after_deleting_the_oldest_of_the_page_and_an_older_one(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    uidls = _fill(mailbox, stack, 30)
    params = {"protocol": "pop3", "limit": 15}
    r = await client.get("/v1/messages", params=params, headers=mailbox.auth)
    page_1 = r.json()
    assert _subjects(page_1) == _m(*range(30, 15, -1)) and page_1["next_cursor"]
    # the 10 oldest of page 1, and one older message
    _pop3_delete(mailbox, stack, [uidls[s] for s in (*_m(*range(16, 26)), "m05")])
    rest = await _all_pages(client, mailbox, 15, page_1["next_cursor"])
    assert rest == [_m(*range(15, 5, -1), 4, 3, 2, 1)]
    # and from the start: what is left, once each
    assert await _all_pages(client, mailbox, 4) == [
        _m(30, 29, 28, 27), _m(26, 15, 14, 13), _m(12, 11, 10, 9), _m(8, 7, 6, 4), _m(3, 2, 1)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("deleted", "page_3"),
    [
        # page 2 and the two next older messages: page 1's messages move below page 2's
        # last number, and the newest older message still present bounds the next page
        ([*range(11, 21), 10, 9], _m(*range(8, 0, -1))),
        # page 2 and every next older message the cursor names: the oldest message of
        # page 1 still present bounds it
        ([*range(3, 21)], _m(2, 1)),
        # page 2 alone: nothing moves below page 2's last number
        ([*range(11, 21)], _m(*range(10, 0, -1))),
    ],
    ids=["older-neighbour-left", "newer-neighbour-left", "page-deleted"],
)
async def test_cursor_never_repeats_an_earlier_page(
    deleted: list[int],
    page_3: list[str],
    client: Any,
    stack: dict[str, str],
    mailbox: Mailbox,
) -> None:
    uidls = _fill(mailbox, stack, 30)
    params = {"protocol": "pop3", "limit": 10}
    r = await client.get("/v1/messages", params=params, headers=mailbox.auth)
    assert _subjects(r.json()) == _m(*range(30, 20, -1))
    r = await client.get("/v1/messages", params={**params, "cursor": r.json()["next_cursor"]},
                         headers=mailbox.auth)  # fmt: skip
    assert _subjects(r.json()) == _m(*range(20, 10, -1))
    _pop3_delete(mailbox, stack, [uidls[s] for s in _m(*deleted)])
    assert await _all_pages(client, mailbox, 10, r.json()["next_cursor"]) == [page_3]


async def test_cursor_whose_surroundings_are_all_gone_is_410_not_a_repeat(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    for i in range(1, 41):
        mailbox.append(stack, RAW.replace(b"hi", b"m%03d" % i))
    params: dict[str, Any] = {"protocol": "pop3", "limit": 5}
    cursor = None
    for _ in range(3):  # pages m040..m026
        r = await client.get("/v1/messages", params={**params, **({"cursor": cursor} if cursor
                             else {})}, headers=mailbox.auth)  # fmt: skip
        cursor = r.json()["next_cursor"]
    conn = mailbox.imap(stack)  # the page and every neighbour the cursor knows: m018..m038
    try:
        conn.select("INBOX")
        typ, data = conn.uid("SEARCH", None, "ALL")
        uids = data[0].split()
        conn.uid("STORE", b"%s:%s" % (uids[17], uids[37]), "+FLAGS", "(\\Deleted)")
        conn.expunge()
    finally:
        conn.logout()
    r = await client.get("/v1/messages", params={**params, "cursor": cursor},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 410 and r.json()["code"] == "stale-id", r.text
