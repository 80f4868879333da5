"""/v1/changes answered from what a session was told (its change journal), on the real server.

A session that keeps the folder selected with QRESYNC enabled is told each change as
it happens; /changes then asks the server only about the UIDs it was told of, instead of
``CHANGEDSINCE`` over the whole folder (service/protocols/imap/journal.py). These tests
make another client change the folder in every way, and check that the journal's answer
is exact and is the one the server's own CHANGEDSINCE gives to a gateway whose session
cannot have heard anything (a fresh app: its SELECT comes after the state). Which of
the two answered is read from the gateway's ``mailgate_imap_changes_total`` counter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from mailboxes import Mailbox
from mailstack_env import personal
from metrics_text import value
from test_sync_changes import Other, changed, listing, raw, subjects

pytestmark = pytest.mark.mailstack
# Cyrus says nothing when another client deletes the selected folder, so there each lease
# SELECTs again (ImapSession.tells_deletion): no journal outlives a request, and the server
# answers every time (tests/integration/test_sync_changes.py shows those answers).
HEARS = pytest.mark.dovecot("a session's journal outlives a request only where NOOP tells all")


async def sources(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    return {s: value(text, "mailgate_imap_changes_total", source=s) for s in ("journal", "server")}


async def answered_by(
    client: httpx.AsyncClient, box: Mailbox, since: str, source: str
) -> dict[str, Any]:
    """/changes since ``since``, which must have been answered by ``source``."""
    before = await sources(client)
    body = await changed(client, box, since)
    after = await sources(client)
    other = "server" if source == "journal" else "journal"
    assert after[source] - before[source] >= 1, (source, before, after)
    if source == "journal":
        assert after[other] == before[other], "the journal left it to the server"
    return body


def fill(box: Mailbox, stack: dict[str, str], *subjects: str) -> None:
    for subject in subjects:
        box.append(stack, raw(subject))


def essence(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("created", "updated", "destroyed", "has_more")}


async def warm(client: httpx.AsyncClient, box: Mailbox) -> str:
    """A state taken by a session that has the folder selected with QRESYNC enabled (its
    first /changes enables it and selects again; the journal starts there)."""
    first = (await listing(client, box))["state"]
    await changed(client, box, first)
    return str((await listing(client, box))["state"])


@HEARS
async def test_every_kind_of_change_as_the_server_tells_it(
    make_client: Callable[..., Any], stack: dict[str, str], mailbox: Mailbox
) -> None:
    archive = personal(stack, "Archive")
    fill(mailbox, stack, "keep", "read-me", "flag-me", "gone", "moved-out", "patched")
    mailbox.append(stack, raw("unseen-me"), flags="\\Seen")
    mailbox.append(stack, raw("moved-in"), folder=archive)
    async with make_client() as gw:
        state = await warm(gw, mailbox)
        ids = {i["subject"]: i["id"] for i in (await listing(gw, mailbox))["items"]}
        other = Other(mailbox, stack)
        other.store("read-me", "+FLAGS", "\\Seen")
        other.store("unseen-me", "-FLAGS", "\\Seen")
        other.store("flag-me", "+FLAGS", "\\Flagged")
        other.expunge("gone")
        other.move("moved-out", archive)
        mailbox.append(stack, raw("new"))
        mailbox.append(stack, raw("brief"))
        other.conn.noop()
        other.store("new", "+FLAGS", "\\Seen")  # created and changed: once, in created
        other.expunge("brief")  # created and expunged: nowhere
        mover = Other(mailbox, stack, archive)
        mover.move("moved-in", "INBOX")
        mover.close()
        other.close()
        # and one change through the gateway itself: the session's own STORE
        r = await gw.patch(f"/v1/messages/{ids['patched']}", json={"flagged": True},
                           headers=mailbox.auth)  # fmt: skip
        assert r.status_code in (200, 204), r.text
        body = await answered_by(gw, mailbox, state, "journal")

    assert subjects(body["created"]) == ["moved-in", "new"]
    assert body["created"][1]["seen"] is True
    assert sorted(body["destroyed"]) == sorted([ids["gone"], ids["moved-out"]])
    got = {u["id"]: (u["seen"], u["flagged"]) for u in body["updated"]}
    assert got == {
        ids["read-me"]: (True, False),
        ids["unseen-me"]: (False, False),
        ids["flag-me"]: (False, True),
        ids["patched"]: (False, True),
    }
    # A gateway whose session cannot have heard any of it asks the server: same answer.
    async with make_client() as fresh:
        server = await answered_by(fresh, mailbox, state, "server")
    assert essence(server) == essence(body)


async def test_an_expunge_it_cannot_place_is_left_to_the_server(
    make_client: Callable[..., Any], stack: dict[str, str], mailbox: Mailbox
) -> None:
    fill(mailbox, stack, "early", "later", "keep")
    async with make_client() as gw:
        await warm(gw, mailbox)  # its view is known at this point
        other = Other(mailbox, stack)
        other.expunge("early")
        # a state taken elsewhere after that expunge, before this session was told of it
        async with make_client() as elsewhere:
            listed = await listing(elsewhere, mailbox)
        assert "early" not in subjects(listed["items"])
        ids = {i["subject"]: i["id"] for i in listed["items"]}
        other.store("later", "+FLAGS", "\\Flagged")
        other.close()
        # The journal knows "early" went after its view's point and before now, not on
        # which side of the state: the server answers, and "early" is not destroyed.
        body = await answered_by(gw, mailbox, listed["state"], "server")
        assert body["destroyed"] == [] and body["created"] == []
        assert [u["id"] for u in body["updated"]] == [ids["later"]]
        # From the state it answered, the journal can place everything again.
        again = await answered_by(gw, mailbox, body["new_state"], "journal")
        assert essence(again) == {"created": [], "updated": [], "destroyed": [], "has_more": False}


async def test_messages_the_session_never_held_are_left_to_the_server(
    make_client: Callable[..., Any], stack: dict[str, str], mailbox: Mailbox
) -> None:
    # Found by a review: Dovecot tells a session nothing of a message that arrived,
    # changed or went between two syncs of its view (a bare EXISTS), so a state taken
    # elsewhere that holds such messages cannot be answered from the journal.
    mailbox.append(stack, raw("old"))
    async with make_client() as gw:
        await warm(gw, mailbox)
        mailbox.append(stack, raw("will-flag"))
        mailbox.append(stack, raw("will-go"))
        async with make_client() as elsewhere:  # another worker or replica
            listed = await listing(elsewhere, mailbox)
        ids = {i["subject"]: i["id"] for i in listed["items"]}
        other = Other(mailbox, stack)
        other.store("will-flag", "+FLAGS", "\\Flagged")
        other.expunge("will-go")
        other.close()
        body = await answered_by(gw, mailbox, listed["state"], "server")
    assert body["destroyed"] == [ids["will-go"]] and body["created"] == []
    assert body["updated"] == [
        {"id": ids["will-flag"], "flags": ["\\Flagged"], "seen": False, "flagged": True}
    ]


async def test_many_changes_told_without_flags_are_left_to_the_server(
    make_client: Callable[..., Any], stack: dict[str, str], mailbox: Mailbox
) -> None:
    # The gateway's own STOREs are silent: Dovecot tells their MODSEQ without FLAGS, and
    # the journal would fetch each one by itself; past a few, one CHANGEDSINCE is cheaper.
    fill(mailbox, stack, *(f"p{i}" for i in range(10)))
    async with make_client() as gw:
        state = await warm(gw, mailbox)
        ids = {i["subject"]: i["id"] for i in (await listing(gw, mailbox))["items"]}
        for i in range(10):
            r = await gw.patch(f"/v1/messages/{ids[f'p{i}']}", json={"seen": True},
                               headers=mailbox.auth)  # fmt: skip
            assert r.status_code in (200, 204), r.text
        body = await answered_by(gw, mailbox, state, "server")
    assert body["created"] == [] and body["destroyed"] == []
    assert sorted(u["id"] for u in body["updated"]) == sorted(ids.values())
    assert all(u["seen"] and u["flags"] == ["\\Seen"] for u in body["updated"])


@HEARS
async def test_pages_from_the_journal_add_up_to_the_whole(
    make_client: Callable[..., Any], stack: dict[str, str], mailbox: Mailbox
) -> None:
    fill(mailbox, stack, *(f"m{i}" for i in range(6)))
    async with make_client() as gw:
        state = await warm(gw, mailbox)
        other = Other(mailbox, stack)
        for i in (0, 2, 4):
            other.store(f"m{i}", "+FLAGS", "\\Flagged")
        other.expunge("m5")
        fill(mailbox, stack, "n1", "n2")
        other.close()
        whole = await answered_by(gw, mailbox, state, "journal")
        pages: list[dict[str, Any]] = []
        page = {"has_more": True, "new_state": state}
        while page["has_more"]:
            page = await changed(gw, mailbox, page["new_state"], limit=2)
            pages.append(page)
    assert len(pages) == 3 and all(len(p["created"] + p["updated"] + p["destroyed"]) <= 2
                                   for p in pages)  # fmt: skip
    assert sum((p["created"] for p in pages), []) == whole["created"]
    assert sum((p["updated"] for p in pages), []) == whole["updated"]
    assert sum((p["destroyed"] for p in pages), []) == whole["destroyed"]
    assert subjects(whole["created"]) == ["n2", "n1"] and len(whole["updated"]) == 3
    assert len(whole["destroyed"]) == 1
