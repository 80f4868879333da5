"""Shapes shared by several endpoints: addresses, checked strictly."""

from __future__ import annotations

import functools
from email.utils import getaddresses
from typing import Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, model_validator

ONE_ADDRESS = (
    'must be exactly one address (RFC 5322 mailbox: "a@example.com" or '
    '"Name <a@example.com>"); give several as separate list entries'
)


def _has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value or "\0" in value


def check_addr_spec(address: str) -> str:
    """``address`` if it is one valid addr-spec (``local@domain``), else ValueError.

    Syntax only (email-validator, no DNS): no display name, angle brackets, spaces,
    comments, quoted local parts or domain literals; internationalized addresses
    are allowed (sent with SMTPUTF8).
    """
    if _has_crlf(address):
        raise ValueError("an address must not contain CR, LF or NUL")
    why = _verdict(address) if len(address) <= _REMEMBERED else _judge(address)
    if why is not None:
        raise ValueError(why)
    return address


# Verdicts kept for addresses up to this length (an addr-spec is at most 254 octets, RFC
# 5321 4.5.3.1.3, so longer ones are judged each time and never fill the cache).
_REMEMBERED = 320


@functools.lru_cache(maxsize=4096)
def _verdict(address: str) -> str | None:
    """:func:`_judge`, remembered: a listing sees the same senders and recipients again
    and again, and email-validator takes about 25 us an address (half of a first page's
    header parsing, in a profile of a cold first call)."""
    return _judge(address)


def _judge(address: str) -> str | None:
    """None when ``address`` is one valid addr-spec, else why not."""
    try:
        _validate(address)
    except EmailNotValidError as exc:
        local, at, _ = address.rpartition("@")
        part = "address"
        if at and local:  # say which side is wrong
            try:
                _validate(f"{local}@example.com")
                part = "domain"
            except EmailNotValidError:
                part = "local part"
        return f"not a valid email address ({part}): {exc}"
    return None


def _validate(address: str) -> None:
    validate_email(
        address,
        check_deliverability=False,
        globally_deliverable=False,
        test_environment=True,
        allow_display_name=False,
    )


class Address(BaseModel):
    """A mailbox: display name (decoded) and address. On input, a string is accepted as
    well: exactly one RFC 5322 mailbox ("a@example.com" or "Name <a@example.com>");
    several addresses in one entry, or anything after the address, are 422 naming the
    field and index. The address itself must be a valid addr-spec (no quoted local part,
    no domain literal)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, examples=["Alice Example"])
    address: str = Field(examples=["alice@example.test"])

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        """Accept ``"a@example.com"`` and ``"Name <a@example.com>"`` as well as objects:
        exactly one RFC 5322 mailbox (``getaddresses`` in strict mode), never a list
        or anything after it."""
        if isinstance(data, str):
            if _has_crlf(data):
                raise ValueError("address must not contain CR or LF")
            found = getaddresses([data], strict=True)
            if len(found) != 1 or not found[0][1] or found[0][1] not in data:
                # (the parser also drops spaces inside an address: no silent repair)
                raise ValueError(ONE_ADDRESS)
            name, addr = found[0]
            return {"name": name or None, "address": addr}
        return data

    @model_validator(mode="after")
    def _check(self) -> Address:
        if self.name is not None and _has_crlf(self.name):
            raise ValueError("address and name must not contain CR or LF")
        check_addr_spec(self.address)
        return self
