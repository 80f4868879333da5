"""mode=remove deletes a message only once the peer has every byte: raw-socket clients of
a real uvicorn that hang up early, or stall, leave the message on the real Dovecot (IMAP
and POP3; parsed, raw and attachment answers; 4 KB, 300 KB and 10 MB)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from mailboxes import Mailbox
from mailstack_env import fresh_address
from rawhttp import (
    EARLY,
    KINDS,
    SIZES,
    RawClient,
    in_client_thread,
    leave_early,
    message,
    path_of,
    read_all_then,
)

pytestmark = pytest.mark.mailstack


async def _id_of(client: httpx.AsyncClient, mailbox: Mailbox, proto: str) -> str:
    r = await client.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
    [item] = r.json()["items"]
    return str(item["id"])


async def _gather_limited(jobs: list[Callable[[], Awaitable[None]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(run(j) for j in jobs))


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_no_early_hang_up_or_stall_loses_the_message(
    proto: str, make_live_gateway: Any, stack: dict[str, str], password: str
) -> None:
    cases = [(k, s, h) for k in KINDS for s in SIZES for h in EARLY]
    boxes = {case: Mailbox(fresh_address("rm"), password) for case in cases}
    sent: dict[tuple[str, str, str], bytes] = {}
    for (kind, size, how), box in boxes.items():
        sent[(kind, size, how)] = message(kind, SIZES[size])
        await asyncio.to_thread(box.append, stack, sent[(kind, size, how)])
    async with (
        make_live_gateway(fetch_chunk_bytes=65536) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as client,
    ):

        def job(case: tuple[str, str, str]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                box = boxes[case]
                msg_id = await _id_of(client, box, proto)
                path = path_of(case[0], msg_id)
                await in_client_thread(leave_early, base, path, box.auth, case[2], SIZES[case[1]])

            return run

        await _gather_limited([job(c) for c in cases], 12)
        await asyncio.sleep(1.0)  # time enough for a (wrong) commit to land
    lost = []
    for case, box in boxes.items():
        stored = await asyncio.to_thread(box.messages, stack)
        if [raw for _, raw, _ in stored] != [sent[case]]:
            lost.append((case, len(stored)))
    assert lost == [], repr(lost)


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_a_client_that_reads_everything_gets_it_removed(
    proto: str, make_live_gateway: Any, stack: dict[str, str], password: str
) -> None:
    cases = [(k, s, close) for k in KINDS for s in SIZES for close in (True, False)]
    boxes = {case: Mailbox(fresh_address("rm"), password) for case in cases}
    for (kind, size, _), box in boxes.items():
        await asyncio.to_thread(box.append, stack, message(kind, SIZES[size]))
    bodies: dict[tuple[str, str, bool], bytes] = {}
    async with (
        make_live_gateway(fetch_chunk_bytes=65536) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as client,
    ):

        def job(case: tuple[str, str, bool]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                box = boxes[case]
                msg_id = await _id_of(client, box, proto)
                path = path_of(case[0], msg_id)
                bodies[case] = await in_client_thread(read_all_then, base, path, box.auth, case[2])
                assert await box.after_removal(stack, 0) == [], case

            return run

        await _gather_limited([job(c) for c in cases], 6)
    for (kind, size, _), body in bodies.items():
        if kind == "raw":
            assert len(body) >= SIZES[size]
        elif kind == "attachment":
            assert len(body) == SIZES[size]


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_an_answer_cancelled_by_the_server_commits_nothing(
    proto: str, make_live_gateway: Any, stack: dict[str, str], password: str
) -> None:
    """uvicorn's graceful-shutdown timeout cancels the answers still running: a
    cancelled answer was not delivered (before: a POP3 attachment was deleted after the
    client had read 2 KB of it)."""
    boxes = {kind: Mailbox(fresh_address("rm"), password) for kind in ("raw", "attachment")}
    for kind, box in boxes.items():
        await asyncio.to_thread(box.append, stack, message(kind, 3_000_000))
    stalled = []
    async with (
        make_live_gateway(fetch_chunk_bytes=65536, timeout_graceful_shutdown=0.5) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as client,
    ):
        for kind, box in boxes.items():
            path = path_of(kind, await _id_of(client, box, proto))
            stalled.append(await in_client_thread(RawClient, base, path, box.auth, 4096))
            await in_client_thread(stalled[-1].read_exactly, 2000)
    for reader in stalled:  # the server has stopped, cancelling both answers
        reader.close()
    for box in boxes.values():
        assert len(await asyncio.to_thread(box.messages, stack)) == 1


async def test_in_process_clients_cannot_use_remove(
    client: httpx.AsyncClient, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """No socket under an in-process (ASGI) client: the gateway cannot tell what the peer
    received, so mode=remove is refused, and nothing is deleted."""
    mailbox.append(stack, message("raw", 4000))
    msg_id = await _id_of(client, mailbox, "imap")
    for kind in KINDS:
        r = await client.get(path_of(kind, msg_id), headers=mailbox.auth)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "not-supported"
        assert "keep" in r.json()["detail"]
    assert len(mailbox.messages(stack)) == 1


async def test_a_client_that_stops_reading_frees_the_session(
    make_live_gateway: Any, client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """With one session per mailbox, a stalled download must not lock the mailbox out."""
    mailbox.append(stack, message("raw", 12_000_000))
    msg_id = await _id_of(client, mailbox, "imap")
    async with make_live_gateway(pool_size_per_user=1, stall_timeout=1.0) as base:
        stalled = await in_client_thread(RawClient, base, path_of("raw", msg_id), mailbox.auth,
                                         None)  # fmt: skip
        await in_client_thread(stalled.read_exactly, 1000)  # started; now read nothing more
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            r = await http.get("/v1/messages", headers=mailbox.auth)
        waited = time.monotonic() - start
        stalled.close()
    assert r.status_code == 200 and len(r.json()["items"]) == 1
    assert waited < 8  # freed by the stall timeout, not by the 10 s pool wait
    assert len(mailbox.messages(stack)) == 1  # and nothing was removed


def _hang_up_at_once(base: str, path: str, auth: dict[str, str], how: str) -> None:
    """Send the request and leave before any answer: close at once, or make the server
    close the connection with a malformed request pipelined behind it."""
    client = RawClient(base, path, auth, None)
    try:
        if how == "garbage":
            client.sock.sendall(b"GARBAGE\r\n\r\n")
            client.sock.settimeout(5)
            while client.sock.recv(65536):
                pass
    finally:
        client.close()


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_a_client_gone_before_the_answer_leaves_message_and_session(
    proto: str,
    make_live_gateway: Any,
    stack: dict[str, str],
    mailbox: Mailbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection closed while the answer was being prepared: the kernel's view of the
    socket is gone. It answered 500 (uvloop's closed socket raised ValueError) and, before
    the mail session was handed back, so each hang-up kept one POP3 session for good and
    a few locked the mailbox's reads out. One session per mailbox here: one leak shows."""
    mailbox.append(stack, message("raw", 4_000))
    mailbox.append(stack, message("raw", 4_000))
    async with (
        make_live_gateway(pool_size_per_user=1, command_timeout=5.0) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        r = await http.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
        newest, oldest = (item["id"] for item in r.json()["items"])
        for how in ("close", "garbage") * 5:
            await in_client_thread(
                _hang_up_at_once, base, path_of("raw", newest), mailbox.auth, how
            )
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # time enough for a (wrong) commit to land
        r = await http.get(f"/v1/messages/{oldest}/raw", params={"protocol": proto},
                           headers=mailbox.auth)  # fmt: skip
        assert r.status_code == 200, r.text  # the one session came back every time
        assert r.content == mailbox.messages(stack)[0][1]
    assert len(mailbox.messages(stack)) == 2  # neither was removed
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"], caplog.text
