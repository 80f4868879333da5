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
