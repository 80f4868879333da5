"""Bounded request bodies: every kind is refused with 413 as soon as it passes its limit,
whatever the framing, before any mail server is asked (wrong credentials get 413, not
401), and no more of the body is read than the limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack

LIMIT = 100_000
CHUNK = 8192


class Body:
    """A chunked request body that counts how much of it the gateway pulled."""

    def __init__(self, head: bytes, total: int, tail: bytes = b"") -> None:
        self.head, self.total, self.tail = head, total, tail
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks():
            self.pulled += len(chunk)
            yield chunk

    def _chunks(self) -> list[bytes]:
        out = [self.head]
        out += [b"a" * CHUNK] * (self.total // CHUNK)
        return [*out, self.tail]


def _wrong(mailbox: Mailbox) -> dict[str, str]:
    return Mailbox(mailbox.address, "wrong-password").auth


def _assert_413(r: Any, body: Body, limit: int) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] == "too-large" and str(limit) in problem["detail"]
    assert body.pulled <= limit + 2 * CHUNK  # refused while streaming, not at the end


@pytest.mark.parametrize("kind", ["json", "raw", "multipart"])
async def test_chunked_send_over_the_limit_is_413_before_credentials(
    kind: str, make_client: Any, mailbox: Mailbox
) -> None:
    wire_limit = LIMIT * 4 // 3 + 64 * 1024
    if kind == "json":
        body = Body(b'{"to": ["x@example.test"], "text": "', 5_000_000, b'"}')
        ctype, limit = "application/json", wire_limit
    elif kind == "raw":
        body = Body(b"To: x@example.test\r\nSubject: big\r\n\r\n", 5_000_000)
        ctype, limit = "message/rfc822", LIMIT
    else:
        draft = json.dumps({"to": ["x@example.test"], "text": "file"}).encode()
        body = Body(
            b'--b0\r\nContent-Disposition: form-data; name="message"\r\n\r\n' + draft
            + b'\r\n--b0\r\nContent-Disposition: form-data; name="attachments"; '
            b'filename="f.bin"\r\nContent-Type: application/octet-stream\r\n\r\n',
            5_000_000, b"\r\n--b0--\r\n",
        )  # fmt: skip
        ctype, limit = "multipart/form-data; boundary=b0", wire_limit
    async with make_client(max_message_bytes=LIMIT) as client:
        r = await client.post(
            "/v1/send", content=body, headers={**_wrong(mailbox), "Content-Type": ctype}
        )
    _assert_413(r, body, limit)


async def test_declared_length_over_the_limit_reads_nothing(
    make_client: Any, mailbox: Mailbox
) -> None:
    async with make_client(max_message_bytes=LIMIT) as client:
        r = await client.post(
            "/v1/send",
            content=b"x" * (LIMIT + 1),
            headers={**_wrong(mailbox), "Content-Type": "message/rfc822"},
        )
    assert r.status_code == 413 and r.json()["code"] == "too-large"


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/messages/delete"), ("PATCH", "/v1/messages/abc")]
)
async def test_other_bodies_are_bounded_too(
    method: str, path: str, make_client: Any, mailbox: Mailbox
) -> None:
    body = Body(b'{"ids": ["', 5_000_000, b'"]}')
    async with make_client() as client:
        r = await client.request(
            method, path, content=body,
            headers={**_wrong(mailbox), "Content-Type": "application/json"},
        )  # fmt: skip
    _assert_413(r, body, 1024 * 1024)


async def test_a_send_under_the_limit_still_works(
    stack: dict[str, str], make_client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    text = "line of text\n" * 5000  # 65 kB, chunked
    payload = json.dumps({"to": [other_mailbox.address], "subject": "fits", "text": text})
    body = Body(payload.encode(), 0)
    async with make_client(max_message_bytes=LIMIT) as client:
        r = await client.post(
            "/v1/send", content=body, headers={**mailbox.auth, "Content-Type": "application/json"}
        )
    assert r.status_code == 200, r.text
    [(_, raw, _)] = other_mailbox.wait_for(stack)
    assert b"Subject: fits" in raw
