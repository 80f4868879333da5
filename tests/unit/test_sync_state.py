"""Sync state tokens: round trips, URL safety, and strict validation (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from service.errors import CannotCalculateChanges, ValidationFailed
from service.sync.state import (
    ImapMark,
    ImapState,
    Pop3State,
    decode_state,
    flags_digest,
    mailbox_tag,
    uidl_digest,
)

URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
ALICE = mailbox_tag("default", "alice@example.test")
BOB = mailbox_tag("default", "bob@example.test")


def token(kind: str, data: object, version: str = "2") -> str:
    if version == "2" and isinstance(data, dict) and "m" not in data:
        data = {"m": ALICE, **data}
    raw = json.dumps(data).encode()
    return kind + version + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "state",
    [
        ImapState("INBOX", 17, ImapMark(12, 11, 30), mailbox=ALICE),
        ImapState(
            "Grüße/Ünïcode 😀",
            2**32 - 1,
            ImapMark(2**32, 5, None, flags_digest({1: []})),
            mailbox=ALICE,
        ),
        ImapState("INBOX", 1, ImapMark(3, 2, 9), ImapMark(40, 30, 99), 25, mailbox=ALICE),
        ImapState("INBOX", 1, ImapMark(1, 0, 0), mailbox=ALICE),
    ],
)
def test_imap_round_trip_and_url_safe(state: ImapState) -> None:
    text = state.encode()
    assert set(text) <= URL_SAFE and text.startswith("i2")
    assert decode_state(text, protocol="imap", folder=state.folder, mailbox=ALICE) == state


def test_pop3_round_trip() -> None:
    state = Pop3State(3, uidl_digest(["a", "b", "c"]), mailbox=ALICE)
    text = state.encode()
    assert set(text) <= URL_SAFE and text.startswith("p2")
    assert decode_state(text, protocol="pop3", folder="INBOX", mailbox=ALICE) == state


def test_digests_are_order_and_recent_insensitive_where_they_should_be() -> None:
    assert flags_digest({1: ["\\Seen", "\\Recent"], 2: []}) == flags_digest({2: [], 1: ["\\Seen"]})
    assert flags_digest({1: ["\\Seen"]}) != flags_digest({1: []})
    assert flags_digest({1: []}) != flags_digest({2: []})
    assert uidl_digest(["a", "b"]) != uidl_digest(["b", "a"])


GOOD_MARK = [12, 11, 30, None]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "i1",
        "x2" + token("", {})[2:],
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK}, version="3"),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "m": None}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "m": ""}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "m": ALICE[:-1]}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "m": ALICE[:-1] + "="}),
        token("p", {"n": 1, "d": "A" * 22, "m": 5}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "m": ALICE}, version="1"),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK}) + "!",
        token("i", [1, 2]),
        token("i", {"f": "INBOX", "v": 0, "b": GOOD_MARK}),
        token("i", {"f": "INBOX", "v": 2**32, "b": GOOD_MARK}),
        token("i", {"f": "INBOX", "v": True, "b": GOOD_MARK}),
        token("i", {"f": "INBOX", "v": "1", "b": GOOD_MARK}),
        token("i", {"f": "", "v": 1, "b": GOOD_MARK}),
        token("i", {"f": "IN\nBOX", "v": 1, "b": GOOD_MARK}),
        token("i", {"f": "INBOX", "v": 1, "b": [12, 12, 30, None]}),  # exists >= uidnext
        token("i", {"f": "INBOX", "v": 1, "b": [0, 0, 30, None]}),
        token("i", {"f": "INBOX", "v": 1, "b": [12, 11, -1, None]}),
        token("i", {"f": "INBOX", "v": 1, "b": [12, 11, 30, "short"]}),
        token("i", {"f": "INBOX", "v": 1, "b": [12, 11, 30]}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "x": 1}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "u": 3}),  # paging without target
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "t": [10, 9, 40, None], "u": 3}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "t": [20, 9, 20, None], "u": 3}),
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK, "t": [20, 9, 40, None], "u": 21}),
        token("p", {"n": 1}),
        token("p", {"n": -1, "d": "A" * 22}),
        token("p", {"n": 1, "d": "A" * 21 + "="}),
        "i1" + "A" * 5000,
    ],
)
def test_malformed_states_are_422(text: str) -> None:
    with pytest.raises(ValidationFailed):
        decode_state(
            text, protocol=text[:1] == "p" and "pop3" or "imap", folder="INBOX", mailbox=ALICE
        )


def test_other_folder_or_protocol_is_422() -> None:
    imap = ImapState("INBOX", 1, ImapMark(2, 1, 5), mailbox=ALICE).encode()
    pop3 = Pop3State(0, uidl_digest([]), mailbox=ALICE).encode()
    with pytest.raises(ValidationFailed, match="another folder"):
        decode_state(imap, protocol="imap", folder="Archive", mailbox=ALICE)
    with pytest.raises(ValidationFailed, match="imap"):
        decode_state(imap, protocol="pop3", folder="INBOX", mailbox=ALICE)
    with pytest.raises(ValidationFailed, match="pop3"):
        decode_state(pop3, protocol="imap", folder="INBOX", mailbox=ALICE)


def test_a_state_of_another_mailbox_is_422() -> None:
    # Two mailboxes made in the same second share a UIDVALIDITY (Dovecot takes the
    # time): without the mailbox in the state, bob's state read alice's folder as his.
    for state in (
        ImapState("INBOX", 1796082014, ImapMark(2, 1, 2), mailbox=BOB),
        Pop3State(1, uidl_digest(["000000016b0e095e"]), mailbox=BOB),
    ):
        with pytest.raises(ValidationFailed, match="another mailbox"):
            decode_state(state.encode(), protocol=state.protocol, folder="INBOX", mailbox=ALICE)


def test_the_mailbox_tag_is_the_users_whatever_its_case_and_the_providers() -> None:
    assert mailbox_tag("default", "Alice@Example.TEST") == ALICE
    assert mailbox_tag("other", "alice@example.test") != ALICE
    assert ALICE != BOB
    assert len(ALICE) == 16 and set(ALICE) <= URL_SAFE
    assert "alice" not in ALICE
    # no key, no process state: every replica and every release computes the same tag
    assert ALICE == "x2wVVUS6VQFT63kE"


@pytest.mark.parametrize(
    ("kind", "protocol", "data"),
    [
        ("i", "imap", {"f": "INBOX", "v": 1, "b": GOOD_MARK}),
        ("p", "pop3", {"n": 1, "d": "A" * 22}),
    ],
)
def test_a_version_1_state_names_no_mailbox_and_answers_410(
    kind: str, protocol: str, data: dict[str, object]
) -> None:
    old = token(kind, data, version="1")
    with pytest.raises(CannotCalculateChanges, match="list the folder again"):
        decode_state(old, protocol=protocol, folder="INBOX", mailbox=ALICE)
    # still checked as before: another folder or protocol is the caller's mistake, 422
    with pytest.raises(ValidationFailed):
        decode_state(old, protocol="pop3" if kind == "i" else "imap", folder="INBOX", mailbox=ALICE)


@pytest.mark.parametrize("kind", ["i", "p"])
def test_deeply_nested_json_is_422_not_500(kind: str) -> None:
    # 1,500 nested arrays fit in a 4,096-character token; json.loads then raised
    # RecursionError, which no handler expected: GET /v1/changes answered 500.
    nested = b"[" * 1500 + b"]" * 1500
    for version in "12":
        text = kind + version + base64.urlsafe_b64encode(nested).rstrip(b"=").decode()
        assert len(text) <= 4096
        with pytest.raises(ValidationFailed):
            decode_state(
                text, protocol="imap" if kind == "i" else "pop3", folder="INBOX", mailbox=ALICE
            )
