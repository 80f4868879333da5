"""JSON bodies take JSON types: a string or a number where the contract says boolean is
422 and changes nothing on the real servers (pydantic's lax mode read "yes", "on", 1 and
"false" as booleans, so `{"seen": "false"}` marked a message seen)."""

from __future__ import annotations

import email
from typing import Any

import pytest
from mailboxes import Mailbox
from test_imap_api import items, raw

pytestmark = pytest.mark.mailstack

NOT_BOOLEANS = ["yes", "true", "false", "1", 1, 0, "on"]


async def test_patch_flags_must_be_json_booleans(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("one"))
    [item] = await items(client, mailbox)
    for field in ("seen", "flagged"):
        for value in NOT_BOOLEANS:
            r = await client.patch(
                f"/v1/messages/{item['id']}", json={field: value}, headers=mailbox.auth
            )
            assert r.status_code == 422, (field, value, r.text)
            problem = r.json()
            assert problem["code"] == "validation-failed"
            assert problem["errors"][0]["loc"] == ["body", field]
    [(_, _, flags)] = mailbox.messages(stack)
    assert "\\Seen" not in flags and "\\Flagged" not in flags, flags
    # true and false still work
    r = await client.patch(
        f"/v1/messages/{item['id']}", json={"seen": True, "flagged": False}, headers=mailbox.auth
    )
    assert r.status_code == 204, r.text
    [(_, _, flags)] = mailbox.messages(stack)
    assert "\\Seen" in flags and "\\Flagged" not in flags


async def test_send_attachment_inline_must_be_a_json_boolean(
    client: Any, stack: dict[str, str], mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    for value in NOT_BOOLEANS:
        draft = {
            "to": [other_mailbox.address],
            "subject": f"inline {value!r}",
            "attachments": [{"filename": "a.txt", "content_base64": "aGk=", "inline": value}],
        }
        r = await client.post("/v1/send", json=draft, headers=mailbox.auth)
        assert r.status_code == 422, (value, r.text)
        assert r.json()["code"] == "validation-failed"
    r = await client.post(
        "/v1/send",
        json={
            "to": [other_mailbox.address],
            "subject": "the only one",
            "attachments": [{"filename": "a.txt", "content_base64": "aGk=", "inline": True}],
        },
        headers=mailbox.auth,
    )
    assert r.status_code == 200, r.text
    got = other_mailbox.wait_for(stack)
    assert [email.message_from_bytes(m)["Subject"] for _, m, _ in got] == ["the only one"]


async def test_json_bodies_of_another_media_type_are_415_and_change_nothing(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    # POST /v1/send answered 415 for a body type it does not take; PATCH and
    # POST /v1/messages/delete answered 422 "Input should be a valid dictionary".
    mailbox.append(stack, raw("one"))
    [item] = await items(client, mailbox)
    body = b'{"seen": true}'
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml", None):
        headers = {**mailbox.auth, **({"Content-Type": ctype} if ctype else {})}
        r = await client.patch(f"/v1/messages/{item['id']}", content=body, headers=headers)
        assert r.status_code == 415, (ctype, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "unsupported-media-type"
        ids = f'{{"ids": ["{item["id"]}"]}}'.encode()
        r = await client.post("/v1/messages/delete", content=ids, headers=headers)
        assert r.status_code == 415, (ctype, r.text)
        assert r.json()["code"] == "unsupported-media-type"
    [(_, _, flags)] = mailbox.messages(stack)
    assert "\\Seen" not in flags
    # no body at all is the 422 that says so; JSON types with parameters are JSON
    r = await client.patch(f"/v1/messages/{item['id']}", headers=mailbox.auth)
    assert r.status_code == 422 and r.json()["code"] == "validation-failed", r.text
    for ctype in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = await client.patch(
            f"/v1/messages/{item['id']}",
            content=body,
            headers={**mailbox.auth, "Content-Type": ctype},
        )
        assert r.status_code == 204, (ctype, r.text)
    [(_, _, flags)] = mailbox.messages(stack)
    assert "\\Seen" in flags
