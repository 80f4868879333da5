"""The IMAP change feed for /events: one session per mailbox + folder, IDLE or polling.

The session is a slot of the mailbox's connection budget (it counts with the
read pool under the server's per-user limit). Between waits it computes the
changes itself (:mod:`service.protocols.imapchanges`), so a change costs no
session of the read pool. Waiting: IDLE (RFC 2177) where offered, re-issued
every ``events_idle_seconds`` (under the 29 minutes RFC 2177 allows); else a
poll every ``events_poll_seconds``.

Before each IDLE, one SELECT compares the folder with what the last computation
saw: a change that the server reported in the reply of a command (and so would
not report again in IDLE) is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from service.config import Settings
from service.errors import UpstreamError
from service.protocols.imapchanges import Summaries, changes_since, folder_state
from service.protocols.imapconn import ImapSession, SelectData
from service.protocols.pool import SessionPool, Slot
from service.sync.source import ChangePage
from service.sync.state import ImapState, decode_state

__all__ = ["ImapFeed"]


class ImapFeed:
    """A :class:`~service.sync.source.ChangeFeed` over one IMAP session."""

    def __init__(
        self,
        settings: Settings,
        pool: SessionPool[ImapSession],
        session_key: str,
        connect: Callable[[], Awaitable[ImapSession]],
        folder: str,
        summaries: Summaries,
    ) -> None:
        self.key = f"{session_key}\0{folder}"
        self.folder = folder
        self._settings = settings
        self._pool = pool
        self._session_key = session_key
        self._connect = connect
        self._summaries = summaries
        self._slot: Slot[ImapSession] | None = None
        self._seen: SelectData | None = None

    def _session(self) -> ImapSession:
        if self._slot is None:
            raise UpstreamError("The event feed is not open.")
        return self._slot.value

    async def open(self) -> str:
        """Take a slot of the budget, log in, ENABLE QRESYNC, select; the state now."""
        self._slot = await self._pool.acquire_slot(self._session_key, self._connect)
        session = self._slot.value
        await session.enable("QRESYNC")
        state = await folder_state(session, self.folder)
        self._seen = session.select_data
        return state.encode()

    async def changes(self, since: str, limit: int) -> ChangePage:
        session = self._session()
        state = decode_state(since, protocol="imap", folder=self.folder)
        assert isinstance(state, ImapState)  # noqa: S101 - decode_state checked the protocol
        page = await changes_since(session, state, limit, self._summaries)
        self._seen = session.select_data
        return page

    async def wait(self, wake: asyncio.Event) -> bool:
        session = self._session()
        if "IDLE" not in session.capabilities:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.events_poll_seconds):
                    await wake.wait()
                return False
            return True
        await session.select(self.folder, fresh=True)
        if session.select_data != self._seen:
            return True  # changed since the last computation, already told in a reply
        reported = await session.idle(wake, self._settings.events_idle_seconds)
        return reported or not wake.is_set()

    async def close(self) -> None:
        slot, self._slot = self._slot, None
        if slot is None:
            return
        try:
            await slot.value.close()
        finally:
            self._pool.release_slot(slot)
