"""Sync state tokens: round trips, URL safety, and strict validation (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from service.errors import ValidationFailed
from service.sync.state import (
    ImapMark,
    ImapState,
    Pop3State,
    decode_state,
    flags_digest,
    uidl_digest,
)

URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def token(kind: str, data: object, version: str = "1") -> str:
    raw = json.dumps(data).encode()
    return kind + version + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "state",
    [
        ImapState("INBOX", 17, ImapMark(12, 11, 30)),
        ImapState("Grüße/Ünïcode 😀", 2**32 - 1, ImapMark(2**32, 5, None, flags_digest({1: []}))),
        ImapState("INBOX", 1, ImapMark(3, 2, 9), ImapMark(40, 30, 99), 25),
        ImapState("INBOX", 1, ImapMark(1, 0, 0)),
    ],
)
def test_imap_round_trip_and_url_safe(state: ImapState) -> None:
    text = state.encode()
    assert set(text) <= URL_SAFE and text.startswith("i1")
    assert decode_state(text, protocol="imap", folder=state.folder) == state


def test_pop3_round_trip() -> None:
    state = Pop3State(3, uidl_digest(["a", "b", "c"]))
    text = state.encode()
    assert set(text) <= URL_SAFE and text.startswith("p1")
    assert decode_state(text, protocol="pop3", folder="INBOX") == state


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
        "x1" + token("", {})[1:],
        token("i", {"f": "INBOX", "v": 1, "b": GOOD_MARK}, version="2"),
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
        decode_state(text, protocol=text[:1] == "p" and "pop3" or "imap", folder="INBOX")


def test_other_folder_or_protocol_is_422() -> None:
    imap = ImapState("INBOX", 1, ImapMark(2, 1, 5)).encode()
    pop3 = Pop3State(0, uidl_digest([])).encode()
    with pytest.raises(ValidationFailed, match="another folder"):
        decode_state(imap, protocol="imap", folder="Archive")
    with pytest.raises(ValidationFailed, match="imap"):
        decode_state(imap, protocol="pop3", folder="INBOX")
    with pytest.raises(ValidationFailed, match="pop3"):
        decode_state(pop3, protocol="imap", folder="INBOX")


@pytest.mark.parametrize("kind", ["i", "p"])
def test_deeply_nested_json_is_422_not_500(kind: str) -> None:
    # 1,500 nested arrays fit in a 4,096-character token; json.loads then raised
    # RecursionError, which no handler expected: GET /v1/changes answered 500.
    nested = b"[" * 1500 + b"]" * 1500
    text = kind + "1" + base64.urlsafe_b64encode(nested).rstrip(b"=").decode()
    assert len(text) <= 4096
    with pytest.raises(ValidationFailed):
        decode_state(text, protocol="imap" if kind == "i" else "pop3", folder="INBOX")
