"""The reader contract runs once per protocol: IMAP and POP3."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["imap", "pop3"])
def proto(request: pytest.FixtureRequest) -> str:
    return str(request.param)
