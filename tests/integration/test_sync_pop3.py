"""GET /v1/changes over POP3 against real Dovecot: arrivals after an unchanged UIDL
prefix; a deletion by another client is 410, never a wrong answer."""

from __future__ import annotations

from typing import Any

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack


def raw(subject: str) -> bytes:
    return f"From: a@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


async def pop3_changes(client: Any, box: Mailbox, since: str, **params: Any) -> Any:
    return await client.get(
        "/v1/changes", params={"protocol": "pop3", "since": since, **params}, headers=box.auth
    )


async def pop3_state(client: Any, box: Mailbox) -> str:
    r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=box.auth)
    assert r.status_code == 200, r.text
    state: str = r.json()["state"]
    return state


async def test_arrivals_newest_first_and_paged(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("old"))
    state = await pop3_state(client, mailbox)
    r = await client.get("/v1/folders", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.json()["items"][0]["state"] == state  # the same maildrop, the same state
    for i in range(3):
        mailbox.append(stack, raw(f"new{i}"))
    r = await pop3_changes(client, mailbox, state)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["subject"] for c in body["created"]] == ["new2", "new1", "new0"]
    assert body["updated"] == [] and body["destroyed"] == [] and body["has_more"] is False
    first = body["created"][0]
    assert first["uidl"] and "uid" not in first and first["flags"] == []
    # The ids are the listing's.
    r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    listed = [i["id"] for i in r.json()["items"]]
    assert [c["id"] for c in body["created"]] == listed[:3]
    # Paged: the oldest arrivals first, each page newest first, the same in the end.
    page1 = (await pop3_changes(client, mailbox, state, limit=2)).json()
    assert [c["subject"] for c in page1["created"]] == ["new1", "new0"] and page1["has_more"]
    page2 = (await pop3_changes(client, mailbox, page1["new_state"], limit=2)).json()
    assert [c["subject"] for c in page2["created"]] == ["new2"] and not page2["has_more"]
    assert page2["new_state"] == body["new_state"]
    empty = (await pop3_changes(client, mailbox, body["new_state"])).json()
    assert empty["created"] == [] and empty["new_state"] == body["new_state"]


async def test_deletion_by_another_client_is_410(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("one"))
    mailbox.append(stack, raw("two"))
    state = await pop3_state(client, mailbox)
    other = mailbox.pop3(stack)
    other.dele(1)
    other.quit()
    mailbox.append(stack, raw("three"))
    r = await pop3_changes(client, mailbox, state)
    assert r.status_code == 410, r.text
    assert r.json()["code"] == "cannot-calculate-changes"
    r = await pop3_changes(client, mailbox, state, folder="Archive")
    assert r.status_code == 404
