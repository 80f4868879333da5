"""One contract for both readers: list, fetch, raw, attachment, delete, modes, errors.

Messages are put in place with the standard library's imaplib (IMAP and POP3 see
the same maildrop); the server's state afterwards is read the same independent way.
"""

from __future__ import annotations

import email
import os
import socket
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest
from mailboxes import Mailbox

pytestmark = pytest.mark.mailstack

TRICKY_SUBJECTS = ["Price * 2", "(unbalanced", '"quoted"', "Grüße aus Köln 😀", "a ) b ( c"]


def make_raw(subject: str, *, body: str = "Hello\r\n", attach: bytes | None = None,
             sender: str = "Sender Name <sender@example.test>") -> bytes:  # fmt: skip
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Rcpt <rcpt@example.test>"
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="example.test")
    msg["Date"] = email.utils.formatdate()
    msg.set_content(body)
    if attach is not None:
        msg.add_attachment(attach, maintype="application", subtype="octet-stream",
                           filename="blob ü.bin")  # fmt: skip
    return msg.as_bytes(policy=policy.SMTP)


async def listing(client: Any, box: Mailbox, proto: str, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/messages", params={"protocol": proto, **params}, headers=box.auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_list_newest_first_with_decoded_fields(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    for subject in TRICKY_SUBJECTS:
        mailbox.append(stack, make_raw(subject))
    body = await listing(client, mailbox, proto)
    items = body["items"]
    assert [i["subject"] for i in items] == TRICKY_SUBJECTS[::-1]
    assert body["next_cursor"] is None
    first = items[0]
    assert first["from"] == [{"name": "Sender Name", "address": "sender@example.test"}]
    assert first["to"] == [{"name": "Rcpt", "address": "rcpt@example.test"}]
    assert first["message_id"].startswith("<") and first["message_id"].endswith(">")
    assert first["size"] > 0 and first["folder"] == "INBOX"
    # The id's own protocol key only: uid (IMAP) or uidl (POP3).
    assert set(first) & {"uid", "uidl"} == {"uid" if proto == "imap" else "uidl"}
    assert first.get("uid") or first.get("uidl")
    assert len({i["id"] for i in items}) == len(items)


async def test_paging_by_cursor(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    for i in range(7):
        mailbox.append(stack, make_raw(f"m{i}"))
    seen: list[str] = []
    page = await listing(client, mailbox, proto, limit=3, count="true")
    assert page["total"] == 7
    seen += [i["subject"] for i in page["items"]]
    # A message arriving between pages does not disturb the older pages.
    mailbox.append(stack, make_raw("late"))
    while page["next_cursor"]:
        page = await listing(client, mailbox, proto, limit=3, cursor=page["next_cursor"])
        seen += [i["subject"] for i in page["items"]]
    assert seen == [f"m{i}" for i in range(6, -1, -1)]


async def test_fetch_parsed_and_ids_are_stable(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    blob = os.urandom(5000)
    mailbox.append(stack, make_raw("Price * 2", body="Grüße\r\n", attach=blob))
    [item] = (await listing(client, mailbox, proto))["items"]
    assert item["id"] == (await listing(client, mailbox, proto))["items"][0]["id"]
    r = await client.get(f"/v1/messages/{item['id']}", headers=mailbox.auth)
    assert r.status_code == 200, r.text
    assert r.headers["x-mail-mode"] == "keep"
    # a body known whole says its length, as every other JSON answer does (was chunked)
    assert r.headers["content-length"] == str(len(r.content))
    assert "transfer-encoding" not in r.headers
    msg = r.json()
    assert msg["id"] == item["id"] and msg["subject"] == "Price * 2"
    assert msg["text"].replace("\r\n", "\n") == "Grüße\n"
    assert msg["removed"] is False
    [att] = msg["attachments"]
    assert att["filename"] == "blob ü.bin" and att["size"] == len(blob)
    r = await client.get(f"/v1/messages/{item['id']}/attachments/{att['id']}", headers=mailbox.auth)
    assert r.status_code == 200 and r.content == blob
    assert "filename*=UTF-8''blob%20%C3%BC.bin" in r.headers["content-disposition"]
    r = await client.get(f"/v1/messages/{item['id']}/attachments/9", headers=mailbox.auth)
    assert r.status_code == 404 and r.json()["code"] == "not-found"
    assert len(mailbox.messages(stack)) == 1


async def test_raw_is_byte_exact_with_ranges(
    live_client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    raw = make_raw("raw", body="x" * 3000 + "\r\n.\r\n..two\r\n", attach=os.urandom(20000))
    mailbox.append(stack, raw)
    [item] = (await listing(live_client, mailbox, proto))["items"]
    url = f"/v1/messages/{item['id']}/raw"
    r = await live_client.get(url, headers=mailbox.auth)
    assert r.status_code == 200 and r.content == raw
    assert r.headers["content-type"] == "message/rfc822"
    if proto == "imap":  # RFC822.SIZE checked exact; POP3's LIST size is only an estimate
        assert int(r.headers["content-length"]) == len(raw)
    r = await live_client.get(url, headers={**mailbox.auth, "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == raw[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(raw)}"
    r = await live_client.get(url, headers={**mailbox.auth, "Range": "bytes=-50"})
    assert r.status_code == 206 and r.content == raw[-50:]
    r = await live_client.get(url, headers={**mailbox.auth, "Range": f"bytes={len(raw)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(raw)}"
    r = await live_client.get(url, params={"mode": "remove"},
                         headers={**mailbox.auth, "Range": "bytes=0-9"})  # fmt: skip
    assert r.status_code == 422
    assert len(mailbox.messages(stack)) == 1


async def test_keep_leaves_message_and_flags(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    raw = make_raw("keep me")
    mailbox.append(stack, raw)
    [item] = (await listing(client, mailbox, proto))["items"]
    for path in ("", "/raw", "/raw"):
        r = await client.get(f"/v1/messages/{item['id']}{path}", params={"mode": "keep"},
                             headers=mailbox.auth)  # fmt: skip
        assert r.status_code == 200 and r.headers["x-mail-mode"] == "keep"
    [(_, stored, flags)] = mailbox.messages(stack)
    assert stored == raw
    # No flag changes: IMAP reads with BODY.PEEK; POP3 with TOP n 999999999, because
    # Dovecot sets \Seen on RETR (and GreenMail too, but it offers no TOP: RETR it is).
    assert "\\Seen" not in flags


async def test_remove_removes_exactly_that_message(
    live_client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    for s in ("one", "two", "three"):
        mailbox.append(stack, make_raw(s))
    items = (await listing(live_client, mailbox, proto))["items"]
    target = next(i for i in items if i["subject"] == "two")
    r = await live_client.get(f"/v1/messages/{target['id']}", params={"mode": "remove"},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200
    assert r.headers["x-mail-mode"] == "remove" and r.json()["removed"] is True
    left = [
        email.message_from_bytes(raw)["Subject"]
        for _, raw, _ in await mailbox.after_removal(stack, 2)
    ]
    assert left == ["one", "three"]
    r = await live_client.get(f"/v1/messages/{target['id']}", headers=mailbox.auth)
    assert r.status_code == 404 and r.json()["code"] == "not-found"
    # raw in remove mode
    first = next(i for i in items if i["subject"] == "one")
    r = await live_client.get(f"/v1/messages/{first['id']}/raw", params={"mode": "remove"},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 200 and b"Subject: one" in r.content
    left = [
        email.message_from_bytes(raw)["Subject"]
        for _, raw, _ in await mailbox.after_removal(stack, 1)
    ]
    assert left == ["three"]


async def test_remove_with_range_is_422_on_every_read_and_removes_nothing(
    live_client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    # Only /raw refused it; the parsed and attachment reads ignored the Range, answered
    # 200 and removed the message, where the contract refuses remove with Range.
    mailbox.append(stack, make_raw("kept", attach=b"blob"))
    [item] = (await listing(live_client, mailbox, proto))["items"]
    for path in ("", "/raw", "/attachments/2"):
        r = await live_client.get(
            f"/v1/messages/{item['id']}{path}",
            params={"mode": "remove"},
            headers={**mailbox.auth, "Range": "bytes=0-9"},
        )
        assert r.status_code == 422, (path, r.text)
        assert r.json()["code"] == "validation-failed" and "Range" in r.json()["detail"]
        assert "x-mail-mode" not in r.headers
    # refused before the message was opened: nothing can be pending
    assert [email.message_from_bytes(m)["Subject"] for _, m, _ in mailbox.messages(stack)] == [
        "kept"
    ]


async def test_delete_one_and_batch(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    for s in ("a", "b", "c", "d"):
        mailbox.append(stack, make_raw(s))
    items = {i["subject"]: i["id"] for i in (await listing(client, mailbox, proto))["items"]}
    r = await client.delete(f"/v1/messages/{items['a']}", headers=mailbox.auth)
    assert r.status_code == 204
    r = await client.delete(f"/v1/messages/{items['a']}", headers=mailbox.auth)
    assert r.status_code == 404 and r.json()["code"] == "not-found"
    r = await client.post(
        "/v1/messages/delete",
        json={"ids": [items["b"], items["a"], "not-an-id", items["c"]]},
        headers=mailbox.auth,
    )
    assert r.status_code == 200, r.text
    assert [(x["status"], x["code"]) for x in r.json()["results"]] == [
        (204, None), (404, "not-found"), (400, "invalid-id"), (204, None),
    ]  # fmt: skip
    left = [email.message_from_bytes(raw)["Subject"] for _, raw, _ in mailbox.messages(stack)]
    assert left == ["d"]


async def test_errors(
    client: Any, make_client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    r = await client.get("/v1/messages/zzz", params={"protocol": proto}, headers=mailbox.auth)
    assert r.status_code == 400 and r.json()["code"] == "invalid-id"
    wrong = Mailbox(mailbox.address, "not-the-password")
    r = await client.get("/v1/messages", params={"protocol": proto}, headers=wrong.auth)
    assert r.status_code == 401 and r.json()["code"] == "auth-failed"
    assert "not-the-password" not in r.text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = {"imap_url": f"imaps://127.0.0.1:{port}", "pop3_url": f"pop3s://127.0.0.1:{port}"}
    async with make_client(**url) as down:
        r = await down.get("/v1/messages", params={"protocol": proto}, headers=mailbox.auth)
    assert r.status_code == 503 and r.json()["code"] == "upstream-unavailable"
    assert int(r.headers["retry-after"]) > 0


async def test_folders(client: Any, mailbox: Mailbox, proto: str, stack: dict[str, str]) -> None:
    mailbox.append(stack, make_raw("x"))
    r = await client.get(
        "/v1/folders", params={"protocol": proto, "counts": "true"}, headers=mailbox.auth
    )
    assert r.status_code == 200, r.text
    folders = {f["name"]: f for f in r.json()["items"]}
    assert folders["INBOX"]["role"] == "inbox" and folders["INBOX"]["messages"] == 1
    if proto == "imap":
        assert folders["INBOX"]["unseen"] == 1
        assert {f["role"] for f in folders.values()} >= {"sent", "drafts", "trash", "junk"}
    else:
        assert list(folders) == ["INBOX"]


async def test_pop3_says_not_supported(
    client: Any, mailbox: Mailbox, stack: dict[str, str]
) -> None:
    mailbox.append(stack, make_raw("x"))
    [item] = (await listing(client, mailbox, "pop3"))["items"]
    r = await client.patch(f"/v1/messages/{item['id']}", json={"seen": True},
                           headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 422 and r.json()["code"] == "not-supported"
    r = await client.get("/v1/messages", params={"protocol": "pop3", "unseen": "true"},
                         headers=mailbox.auth)  # fmt: skip
    assert r.status_code == 422 and r.json()["code"] == "not-supported"


async def test_header_filters_agree_on_both_protocols(
    client: Any, stack: dict[str, str], mailbox: Mailbox, proto: str
) -> None:
    import datetime

    mailbox.append(stack, make_raw("invoice march", sender="Billing <billing@shop.test>"))
    mailbox.append(stack, make_raw("Price * 2 (unbalanced", sender="friend@example.test"))
    mailbox.append(stack, make_raw("hello there", sender="Friend <friend@example.test>"))

    async def subjects(**params: Any) -> list[str]:
        return [i["subject"] for i in (await listing(client, mailbox, proto, **params))["items"]]

    assert await subjects(subject="INVOICE") == ["invoice march"]
    assert await subjects(**{"from": "friend@example.test"}) == [
        "hello there", "Price * 2 (unbalanced",
    ]  # fmt: skip
    assert await subjects(subject="* 2 (") == ["Price * 2 (unbalanced"]
    assert await subjects(to="rcpt@example.test", limit=1, count="true") == ["hello there"]
    page = await listing(client, mailbox, proto, to="rcpt@example.test", limit=2, count="true")
    assert page["total"] == 3 and page["next_cursor"]
    rest = await listing(client, mailbox, proto, to="rcpt@example.test", limit=2,
                         cursor=page["next_cursor"])  # fmt: skip
    assert [i["subject"] for i in rest["items"]] == ["invoice march"] and not rest["next_cursor"]
    today = datetime.date.today()
    assert len(await subjects(since=str(today - datetime.timedelta(days=1)))) == 3
    assert await subjects(since=str(today + datetime.timedelta(days=2))) == []
    assert await subjects(before=str(today - datetime.timedelta(days=2))) == []
