"""A model-based, seeded check of /v1/changes against the real Dovecot (see tests/syncmodel.py).

A client keeps a copy of INBOX and a second folder, following /v1/changes with
small limits while another client makes random changes; whenever that client
rests, the copy must equal the server (ids and flags), or the gateway must have
said 410. Run on the full Dovecot (QRESYNC), on one without QRESYNC, on one
without CONDSTORE, QRESYNC and IDLE, and over POP3. bench/sync_model.py runs
the same for longer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mailboxes import Mailbox
from metrics_text import value
from syncmodel import run_changes_model, run_events_model

pytestmark = pytest.mark.mailstack
JOURNAL = "mailgate_imap_changes_total"

PORTS = {
    "qresync": "MAILSTACK_IMAPS_PORT",
    "condstore": "MAILSTACK_CONDSTORE_IMAPS_PORT",
    "basic": "MAILSTACK_BASIC_IMAPS_PORT",
    "pop3": "MAILSTACK_IMAPS_PORT",
}
LESS = pytest.mark.dovecot("a second Dovecot on the same mailboxes that advertises less")
VARIANTS = [v if v in ("qresync", "pop3") else pytest.param(v, marks=LESS) for v in PORTS]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", [7])
async def test_a_replica_follows_random_changes_exactly(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox, variant: str, seed: int
) -> None:
    url = f"imaps://localhost:{stack[PORTS[variant]]}"
    async with make_client(imap_url=url) as http:
        before = value((await http.get("/metrics")).text, JOURNAL, source="journal")
        stats = await run_changes_model(
            http, mailbox, stack, protocol="pop3" if variant == "pop3" else "imap",
            seed=seed, rounds=4, steps=8,
        )  # fmt: skip
        journal = value((await http.get("/metrics")).text, JOURNAL, source="journal") - before
    print(variant, dict(stats), "answered by a session's journal:", journal)
    assert stats["INBOX:changes"] > 0
    if variant == "qresync" and stack.get("MAILSTACK_SERVER") != "cyrus":
        # the copy stayed exact with answers from the journal among them
        # (service/protocols/imap/journal.py; Cyrus SELECTs on each lease: none there)
        assert journal > 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", [11])
async def test_event_streams_with_reconnects_and_restarts_follow_random_changes(
    stack: dict[str, str], mailbox: Mailbox, variant: str, seed: int
) -> None:
    from test_sync_events import live_gateway

    url = f"imaps://localhost:{stack[PORTS[variant]]}"

    @asynccontextmanager
    async def gateway() -> AsyncIterator[str]:
        async with live_gateway(stack, imap_url=url, events_poll_seconds=0.2,
                                events_buffer=4) as gw:  # fmt: skip
            yield gw.url

    stats = await run_events_model(
        gateway, mailbox, stack, protocol="pop3" if variant == "pop3" else "imap",
        seed=seed, rounds=4, steps=8,
    )  # fmt: skip
    print(variant, dict(stats))
    assert stats["INBOX:connections"] > 0
