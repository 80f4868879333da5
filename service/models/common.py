"""Shapes shared by several endpoints: addresses."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value


class Address(BaseModel):
    """A mailbox: display name (decoded) and address."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, examples=["Alice Example"])
    address: str = Field(examples=["alice@example.test"])

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        """Accept ``"a@example.com"`` and ``"Name <a@example.com>"`` as well as objects."""
        if isinstance(data, str):
            if _has_crlf(data):
                raise ValueError("address must not contain CR or LF")
            name, addr = parseaddr(data)
            if not addr or "@" not in addr:
                raise ValueError("not an email address")
            return {"name": name or None, "address": addr}
        return data

    @model_validator(mode="after")
    def _check(self) -> Address:
        if _has_crlf(self.address) or (self.name is not None and _has_crlf(self.name)):
            raise ValueError("address and name must not contain CR or LF")
        local, sep, domain = self.address.rpartition("@")
        if not sep or not local or not domain or any(c in self.address for c in ' <>,;"\\'):
            raise ValueError("not an email address")
        return self
