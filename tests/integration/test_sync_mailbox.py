"""Sync states are bound to their mailbox, against real Dovecot: another user's state is
422 like another folder's, and a state of the format before that binding is 410.

Two mailboxes made in the same second share a UIDVALIDITY (Dovecot takes the time), so
before the binding one user's state was read as the other's, and /changes answered
from the wrong starting point (200).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from mailboxes import Mailbox
from test_sync_changes import raw
from test_sync_events import live_gateway, stream

pytestmark = pytest.mark.mailstack


def version_1(state: str) -> str:
    """The same state as the format before the mailbox binding wrote it."""
    payload = state[2:]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    del data["m"]
    text = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return state[0] + "1" + base64.urlsafe_b64encode(text).rstrip(b"=").decode()


async def listing_state(client: Any, box: Mailbox, protocol: str) -> str:
    r = await client.get("/v1/messages", params={"protocol": protocol}, headers=box.auth)
    assert r.status_code == 200, r.text
    state: str = r.json()["state"]
    return state


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_a_state_of_another_mailbox_is_422_like_another_folder(
    client: Any, stack: dict[str, str], mailbox: Mailbox, other_mailbox: Mailbox, protocol: str
) -> None:
    mailbox.append(stack, raw("mine"))
    other_mailbox.append(stack, raw("theirs"))
    mine = await listing_state(client, mailbox, protocol)
    theirs = await listing_state(client, other_mailbox, protocol)
    r = await client.get("/v1/folders", params={"protocol": protocol}, headers=other_mailbox.auth)
    [their_inbox] = [f for f in r.json()["items"] if f["name"] == "INBOX"]
    mailbox.append(stack, raw("new"))

    for state in (theirs, their_inbox["state"]):
        r = await client.get(
            "/v1/changes", params={"protocol": protocol, "since": state}, headers=mailbox.auth
        )
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "validation-failed"
        assert "another mailbox" in r.json()["detail"]
    # the owner's own state still works
    r = await client.get(
        "/v1/changes", params={"protocol": protocol, "since": mine}, headers=mailbox.auth
    )
    assert r.status_code == 200, r.text
    assert [c["subject"] for c in r.json()["created"]] == ["new"]


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_the_event_stream_refuses_another_mailboxs_state_before_streaming(
    stack: dict[str, str], mailbox: Mailbox, other_mailbox: Mailbox, protocol: str
) -> None:
    import httpx

    async with live_gateway(stack) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            theirs = await listing_state(client, other_mailbox, protocol)
            for params, headers in (
                ({"protocol": protocol, "since": theirs}, {}),
                ({"protocol": protocol}, {"Last-Event-ID": theirs}),
            ):
                r = await client.get(
                    "/v1/events", params=params, headers={**mailbox.auth, **headers}
                )
                assert r.status_code == 422, r.text
                assert r.json()["code"] == "validation-failed"


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_a_state_of_the_format_before_the_binding_is_410_and_a_stream_says_so(
    stack: dict[str, str], mailbox: Mailbox, protocol: str
) -> None:
    import httpx

    mailbox.append(stack, raw("one"))
    async with live_gateway(stack) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            state = await listing_state(client, mailbox, protocol)
            assert state[1] == "2"
            old = version_1(state)
            r = await client.get(
                "/v1/changes", params={"protocol": protocol, "since": old}, headers=mailbox.auth
            )
            assert r.status_code == 410, r.text
            assert r.json()["code"] == "cannot-calculate-changes"
            # a version 1 state of another folder is still the caller's mistake
            if protocol == "imap":
                r = await client.get(
                    "/v1/changes", params={"since": old, "folder": "Sent"}, headers=mailbox.auth
                )
                assert r.status_code == 422, r.text
        # /events replays nothing it cannot vouch for: one event, then the end
        async with stream(gw, mailbox, protocol=protocol, since=old) as s:
            end = await s.next()
            assert end is not None and end.event == "cannot-calculate-changes", end
            assert end.data["status"] == 410
            assert await s.next() is None
