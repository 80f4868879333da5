"""IMAP-only behaviour through the API, checked against the real mailbox with imaplib."""

from __future__ import annotations

import email
from typing import Any

import pytest
from mailboxes import Mailbox
from mailstack_env import personal

pytestmark = pytest.mark.mailstack


def raw(subject: str, sender: str = "a@example.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: b@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\nbody {subject}\r\n"
    ).encode()


async def items(client: Any, box: Mailbox, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/messages", params={"protocol": "imap", **params}, headers=box.auth)
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()["items"]
    return result


async def test_stale_id_is_410(client: Any, stack: dict[str, str], mailbox: Mailbox) -> None:
    projects = personal(stack, "Projects")
    conn = mailbox.imap(stack)
    assert conn.create(projects)[0] == "OK"
    conn.logout()
    mailbox.append(stack, raw("old"), folder=projects)
    [item] = await items(client, mailbox, folder=projects)
    conn = mailbox.imap(stack)
    assert conn.delete(projects)[0] == "OK" and conn.create(projects)[0] == "OK"
    conn.logout()
    mailbox.append(stack, raw("new"), folder=projects)
    for method, path in (("GET", ""), ("GET", "/raw"), ("DELETE", "")):
        r = await client.request(method, f"/v1/messages/{item['id']}{path}",
                                 headers=mailbox.auth)  # fmt: skip
        assert r.status_code == 410, (method, path, r.text)
        assert r.json()["code"] == "stale-id"
    assert [email.message_from_bytes(m)["Subject"] for _, m, _ in
            mailbox.messages(stack, projects)] == ["new"]  # fmt: skip


async def test_missing_folder_is_404(client: Any, mailbox: Mailbox) -> None:
    r = await client.get("/v1/messages", params={"folder": "Nope"}, headers=mailbox.auth)
    assert r.status_code == 404 and r.json()["code"] == "not-found"


async def test_mark_seen_and_patch(client: Any, stack: dict[str, str], mailbox: Mailbox) -> None:
    archive = personal(stack, "Archive")
    mailbox.append(stack, raw("one"))
    mailbox.append(stack, raw("two"))
    listed = {i["subject"]: i for i in await items(client, mailbox)}
    assert listed["one"]["seen"] is False and listed["one"]["flags"] == []
    r = await client.get(f"/v1/messages/{listed['one']['id']}", params={"mark_seen": "true"},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200
    flags = {email.message_from_bytes(m)["Subject"]: f for _, m, f in mailbox.messages(stack)}
    assert "\\Seen" in flags["one"] and "\\Seen" not in flags["two"]
    # Listing again (summaries now cached) shows the fresh flags.
    again = {i["subject"]: i for i in await items(client, mailbox)}
    assert again["one"]["seen"] is True and again["two"]["seen"] is False
    r = await client.patch(f"/v1/messages/{listed['two']['id']}",
                           json={"flagged": True, "seen": True}, headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 204, r.text
    flags = {email.message_from_bytes(m)["Subject"]: f for _, m, f in mailbox.messages(stack)}
    assert "\\Flagged" in flags["two"] and "\\Seen" in flags["two"]
    assert [i["subject"] for i in await items(client, mailbox, flagged="true")] == ["two"]
    r = await client.patch(f"/v1/messages/{listed['two']['id']}", json={"folder": archive},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 204, r.text
    assert [email.message_from_bytes(m)["Subject"] for _, m, _ in mailbox.messages(stack)] == [
        "one"
    ]
    moved = mailbox.messages(stack, archive)
    assert [email.message_from_bytes(m)["Subject"] for _, m, _ in moved] == ["two"]
    r = await client.patch(f"/v1/messages/{listed['one']['id']}", json={"folder": "Nowhere"},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 404
    r = await client.patch(f"/v1/messages/{listed['one']['id']}", json={},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 422


async def test_a_move_tells_the_new_id_in_location(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    archive = personal(stack, "Archive")  # Cyrus: INBOX.Archive
    mailbox.append(stack, raw("stays"))
    mailbox.append(stack, raw("moves"))
    listed = {i["subject"]: i for i in await items(client, mailbox)}
    r = await client.patch(f"/v1/messages/{listed['stays']['id']}", json={"flagged": True},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 204 and "location" not in r.headers, r.headers
    r = await client.patch(f"/v1/messages/{listed['moves']['id']}", json={"folder": archive},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 204, r.text
    location = r.headers["location"]
    [(uid, _, _)] = mailbox.messages(stack, archive)
    [archived] = await items(client, mailbox, folder=archive)
    assert archived["uid"] == uid and location == f"/v1/messages/{archived['id']}"
    r = await client.get(location, headers=mailbox.auth)
    assert r.status_code == 200, r.text
    assert r.json()["subject"] == "moves" and r.json()["folder"] == archive
    r = await client.get(f"/v1/messages/{listed['moves']['id']}", headers=mailbox.auth)
    assert r.status_code == 404 and r.json()["code"] == "not-found"


async def test_search_filters(client: Any, stack: dict[str, str], mailbox: Mailbox) -> None:
    mailbox.append(stack, raw("invoice march", sender="billing@shop.test"))
    mailbox.append(stack, raw("hello there", sender="friend@example.test"), flags="\\Seen")
    mailbox.append(stack, raw("Price * 2 (unbalanced", sender="friend@example.test"))
    assert [i["subject"] for i in await items(client, mailbox, subject="invoice")] == [
        "invoice march"
    ]
    got = [i["subject"] for i in await items(client, mailbox, **{"from": "friend@example.test"})]
    assert got == ["Price * 2 (unbalanced", "hello there"]
    unseen = [i["subject"] for i in await items(client, mailbox, unseen="true")]
    assert unseen == ["Price * 2 (unbalanced", "invoice march"]
    assert [i["subject"] for i in await items(client, mailbox, subject="* 2 (")] == [
        "Price * 2 (unbalanced"
    ]
    assert await items(client, mailbox, since="2999-01-01") == []
    r = await client.get("/v1/messages", params={"subject": "a\r\nb"}, headers=mailbox.auth)
    assert r.status_code == 422
    r = await client.get("/v1/messages", params={"before": "0105-02-27"}, headers=mailbox.auth)
    assert r.status_code == 422 and r.json()["code"] == "validation-failed"  # not a 502


async def test_remove_spares_messages_flagged_deleted_elsewhere(
    live_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("flagged by another live_client"), flags="\\Deleted")
    mailbox.append(stack, raw("target"))
    target = next(i for i in await items(live_client, mailbox) if i["subject"] == "target")
    r = await live_client.get(f"/v1/messages/{target['id']}", params={"mode": "remove"},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200 and r.json()["removed"] is True
    [(_, left, flags)] = await mailbox.after_removal(stack, 1)
    assert b"flagged by another live_client" in left and "\\Deleted" in flags


@pytest.mark.parametrize("kind", ["starttls", "plain"])
async def test_starttls_and_plain_loopback(
    kind: str, make_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("over " + kind))
    port = stack["MAILSTACK_IMAP_PORT"]
    url = f"imap://localhost:{port}" if kind == "starttls" else f"imap+plain://127.0.0.1:{port}"
    async with make_client(imap_url=url) as client:
        assert [i["subject"] for i in await items(client, mailbox)] == ["over " + kind]


async def test_other_clients_connections_queue_instead_of_failing(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    """Dovecot allows 10 connections per user and IP; the user's own mail client holds 8.
    The gateway's pool (8 per user) must then live with what is left, queueing."""
    import asyncio

    mailbox.append(stack, raw("hello"))
    others = [mailbox.imap(stack) for _ in range(8)]
    try:
        results = await asyncio.gather(
            *(client.get("/v1/messages", headers=mailbox.auth) for _ in range(12))
        )
    finally:
        for conn in others:
            conn.logout()
    assert [r.status_code for r in results] == [200] * 12, results[0].text
    assert all(r.json()["items"][0]["subject"] == "hello" for r in results)


async def test_attachment_of_a_message_over_the_limit_streams_one_part(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    import os
    from email.message import EmailMessage

    blob = os.urandom(300_000)
    notes = ("Grüße * 2 = ok\n" * 3000).encode()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.test", "b@example.test", "big"
    msg.set_content("body")
    msg.add_alternative("<p>body</p>", subtype="html")
    msg.add_attachment(blob, maintype="application", subtype="octet-stream", filename="b.bin")
    msg.add_attachment(notes, maintype="text", subtype="plain", filename="notes ü.txt",
                       cte="quoted-printable")  # fmt: skip
    mailbox.append(stack, msg.as_bytes())
    async with make_client(live=True, max_message_bytes=100_000) as client:
        [item] = await items(client, mailbox)
        r = await client.get(f"/v1/messages/{item['id']}", headers=mailbox.auth)
        assert r.status_code == 413  # too large to parse whole ...
        url = f"/v1/messages/{item['id']}/attachments"
        r = await client.get(f"{url}/2", headers=mailbox.auth)  # ... but one part streams
        assert r.status_code == 200 and r.content == blob
        assert r.headers["content-type"] == "application/octet-stream"
        assert 'filename="b.bin"' in r.headers["content-disposition"]
        r = await client.get(f"{url}/3", headers=mailbox.auth)
        assert r.status_code == 200 and r.content == notes
        for missing in ("1", "9", "2.4"):  # 1 is the multipart/alternative
            r = await client.get(f"{url}/{missing}", headers=mailbox.auth)
            assert r.status_code == 404, (missing, r.text)
        r = await client.get(f"{url}/2", params={"protocol": "pop3"}, headers=mailbox.auth)
        assert r.status_code == 400  # an IMAP id is not a POP3 id
        r = await client.get(f"{url}/2", params={"mode": "remove"}, headers=mailbox.auth)
        assert r.status_code == 200 and r.content == blob
    assert await mailbox.after_removal(stack, 0) == []


async def test_inbox_spelling_and_keys_only_when_asked(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("x"))
    upper = await client.get("/v1/messages", params={"folder": "INBOX"}, headers=mailbox.auth)
    lower = await client.get("/v1/messages", params={"folder": "inbox"}, headers=mailbox.auth)
    assert upper.json()["items"][0]["id"] == lower.json()["items"][0]["id"]
    assert lower.json()["items"][0]["folder"] == "INBOX"
    assert "total" not in upper.json() and "uidl" not in upper.json()["items"][0]
    counted = await client.get("/v1/messages", params={"count": "true"}, headers=mailbox.auth)
    assert counted.json()["total"] == 1
    r = await client.get("/v1/folders", headers=mailbox.auth)
    assert all("messages" not in f and "unseen" not in f for f in r.json()["items"])
    r = await client.patch(f"/v1/messages/{upper.json()['items'][0]['id']}",
                           json={"folder": "Archive\r\nx"}, headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 422
    assert len(mailbox.messages(stack)) == 1


async def test_odd_attachment_type_is_served_and_frees_the_session(
    client: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    odd = (
        b"From: a@example.test\r\nSubject: odd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
        b"Content-Type: application/x-\xe4\xb8\xad\xe6\x96\x87; name=a.bin\r\n"
        b"Content-Disposition: attachment; filename=a.bin\r\n\r\nDATA\r\n--b--\r\n"
    )
    mailbox.append(stack, odd)
    [item] = await items(client, mailbox)
    for _ in range(12):  # more than the pool's sessions per user: none may leak
        r = await client.get(f"/v1/messages/{item['id']}/attachments/2", headers=mailbox.auth)
        assert r.status_code == 200 and r.content == b"DATA"
        assert r.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("folder", ["IN\x01BOX", "INBOX\x00", "Sent\r\nX", "A\x7fB"])
async def test_a_folder_name_with_control_characters_is_422_everywhere(
    client: Any, mailbox: Mailbox, folder: str
) -> None:
    # The listing, /changes and /events answered 404 "No such folder" (PATCH's folder
    # was already 422): a name no server can hold is the caller's mistake.
    r = await client.get("/v1/messages", headers=mailbox.auth)
    state = r.json()["state"]
    for path, params in (
        ("/v1/messages", {"folder": folder}),
        ("/v1/changes", {"folder": folder, "since": state}),
        ("/v1/events", {"folder": folder}),
    ):
        r = await client.get(path, params=params, headers=mailbox.auth)
        assert r.status_code == 422, (path, r.text)
        problem = r.json()
        assert problem["code"] == "validation-failed"
        assert problem["errors"][0]["loc"] == ["query", "folder"]
