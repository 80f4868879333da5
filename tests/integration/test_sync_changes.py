"""GET /v1/changes against real Dovecot: every kind of change made by another client.

Each test runs against the full Dovecot (QRESYNC) and against two more Dovecot
instances of the mail stack that serve the same mailboxes but advertise less
(`imap_capability`): one without QRESYNC (CONDSTORE only), one without either.
Where a server cannot tell exactly, the answer must be 410, never a wrong one.
The changes are made with the standard library's imaplib on the full server.
Against Cyrus (`make test-cyrus`) only the full server runs: Cyrus has QRESYNC.
"""

from __future__ import annotations

import email
import imaplib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mailboxes import Mailbox
from mailstack_env import personal

pytestmark = pytest.mark.mailstack

# name → (stack variable of its IMAPS port, what it can tell)
SERVERS = {
    "qresync": ("MAILSTACK_IMAPS_PORT", {"expunges", "flags"}),
    "condstore": ("MAILSTACK_CONDSTORE_IMAPS_PORT", {"flags"}),
    "basic": ("MAILSTACK_BASIC_IMAPS_PORT", set()),
}


LESS = pytest.mark.dovecot("a second Dovecot on the same mailboxes that advertises less")


@pytest.fixture(params=[name if name == "qresync" else pytest.param(name, marks=LESS)
                        for name in SERVERS])  # fmt: skip
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def gw(make_client: Any, stack: dict[str, str], server: str) -> AsyncIterator[Any]:
    port = stack[SERVERS[server][0]]
    async with make_client(imap_url=f"imaps://localhost:{port}") as client:
        yield client


def can(server: str, what: str) -> bool:
    return what in SERVERS[server][1]


def raw(subject: str) -> bytes:
    return (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.test>\r\n\r\nbody {subject}\r\n"
    ).encode()


class Other:
    """Another mail client, on the full server: imaplib, one folder selected."""

    def __init__(self, box: Mailbox, stack: dict[str, str], folder: str = "INBOX") -> None:
        self.conn: imaplib.IMAP4_SSL = box.imap(stack)
        assert self.conn.select(folder)[0] == "OK"

    def uid(self, subject: str) -> int:
        typ, data = self.conn.uid("SEARCH", None, "HEADER", "Subject", subject)
        assert typ == "OK" and data[0], subject
        return int(data[0].split()[-1])

    def store(self, subject: str, op: str, flag: str) -> None:
        assert self.conn.uid("STORE", str(self.uid(subject)), op, f"({flag})")[0] == "OK"

    def expunge(self, subject: str) -> None:
        uid = str(self.uid(subject))
        assert self.conn.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert self.conn.uid("EXPUNGE", uid)[0] == "OK"

    def move(self, subject: str, folder: str) -> None:
        assert self.conn.uid("MOVE", str(self.uid(subject)), folder)[0] == "OK"

    def close(self) -> None:
        self.conn.logout()


async def listing(client: Any, box: Mailbox, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/messages", params={"protocol": "imap", **params}, headers=box.auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert isinstance(body["state"], str)
    return body


async def changes(client: Any, box: Mailbox, since: str, **params: Any) -> httpx.Response:
    r: httpx.Response = await client.get(
        "/v1/changes", params={"protocol": "imap", "since": since, **params}, headers=box.auth
    )
    return r


async def changed(client: Any, box: Mailbox, since: str, **params: Any) -> dict[str, Any]:
    r = await changes(client, box, since, **params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["old_state"] == since
    return body


def cannot(r: httpx.Response) -> None:
    assert r.status_code == 410, r.text
    assert r.json()["code"] == "cannot-calculate-changes"


def subjects(items: list[dict[str, Any]]) -> list[str]:
    return [i["subject"] for i in items]


async def test_nothing_changed_is_empty_and_keeps_the_state(
    gw: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    mailbox.append(stack, raw("one"))
    state = (await listing(gw, mailbox))["state"]
    body = await changed(gw, mailbox, state)
    assert body["created"] == body["updated"] == body["destroyed"] == []
    assert body["has_more"] is False
    again = await changed(gw, mailbox, body["new_state"])
    assert again["created"] == again["updated"] == again["destroyed"] == []


async def test_arrivals_and_moves_in_newest_first_with_flags(
    gw: Any, stack: dict[str, str], mailbox: Mailbox
) -> None:
    archive = personal(stack, "Archive")
    mailbox.append(stack, raw("old"))
    mailbox.append(stack, raw("moved-in"), folder=archive)
    state = (await listing(gw, mailbox))["state"]
    mailbox.append(stack, raw("new1"))
    mailbox.append(stack, raw("new2"), flags="\\Flagged")
    other = Other(mailbox, stack, archive)
    other.move("moved-in", "INBOX")
    other.close()
    body = await changed(gw, mailbox, state)
    assert subjects(body["created"]) == ["moved-in", "new2", "new1"]
    new2 = body["created"][1]
    assert new2["flags"] == ["\\Flagged"] and new2["seen"] is False
    assert new2["from"] == [{"name": None, "address": "a@example.test"}]
    assert "uidl" not in new2 and new2["uid"] > 0
    assert body["updated"] == [] and body["destroyed"] == []
    # The created ids are those of a listing.
    listed = {i["subject"]: i["id"] for i in (await listing(gw, mailbox))["items"]}
    assert {i["subject"]: i["id"] for i in body["created"]} == {
        k: v for k, v in listed.items() if k != "old"
    }
    assert (await changed(gw, mailbox, body["new_state"]))["created"] == []


async def test_flags_set_and_cleared(
    gw: Any, stack: dict[str, str], mailbox: Mailbox, server: str
) -> None:
    mailbox.append(stack, raw("m-a"))
    mailbox.append(stack, raw("m-b"), flags="\\Seen")
    mailbox.append(stack, raw("m-c"), flags="\\Flagged")
    mailbox.append(stack, raw("untouched"))
    first = await listing(gw, mailbox)
    ids = {i["subject"]: i["id"] for i in first["items"]}
    other = Other(mailbox, stack)
    other.store("m-a", "+FLAGS", "\\Seen")
    other.store("m-b", "-FLAGS", "\\Seen")
    other.store("m-c", "-FLAGS", "\\Flagged")
    other.store("untouched", "+FLAGS", "$Label1")
    other.store("untouched", "-FLAGS", "$Label1")
    other.close()
    r = await changes(gw, mailbox, first["state"])
    if not can(server, "flags"):
        cannot(r)
        return
    body = r.json()
    assert body["created"] == [] and body["destroyed"] == []
    got = {u["id"]: u for u in body["updated"]}
    a, b, c = ids["m-a"], ids["m-b"], ids["m-c"]
    assert got[a] == {"id": a, "flags": ["\\Seen"], "seen": True, "flagged": False}
    assert got[b] == {"id": b, "flags": [], "seen": False, "flagged": False}
    assert got[c] == {"id": c, "flags": [], "seen": False, "flagged": False}
    # A flag set and cleared again did change (twice): it may be listed, with its flags.
    assert set(got) - {a, b, c} <= {ids["untouched"]}
    assert all(u["flags"] == [] for k, u in got.items() if k == ids["untouched"])
    # Newest first, like everything else.
    order = [i["id"] for i in first["items"]]
    assert [u["id"] for u in body["updated"]] == [i for i in order if i in got]


async def test_expunge_and_move_out(
    gw: Any, stack: dict[str, str], mailbox: Mailbox, server: str
) -> None:
    archive = personal(stack, "Archive")
    for s in ("keep", "gone", "moved-out"):
        mailbox.append(stack, raw(s))
    first = await listing(gw, mailbox)
    ids = {i["subject"]: i["id"] for i in first["items"]}
    other = Other(mailbox, stack)
    other.expunge("gone")
    other.move("moved-out", archive)
    other.close()
    r = await changes(gw, mailbox, first["state"])
    if not can(server, "expunges"):
        cannot(r)
        return
    body = r.json()
    assert sorted(body["destroyed"]) == sorted([ids["gone"], ids["moved-out"]])
    assert body["created"] == [] and body["updated"] == []
    # The real state agrees: only "keep" is left.
    assert [email.message_from_bytes(m)["Subject"] for _, m, _ in mailbox.messages(stack)] == [
        "keep"
    ]


async def test_arrived_and_deleted_in_between_is_not_created(
    gw: Any, stack: dict[str, str], mailbox: Mailbox, server: str
) -> None:
    mailbox.append(stack, raw("old"))
    state = (await listing(gw, mailbox))["state"]
    mailbox.append(stack, raw("brief"))
    mailbox.append(stack, raw("stays"))
    other = Other(mailbox, stack)
    other.store("stays", "+FLAGS", "\\Seen")  # created and changed: once, in created
    other.expunge("brief")
    other.close()
    body = await changed(gw, mailbox, state)
    # Every server can tell this: nothing below the state's UIDNEXT changed.
    assert subjects(body["created"]) == ["stays"]
    assert body["created"][0]["seen"] is True
    assert body["updated"] == [] and body["destroyed"] == []


async def test_paging_with_has_more(
    gw: Any, stack: dict[str, str], mailbox: Mailbox, server: str
) -> None:
    for i in range(4):
        mailbox.append(stack, raw(f"old{i}"))
    first = await listing(gw, mailbox)
    ids = {i["subject"]: i["id"] for i in first["items"]}
    for i in range(5):
        mailbox.append(stack, raw(f"new{i}"))
    if can(server, "flags"):
        other = Other(mailbox, stack)
        other.store("old1", "+FLAGS", "\\Seen")
        other.store("old3", "+FLAGS", "\\Flagged")
        other.close()
    whole = await changed(gw, mailbox, first["state"], limit=500)
    assert whole["has_more"] is False
    pages: list[dict[str, Any]] = []
    since = first["state"]
    while True:
        page = await changed(gw, mailbox, since, limit=3)
        assert len(page["created"]) + len(page["updated"]) + len(page["destroyed"]) <= 3
        pages.append(page)
        since = page["new_state"]
        if not page["has_more"]:
            break
    assert len(pages) == (3 if can(server, "flags") else 2)
    created = [s for p in pages for s in subjects(p["created"])]
    assert created == subjects(whole["created"]) == [f"new{i}" for i in range(4, -1, -1)]
    updated = [u["id"] for p in pages for u in p["updated"]]
    assert updated == [u["id"] for u in whole["updated"]]
    if can(server, "flags"):
        assert updated == [ids["old3"], ids["old1"]]
    # Where paging ends, a change made meanwhile is still to come, exactly once.
    mailbox.append(stack, raw("later"))
    after = await changed(gw, mailbox, since)
    assert subjects(after["created"]) == ["later"]


async def test_paging_survives_changes_between_pages(
    gw: Any, stack: dict[str, str], mailbox: Mailbox, server: str
) -> None:
    mailbox.append(stack, raw("old"))
    state = (await listing(gw, mailbox))["state"]
    for i in range(4):
        mailbox.append(stack, raw(f"new{i}"))
    page = await changed(gw, mailbox, state, limit=2)
    assert subjects(page["created"]) == ["new3", "new2"] and page["has_more"]
    mailbox.append(stack, raw("between"))
    seen = subjects(page["created"])
    while page["has_more"]:
        page = await changed(gw, mailbox, page["new_state"], limit=2)
        seen += subjects(page["created"])
    page = await changed(gw, mailbox, page["new_state"], limit=2)
    seen += subjects(page["created"])
    assert sorted(seen) == sorted(["new0", "new1", "new2", "new3", "between"])
    assert len(seen) == len(set(seen))


async def test_uidvalidity_change_is_410(gw: Any, stack: dict[str, str], mailbox: Mailbox) -> None:
    projects = personal(stack, "Projects")
    conn = mailbox.imap(stack)
    assert conn.create(projects)[0] == "OK"
    conn.logout()
    mailbox.append(stack, raw("p1"), folder=projects)
    state = (await listing(gw, mailbox, folder=projects))["state"]
    conn = mailbox.imap(stack)
    assert conn.delete(projects)[0] == "OK" and conn.create(projects)[0] == "OK"
    conn.logout()
    cannot(await changes(gw, mailbox, state, folder=projects))


async def test_folder_states_and_bad_states(
    gw: Any, stack: dict[str, str], mailbox: Mailbox, server: str
) -> None:
    archive = personal(stack, "Archive")
    mailbox.append(stack, raw("one"))
    r = await gw.get("/v1/folders", headers=mailbox.auth)
    assert r.status_code == 200, r.text
    folders = {f["name"]: f for f in r.json()["items"]}
    assert all(isinstance(f["state"], str) for f in folders.values())
    mailbox.append(stack, raw("two"))
    r = await changes(gw, mailbox, folders["INBOX"]["state"])
    if can(server, "flags"):  # a folder's state needs MODSEQ (STATUS cannot give a digest)
        assert subjects(r.json()["created"]) == ["two"]
    else:
        cannot(r)
    # Another folder's state, a POP3 state, garbage: 422.
    for bad, folder in (
        (folders[archive]["state"], "INBOX"),
        (folders["INBOX"]["state"], archive),
        ("i1" + "A" * 40, "INBOX"),
        ("not a state", "INBOX"),
        (folders["INBOX"]["state"][:-3], "INBOX"),
    ):
        r = await changes(gw, mailbox, bad, folder=folder)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["code"] == "validation-failed"
    r = await gw.get("/v1/folders", params={"protocol": "pop3"}, headers=mailbox.auth)
    pop3_state = r.json()["items"][0]["state"]
    r = await changes(gw, mailbox, pop3_state)
    assert r.status_code == 422 and r.json()["code"] == "validation-failed"
    r = await changes(gw, mailbox, folders["INBOX"]["state"], limit=0)
    assert r.status_code == 422
