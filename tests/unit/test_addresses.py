"""Strict addresses: one RFC 5322 mailbox per entry, never a silent cut."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.models.common import Address, check_addr_spec
from service.models.send import Draft


@pytest.mark.parametrize(
    ("given", "name", "address"),
    [
        ("bob@example.test", None, "bob@example.test"),
        ("Bob <bob@example.test>", "Bob", "bob@example.test"),
        ('"Doe, John" <john@example.org>', "Doe, John", "john@example.org"),
        ("<carol@example.org>", None, "carol@example.org"),
        ("Jürgen <jürgen@exämple.de>", "Jürgen", "jürgen@exämple.de"),
        ({"name": "Al", "address": "al@example.org"}, "Al", "al@example.org"),
    ],
)
def test_one_mailbox_is_accepted(given: object, name: str | None, address: str) -> None:
    parsed = Address.model_validate(given)
    assert (parsed.name, parsed.address) == (name, address)


@pytest.mark.parametrize(
    "given",
    [
        "bob@example.test, carol@example.test",  # two: was cut to bob
        "bob@example.test> NOTIFY=NEVER",  # ESMTP parameter smuggling: was bob
        "Bob <bob@example.test> trailing",
        "Bob bob@example.test",
        "bob",
        "bob@",
        "@example.test",
        "a..b@example.test",
        '"quoted"@example.test',
        "bob@[127.0.0.1]",
        "bob@exa mple.test",
        "bob@example.test\r\nBcc: x@example.test",
        "",
        {"address": "bob@example.test> NOTIFY=NEVER"},
        {"address": "bob@example.test, carol@example.test"},
        {"name": "x\r\nBcc: y", "address": "bob@example.test"},
    ],
)
def test_anything_else_is_refused(given: object) -> None:
    with pytest.raises(ValidationError):
        Address.model_validate(given)


def test_the_error_names_the_field_and_index() -> None:
    with pytest.raises(ValidationError) as info:
        Draft.model_validate(
            {"to": ["ok@example.test", "bob@example.test, carol@example.test"], "text": "x"}
        )
    [error] = info.value.errors()
    assert error["loc"] == ("to", 1)
    assert "exactly one address" in error["msg"]


def test_addr_spec_only_for_the_envelope() -> None:
    assert check_addr_spec("bob@example.test") == "bob@example.test"
    for bad in ("Bob <bob@example.test>", "bob@example.test> NOTIFY=NEVER", "<bob@x.org>"):
        with pytest.raises(ValueError):
            check_addr_spec(bad)


def test_address_verdicts_are_remembered_only_for_short_addresses() -> None:
    """Listings judge the same addresses again and again: the verdict (valid, or the same
    message) is remembered, but only for addresses no longer than an addr-spec can be."""
    from service.models import common

    common._verdict.cache_clear()  # noqa: SLF001 - the cache this test is about
    for _ in range(2):
        assert common.check_addr_spec("anna@example.com") == "anna@example.com"
        with pytest.raises(ValueError, match=r"\(domain\)"):
            common.check_addr_spec("anna@-bad-.example")
    assert common._verdict.cache_info().hits == 2  # noqa: SLF001
    long = "a" * 400 + "@example.com"
    for _ in range(2):
        with pytest.raises(ValueError, match="not a valid email address"):
            common.check_addr_spec(long)
    assert common._verdict.cache_info().currsize == 2  # noqa: SLF001
