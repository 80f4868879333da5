"""POST /v1/send against the real Postfix submission, read back from the real mailbox."""

from __future__ import annotations

import asyncio
import base64
import email
import json
import os
import socket
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


SMTP_URLS = {
    "starttls": lambda s: f"smtp://localhost:{s['MAILSTACK_SUBMISSION_PORT']}",
    "implicit": lambda s: f"smtps://localhost:{s['MAILSTACK_SMTPS_PORT']}",
    "plain": lambda s: f"smtp+plain://127.0.0.1:{s['MAILSTACK_SMTP_PLAIN_PORT']}",
}


@pytest.mark.parametrize("transport", sorted(SMTP_URLS))
async def test_json_send_is_delivered_intact(
    transport: str, stack: dict[str, str], make_client: Any, mailbox: Mailbox, password: str
) -> None:
    from mailstack_env import fresh_address

    to, cc, hidden = (Mailbox(fresh_address(p), password) for p in ("to", "cc", "bcc"))
    blob = os.urandom(70_000)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    draft = {
        "from": {"name": "Zoë Ünïcode 日本", "address": mailbox.address},
        "to": [f"Тест Получатель <{to.address}>"],
        "cc": [cc.address],
        "bcc": [{"name": "Hidden", "address": hidden.address}],
        "reply_to": ["replies@example.test"],
        "subject": "Grüße: Price * 2 (unbalanced \"quoted\" 😀",
        "text": "Hello ✓\nsecond line\n.\nafter a lone dot\n",
        "html": '<p>Hello ✓</p><img src="cid:logo@mailgate">',
        "headers": {"X-Campaign": "spring * 2"},
        "in_reply_to": "<parent@example.test>",
        "references": ["<root@example.test>", "<parent@example.test>"],
        "attachments": [
            {"filename": "data ü.bin", "content_type": "application/octet-stream",
             "content_base64": base64.b64encode(blob).decode()},
            {"filename": "logo.png", "content_type": "image/png", "inline": True,
             "content_id": "logo@mailgate", "content_base64": base64.b64encode(png).decode()},
        ],
    }  # fmt: skip
    async with make_client(smtp_url=SMTP_URLS[transport](stack)) as client:
        r = await client.post("/v1/send", json=draft, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["accepted"]) == sorted([to.address, cc.address, hidden.address])
    assert body["rejected"] == {}
    assert body["message_id"].startswith("<") and body["message_id"].endswith(">")

    copies = {}
    for box in (to, cc, hidden):
        [(_, raw, _)] = box.wait_for(stack)
        assert b"\nBcc:" not in raw and b"\nbcc:" not in raw.lower()
        assert hidden.address.encode() not in raw
        copies[box.address] = parse(raw)
    msg = copies[to.address]
    assert msg["Message-ID"] == body["message_id"]
    assert msg["Subject"] == draft["subject"]
    assert msg["From"].addresses[0].display_name == "Zoë Ünïcode 日本"
    assert msg["To"].addresses[0].display_name == "Тест Получатель"
    assert msg["Reply-To"].addresses[0].addr_spec == "replies@example.test"
    assert msg["X-Campaign"] == "spring * 2"
    assert msg["In-Reply-To"] == "<parent@example.test>"
    assert msg["References"].split() == ["<root@example.test>", "<parent@example.test>"]
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().replace("\r\n", "\n") == draft["text"]
    assert html.get_content().strip() == draft["html"]
    attachments = {p.get_filename(): p for p in msg.iter_attachments()}
    assert attachments["data ü.bin"].get_payload(decode=True) == blob
    inline = [p for p in msg.walk() if p["Content-ID"] == "<logo@mailgate>"]
    assert len(inline) == 1 and inline[0].get_payload(decode=True) == png
    assert inline[0].get_content_disposition() == "inline"


async def test_multipart_form_send_with_file_parts(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    pdf = b"%PDF-1.4\n" + os.urandom(200_000)
    draft = {"to": [other_mailbox.address], "subject": "form upload", "text": "see file"}
    r = await client.post(
        "/v1/send",
        headers=mailbox.auth,
        data={"message": json.dumps(draft)},
        files=[
            ("attachments", ("report.pdf", pdf, "application/pdf")),
            ("attachments", ("notes.txt", b"plain notes\n", "text/plain")),
        ],
    )
    assert r.status_code == 200, r.text
    [(_, raw, _)] = other_mailbox.wait_for(stack)
    msg = parse(raw)
    assert msg["From"].addresses[0].addr_spec == mailbox.address  # defaults to the user
    got = {p.get_filename(): (p.get_content_type(), p.get_payload(decode=True))
           for p in msg.iter_attachments()}  # fmt: skip
    assert got == {"report.pdf": ("application/pdf", pdf), "notes.txt": ("text/plain",
                   b"plain notes\n")}  # fmt: skip


async def test_raw_send_strips_bcc_and_keeps_bytes(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox, password: str
) -> None:
    from mailstack_env import fresh_address

    hidden = Mailbox(fresh_address("bcc"), password)
    raw = (
        f"From: {mailbox.address}\r\nTo: {other_mailbox.address}\r\n"
        f"Bcc: {hidden.address},\r\n  nobody-else@example.test\r\n"
        "Subject: raw * (unbalanced\r\nMessage-ID: <raw-1@example.test>\r\n"
        "X-Keep:   odd   spacing\r\n\r\nBody line\r\n..starts with dots\r\n"
    ).encode()
    r = await client.post(
        "/v1/send", content=raw, headers={**mailbox.auth, "Content-Type": "message/rfc822"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["message_id"] == "<raw-1@example.test>"
    for box in (other_mailbox, hidden):
        [(_, got, _)] = box.wait_for(stack)
        assert b"Bcc" not in got and hidden.address.encode() not in got
        assert b"X-Keep:   odd   spacing\r\n" in got
        assert got.endswith(b"\r\nBody line\r\n..starts with dots\r\n")


async def test_wrong_password_is_401_and_nothing_sent(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    bad = Mailbox(mailbox.address, "wrong-password")
    r = await client.post(
        "/v1/send", json={"to": [other_mailbox.address], "text": "x"}, headers=bad.auth
    )
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Basic")
    assert r.json()["code"] == "auth-failed"
    assert "wrong-password" not in r.text
    assert other_mailbox.messages(stack) == []


async def test_no_credentials_is_401(client: Any, other_mailbox: Mailbox) -> None:
    r = await client.post("/v1/send", json={"to": [other_mailbox.address], "text": "x"})
    assert r.status_code == 401
    assert r.json()["code"] == "auth-required"


INJECTIONS: list[dict[str, Any]] = [
    {"subject": "hi\r\nBcc: victim@example.test"},
    {"subject": "hi\nX-Injected: 1"},
    {"to_extra": "victim@example.test\r\nX-Injected: 1"},
    {"headers": {"X-Custom": "a\r\nBcc: victim@example.test"}},
    {"headers": {"X-Bad\r\nName": "a"}},
    {"in_reply_to": "<a@b>\r\nBcc: victim@example.test"},
    {"references": ["<a@b>\nX-Injected: 1"]},
    {"from": {"name": "Eve\r\nBcc: victim@example.test", "address": "eve@example.test"}},
    {"attachments": [{"filename": "a\r\nX-Injected: 1.txt", "content_base64": "aGk="}]},
]


async def test_crlf_injection_is_422_and_nothing_reaches_smtp(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    for case in INJECTIONS:
        draft: dict[str, Any] = {"to": [other_mailbox.address], "text": "x"}
        extra = dict(case)
        if "to_extra" in extra:
            draft["to"].append(extra.pop("to_extra"))
        draft.update(extra)
        r = await client.post("/v1/send", json=draft, headers=mailbox.auth)
        assert r.status_code == 422, (case, r.text)
        problem = r.json()
        assert problem["code"] == "validation-failed" and problem["status"] == 422
        assert r.headers["content-type"] == "application/problem+json"
    # Raw messages: envelope parameters are checked too.
    r = await client.post(
        "/v1/send",
        params={"rcpt_to": f"{other_mailbox.address}\r\nDATA"},
        content=b"Subject: x\r\n\r\nbody\r\n",
        headers={**mailbox.auth, "Content-Type": "message/rfc822"},
    )
    assert r.status_code == 422, r.text
    # A valid message sent last arrives alone: nothing before it was delivered.
    r = await client.post(
        "/v1/send",
        json={"to": [other_mailbox.address], "subject": "the only one", "text": "x"},
        headers=mailbox.auth,
    )
    assert r.status_code == 200, r.text
    got = other_mailbox.wait_for(stack)
    assert [parse(raw)["Subject"] for _, raw, _ in got] == ["the only one"]


async def test_oversize_is_413(make_client: Any, mailbox: Mailbox, other_mailbox: Mailbox,
                               stack: dict[str, str]) -> None:  # fmt: skip
    async with make_client(max_message_bytes=4096) as client:
        big = base64.b64encode(os.urandom(5000)).decode()
        r = await client.post(
            "/v1/send",
            json={"to": [other_mailbox.address], "text": "x",
                  "attachments": [{"filename": "b.bin", "content_base64": big}]},
            headers=mailbox.auth,
        )  # fmt: skip
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "too-large"
        r = await client.post(
            "/v1/send",
            content=b"Subject: x\r\nTo: " + other_mailbox.address.encode() + b"\r\n\r\n"
            + b"y" * 5000,
            headers={**mailbox.auth, "Content-Type": "message/rfc822"},
        )  # fmt: skip
        assert r.status_code == 413, r.text
    assert other_mailbox.messages(stack) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_smtp_server_down_is_503_with_retry_after(
    make_client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    async with make_client(smtp_url=f"smtp://127.0.0.1:{_closed_port()}") as client:
        r = await client.post(
            "/v1/send", json={"to": [other_mailbox.address], "text": "x"}, headers=mailbox.auth
        )
    assert r.status_code == 503
    assert r.json()["code"] == "upstream-unavailable"
    assert int(r.headers["retry-after"]) > 0
    assert mailbox.password not in r.text


async def test_idempotency_key_replays_and_conflicts(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    draft = {"to": [other_mailbox.address], "subject": "once", "text": "only once"}
    headers = {**mailbox.auth, "Idempotency-Key": "k-123"}
    first = await client.post("/v1/send", json=draft, headers=headers)
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    second = await client.post("/v1/send", json=draft, headers=headers)
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    # The same draft as other JSON text (key order, spacing: a client library's retry)
    # is the same body: replayed, not 409.
    respelled = json.dumps(dict(reversed(list(draft.items()))), indent=2)
    third = await client.post("/v1/send", content=respelled,
                              headers={**headers, "Content-Type": "application/json"})  # fmt: skip
    assert third.status_code == 200, third.text
    assert third.headers["idempotent-replayed"] == "true" and third.json() == first.json()
    other = await client.post("/v1/send", json={**draft, "text": "changed"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["code"] == "conflict"
    # Exactly one delivery: send a marker and wait for it.
    marker = await client.post(
        "/v1/send", json={"to": [other_mailbox.address], "subject": "marker", "text": "m"},
        headers=mailbox.auth,
    )  # fmt: skip
    assert marker.status_code == 200
    got = other_mailbox.wait_for(stack, count=2)
    subjects = sorted(parse(raw)["Subject"] for _, raw, _ in got)
    assert subjects == ["marker", "once"]


async def test_bad_bodies(client: Any, mailbox: Mailbox) -> None:
    r = await client.post(
        "/v1/send", content=b"hello", headers={**mailbox.auth, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415 and r.json()["code"] == "unsupported-media-type"
    r = await client.post(
        "/v1/send",
        content=b'{"to": [',
        headers={**mailbox.auth, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["code"] == "bad-request"
    r = await client.post("/v1/send", json={"text": "no recipients"}, headers=mailbox.auth)
    assert r.status_code == 422 and "recipient" in r.json()["detail"]


async def test_save_to_sent_keeps_bcc_in_the_copy(
    stack: dict[str, str], client: Any, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    r = await client.post(
        "/v1/send",
        params={"save_to_sent": "true"},
        json={"to": [other_mailbox.address], "bcc": ["hidden@example.test"],
              "subject": "kept", "text": "copy"},
        headers=mailbox.auth,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["saved_to"] == "Sent"
    [(_, copy, flags)] = mailbox.messages(stack, "Sent")
    msg = parse(copy)
    assert msg["Message-ID"] == r.json()["message_id"]
    assert msg["Bcc"] == "hidden@example.test"
    assert "\\Seen" in flags
    [(_, delivered, _)] = other_mailbox.wait_for(stack)
    assert b"hidden@example.test" not in delivered


CASES = os.path.join(os.path.dirname(__file__), "..", "data", "cases")
with open(os.path.join(CASES, "send-idn-deviation.json"), encoding="utf-8") as _f:
    IDN_DRAFT: dict[str, Any] = json.load(_f)


async def test_idn_deviation_characters_go_to_the_domain_written(
    stack: dict[str, str], client: Any, mailbox: Mailbox, password: str
) -> None:
    """ß and final ς are IDNA 2008 (UTS #46 non-transitional): straße.test is
    xn--strae-oqa.test, not IDNA 2003's strasse.test (another domain)."""
    draft = dict(IDN_DRAFT)
    draft["from"] = mailbox.address
    draft["subject"] += " " + os.urandom(6).hex()
    r = await client.post("/v1/send", json=draft, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    wanted = ["info@xn--strae-oqa.test", "info@xn--kxae4blv.test"]  # straße, ςοφία
    assert sorted(r.json()["accepted"]) == sorted(wanted)
    # Other domains end in the stack's sink mailbox: the copy that arrived there.
    sink = Mailbox(stack["MAILSTACK_SINK_ADDRESS"], password)
    for _ in range(200):
        found = [raw for _, raw, _ in sink.messages(stack) if draft["subject"].encode() in raw]
        if found:
            break
        await asyncio.sleep(0.05)
    [raw] = found
    to = parse(raw)["To"]
    assert [a.addr_spec for a in to.addresses] == wanted
    assert b"strasse" not in raw.lower() and b"xn--kxae4bpq" not in raw  # 2003 forms


@pytest.mark.parametrize("domain", ["☃.test", "xn--a.ü.test"])
async def test_domain_idna2008_refuses_is_422_before_smtp(
    client: Any, mailbox: Mailbox, domain: str
) -> None:
    draft = {"to": [f"info@{domain}"], "subject": "x", "text": "x"}
    r = await client.post("/v1/send", json=draft, headers=mailbox.auth)
    assert r.status_code == 422 and r.json()["code"] == "validation-failed", r.text
    assert "domain" in r.json()["detail"]
