"""Every answer reflects the server's state at the time of the request, whatever a pooled
IMAP session saw before (real Dovecot; another client changes the mailbox meanwhile)."""

from __future__ import annotations

from typing import Any

import pytest
from mailboxes import Mailbox
from mailstack_env import personal

pytestmark = pytest.mark.mailstack


def raw(subject: str) -> bytes:
    return (f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n\r\n"
            "body\r\n").encode()  # fmt: skip


async def subjects(client: Any, mailbox: Mailbox, folder: str = "INBOX") -> list[str]:
    r = await client.get("/v1/messages", params={"folder": folder}, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    return [i["subject"] for i in r.json()["items"]]


async def test_folder_counts_of_the_selected_folder_are_current(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    for i in range(5):
        mailbox.append(stack, raw(f"old {i}"))
    assert len(await subjects(client, mailbox)) == 5  # a pooled session now has INBOX open
    other = mailbox.imap(stack)
    try:
        other.select("INBOX")
        other.store("1:*", "+FLAGS", "\\Deleted")
        other.expunge()
    finally:
        other.logout()
    for i in range(3):
        mailbox.append(stack, raw(f"new {i}"))
    r = await client.get("/v1/folders", params={"counts": "true"}, headers=mailbox.auth)
    inbox = next(f for f in r.json()["items"] if f["name"] == "INBOX")
    assert (inbox["messages"], inbox["unseen"]) == (3, 3)
    assert sorted(await subjects(client, mailbox)) == ["new 0", "new 1", "new 2"]


async def test_a_folder_deleted_and_recreated_elsewhere_is_stale_not_502(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    box = personal(stack, "Box")
    other = mailbox.imap(stack)
    try:
        assert other.create(box)[0] == "OK"
    finally:
        other.logout()
    mailbox.append(stack, raw("first life"), folder=box)
    r = await client.get("/v1/messages", params={"folder": box}, headers=mailbox.auth)
    [item] = r.json()["items"]
    r = await client.get(f"/v1/messages/{item['id']}", headers=mailbox.auth)
    assert r.status_code == 200  # the pooled session has Box selected now
    other = mailbox.imap(stack)
    try:
        assert other.delete(box)[0] == "OK"
        assert other.create(box)[0] == "OK"
    finally:
        other.logout()
    mailbox.append(stack, raw("second life"), folder=box)
    for path in ("", "/raw"):
        r = await client.get(f"/v1/messages/{item['id']}{path}", headers=mailbox.auth)
        assert r.status_code == 410, r.text
        assert r.json()["code"] == "stale-id"
    assert await subjects(client, mailbox, box) == ["second life"]
    # Deleted for good: the folder is gone, not a server error.
    other = mailbox.imap(stack)
    try:
        deleted = other.delete(box)
        assert deleted[0] == "OK", deleted
    finally:
        other.logout()
    r = await client.get("/v1/messages", params={"folder": box}, headers=mailbox.auth)
    assert r.status_code == 404 and r.json()["code"] == "not-found"


async def test_a_message_that_arrived_after_the_listing_is_found(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """The id of a message newer than a pooled session's view is fetched, not 404."""
    mailbox.append(stack, raw("one"))
    assert await subjects(client, mailbox) == ["one"]
    mailbox.append(stack, raw("two"))
    other = mailbox.imap(stack)  # another client lists it (our session has not seen it)
    try:
        other.select("INBOX", readonly=True)
        uidvalidity = int(other.response("UIDVALIDITY")[1][0])
    finally:
        other.logout()
    from service.ids import ImapRef

    newest = max(uid for uid, _, _ in mailbox.messages(stack))
    msg_id = ImapRef("INBOX", uidvalidity, newest).encode()
    for path in ("", "/raw"):
        r = await client.get(f"/v1/messages/{msg_id}{path}", headers=mailbox.auth)
        assert r.status_code == 200, r.text
    assert r.content.endswith(b"body\r\n") and b"Subject: two" in r.content
