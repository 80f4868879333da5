"""What only Cyrus IMAP shows (`make test-cyrus`): its namespace under "INBOX.", its
refusals without response codes, its POP3 UIDLs, its per-user limit over all protocols.

Run with MAILSTACK_SERVER=cyrus; skipped otherwise (marker ``cyrus``).
"""

from __future__ import annotations

import email
import imaplib
import re
from typing import Any

import pytest
from mailboxes import Mailbox
from mailstack_env import personal

pytestmark = [pytest.mark.mailstack, pytest.mark.cyrus]


def raw(subject: str) -> bytes:
    return (f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.test>\r\n\r\nbody {subject}\r\n").encode()  # fmt: skip


def subjects(messages: list[tuple[int, bytes, str]]) -> list[str]:
    return [str(email.message_from_bytes(m)["Subject"]) for _, m, _ in messages]


async def test_folders_are_under_inbox_with_their_roles(client: Any, mailbox: Mailbox) -> None:
    r = await client.get("/v1/folders", params={"counts": "true"}, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    folders = {f["name"]: f for f in r.json()["items"]}
    assert {name: f["role"] for name, f in folders.items()} == {
        "INBOX": "inbox",
        "INBOX.Sent": "sent",
        "INBOX.Drafts": "drafts",
        "INBOX.Trash": "trash",
        "INBOX.Junk": "junk",
        "INBOX.Archive": "archive",
    }
    assert {f["delimiter"] for f in folders.values()} == {"."}
    assert next(iter(folders)) == "INBOX"
    assert folders["INBOX"]["messages"] == 0


async def test_save_to_sent_creates_sent_where_cyrus_allows_it(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """Without a Sent folder the gateway creates one in the personal namespace: Cyrus
    refuses a folder at the top ("NO Permission denied")."""
    conn = mailbox.imap(stack)
    try:  # Cyrus deletes a special-use folder only once it has lost its special use
        imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
        unmark = conn._simple_command("SETMETADATA", "INBOX.Sent", "(/private/specialuse NIL)")
        assert unmark[0] == "OK", unmark
        assert conn.delete(personal(stack, "Sent"))[0] == "OK"
    finally:
        conn.logout()
    r = await client.post("/v1/send", params={"save_to_sent": "true"}, headers=mailbox.auth,
                          json={"to": ["nobody@example.test"], "subject": "kept copy",
                                "text": "hello"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["saved_to"] == "INBOX.Sent"
    assert subjects(mailbox.messages(stack, "INBOX.Sent")) == ["kept copy"]
    conn = mailbox.imap(stack)
    try:
        typ, lines = conn.list('""', "*")
    finally:
        conn.logout()
    assert typ == "OK"
    assert not [line for line in lines if line and line.endswith(b' "Sent"')]


async def test_move_to_a_name_outside_the_namespace_is_404_and_moves_nothing(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """Cyrus answers MOVE to a missing folder with a bare "NO Mailbox does not exist"."""
    mailbox.append(stack, raw("stay"))
    r = await client.get("/v1/messages", headers=mailbox.auth)
    [item] = r.json()["items"]
    r = await client.patch(f"/v1/messages/{item['id']}", json={"folder": "Archive"},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "not-found"
    assert r.json()["upstream"]["reply"] == "Mailbox does not exist"
    assert subjects(mailbox.messages(stack)) == ["stay"]
    r = await client.patch(f"/v1/messages/{item['id']}", json={"folder": "INBOX.Archive"},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 204, r.text
    assert subjects(mailbox.messages(stack, "INBOX.Archive")) == ["stay"]


async def test_pop3_uidls_are_uidvalidity_dot_uid(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    for s in ("one", "two"):
        mailbox.append(stack, raw(s))
    [(uid1, _, _), (uid2, _, _)] = mailbox.messages(stack)
    conn = mailbox.imap(stack)
    try:
        typ, data = conn.status("INBOX", "(UIDVALIDITY)")
    finally:
        conn.logout()
    m = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
    assert typ == "OK" and m
    r = await client.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    uidvalidity = m.group(1).decode()
    assert [i["uidl"] for i in items] == [f"{uidvalidity}.{uid2}", f"{uidvalidity}.{uid1}"]
    r = await client.get(f"/v1/messages/{items[0]['id']}/raw", headers=mailbox.auth)
    assert r.status_code == 200 and r.content.endswith(b"body two\r\n")
    r = await client.delete(f"/v1/messages/{items[0]['id']}", headers=mailbox.auth)
    assert r.status_code == 204, r.text
    assert subjects(mailbox.messages(stack)) == ["one"]


async def test_the_limit_counts_imap_and_pop3_together_and_is_503(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """maxlogins_per_user is 10 over all protocols: with 10 IMAP sessions of the user's
    own, the gateway's POP3 login is refused without a code ("-ERR Too many open
    connections"): 503 with Retry-After, never 401."""
    mailbox.append(stack, raw("full"))
    others = [mailbox.imap(stack) for _ in range(10)]
    try:
        async with make_client(command_timeout=1.5) as c:
            for proto in ("pop3", "imap"):
                r = await c.get("/v1/messages", params={"protocol": proto},
                                headers=mailbox.auth)  # fmt: skip
                assert r.status_code == 503, (proto, r.text)
                assert r.json()["code"] == "upstream-unavailable"
                assert int(r.headers["retry-after"]) >= 1
                assert "Too many open connections" in r.json()["upstream"]["reply"]
    finally:
        for conn in others:
            conn.logout()
    async with make_client() as c:
        r = await c.get("/v1/messages", params={"protocol": "pop3"}, headers=mailbox.auth)
    assert r.status_code == 200 and [i["subject"] for i in r.json()["items"]] == ["full"]


async def test_a_folder_created_again_elsewhere_is_410_on_a_pooled_session(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """The gateway's pooled session keeps INBOX.Box selected; another client deletes and
    creates it again. Cyrus's NOOP then says nothing, its next FETCH "NO Mailbox does not
    exist": /changes must answer 410 (list again), never 502; the listing is fresh."""
    box = personal(stack, "Box")
    conn = mailbox.imap(stack)
    try:
        assert conn.create(box)[0] == "OK"
    finally:
        conn.logout()
    mailbox.append(stack, raw("first"), folder=box)
    r = await client.get("/v1/messages", params={"folder": box}, headers=mailbox.auth)
    state = r.json()["state"]
    r = await client.get("/v1/changes", params={"folder": box, "since": state},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200 and r.json()["created"] == [], r.text
    conn = mailbox.imap(stack)
    try:
        assert conn.delete(box)[0] == "OK" and conn.create(box)[0] == "OK"
    finally:
        conn.logout()
    mailbox.append(stack, raw("second"), folder=box)
    r = await client.get("/v1/changes", params={"folder": box, "since": state},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 410, r.text
    assert r.json()["code"] == "cannot-calculate-changes"
    r = await client.get("/v1/messages", params={"folder": box}, headers=mailbox.auth)
    assert r.status_code == 200 and [i["subject"] for i in r.json()["items"]] == ["second"]
