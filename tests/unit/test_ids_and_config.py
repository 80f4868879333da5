"""Pure code: ids, cursors, provider URLs, settings errors, Range parsing, scrubbing."""

from __future__ import annotations

import pytest

from service.api.responses import parse_range
from service.config import ServerUrl, SettingsError, is_loopback, load_settings
from service.errors import BadRequest, InvalidId, RangeNotSatisfiable, ValidationFailed, scrub
from service.ids import ImapRef, Pop3Ref, decode_cursor, decode_id, encode_cursor


def test_ids_round_trip_and_are_url_safe() -> None:
    for ref in (ImapRef("INBOX", 1700000000, 42), ImapRef("Ünïcode/Sub:dir", 7, 1),
                Pop3Ref("000000014a3f2b1c")):  # fmt: skip
        text = ref.encode()
        assert all(c.isalnum() or c in "-_" for c in text)
        assert decode_id(text) == ref


@pytest.mark.parametrize(
    "bad", ["", "x", "i", "p", "i!!!", "iMTox", "q" + "A" * 10, "p" + "A" * 200, "i%2F"]
)
def test_malformed_ids_are_invalid_id(bad: str) -> None:
    with pytest.raises(InvalidId):
        decode_id(bad)


def test_imap_id_with_zero_uid_is_invalid() -> None:
    import base64

    token = "i" + base64.urlsafe_b64encode(b"5:0:INBOX").decode().rstrip("=")
    with pytest.raises(InvalidId):
        decode_id(token)


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor({"u": 5, "f": "INBOX"})) == {"u": 5, "f": "INBOX"}
    for bad in ("!!", "bm90IGpzb24", "WzFd"):  # invalid chars, "not json", "[1]"
        with pytest.raises(ValidationFailed):  # an invalid query parameter: 422
            decode_cursor(bad)


def test_server_urls() -> None:
    assert ServerUrl.parse("imaps://mail.example.com", "imap") == ServerUrl(
        "imap", "implicit", "mail.example.com", 993
    )
    assert ServerUrl.parse("smtp://mail.example.com", "smtp").port == 587
    assert ServerUrl.parse("pop3+plain://127.0.0.1:1110", "pop3").security == "plain"
    with pytest.raises(ValueError, match="plaintext"):
        ServerUrl.parse("imap+plain://mail.example.com", "imap")
    assert ServerUrl.parse("imap+plain://mail.example.com", "imap", allow_plaintext=True)
    for bad in ("http://x", "imaps://", "imaps://u:p@host", "smtp://host", "imaps://h:99999"):
        with pytest.raises(ValueError):
            ServerUrl.parse(bad, "imap")


def test_loopback_detection() -> None:
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")


def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGATE_IMAP_URL", "imap+plain://mail.example.com")
    with pytest.raises(SettingsError, match="MAILGATE_IMAP_URL"):
        load_settings()
    monkeypatch.setenv("MAILGATE_IMAP_URL", "imaps://mail.example.com")
    monkeypatch.setenv("MAILGATE_POOL_SIZE_PER_USER", "500")
    with pytest.raises(SettingsError, match="MAILGATE_POOL_SIZE_PER_USER"):
        load_settings()
    monkeypatch.delenv("MAILGATE_POOL_SIZE_PER_USER")
    monkeypatch.setenv("MAILGATE_API_KEY_HASHES", "abc")
    with pytest.raises(SettingsError, match="MAILGATE_API_KEY_HASHES"):
        load_settings()
    monkeypatch.setenv("MAILGATE_API_KEY_HASHES", "a" * 64 + ", " + "B" * 64)
    assert load_settings().api_key_hashes == ["a" * 64, "b" * 64]


def test_more_workers_than_the_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker holds at least one connection per mailbox: 11 workers would open 11
    to a mailbox under a budget of 8, past Dovecot's limit of 10."""
    monkeypatch.setenv("MAILGATE_WORKERS", "11")
    with pytest.raises(SettingsError, match="MAILGATE_WORKERS.*MAILGATE_POOL_SIZE_PER_USER"):
        load_settings()
    monkeypatch.setenv("MAILGATE_POOL_SIZE_PER_USER", "12")
    assert load_settings().pool_size_per_process == 1
    monkeypatch.setenv("MAILGATE_WORKERS", "4")
    assert load_settings().pool_size_per_process == 3


def test_range_parsing() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=95-200", 100) == (95, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None
    for bad in ("bytes=a-b", "items=0-1", "bytes=-", "bytes=9-1"):
        with pytest.raises(BadRequest):
            parse_range(bad, 100)
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range("bytes=100-", 100)
    assert info.value.headers() == {"Content-Range": "bytes */100"}


def test_scrub_removes_secrets() -> None:
    text = "a001 LOGIN alice hunter2\r\nAUTH PLAIN AGFsaWNlAGh1bnRlcjI= and token s3cr3t"
    out = scrub(text, ("s3cr3t",))
    assert "hunter2" not in out and "AGFsaWNl" not in out and "s3cr3t" not in out
    assert "\n" not in out
