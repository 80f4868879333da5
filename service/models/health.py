"""The answers of the open endpoints /healthz and /readyz."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Literal["ok", "unreachable", "unavailable"]] = Field(
        description="`PROVIDER.PROTOCOL` (e.g. `default.imap`): `ok` or `unreachable`; "
        "`state` (with Redis only): `ok` or `unavailable`."
    )
