"""The IMAP change feed for /events: one session per mailbox + folder, IDLE or polling.

The session is a slot of the mailbox's connection budget (it counts with the
read pool under the server's per-user limit). Between waits it computes the
changes itself (:mod:`service.protocols.imap.changes`), so a change costs no
session of the read pool. Waiting: IDLE (RFC 2177) where offered, re-issued
every ``events_idle_seconds`` (under the 29 minutes RFC 2177 allows); else a
poll every ``events_poll_seconds``.

Before each IDLE, a NOOP and a STATUS compare the folder with the state the last
computation reached: a change that the server told in the reply of a command
(and so would not tell again in IDLE) is not missed, nor a folder deleted and
created again (a new UIDVALIDITY). Cyrus tells nothing in IDLE when another client
deletes the folder: there IDLE lasts at most ``events_heartbeat_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from service.config import Settings
from service.errors import CannotCalculateChanges, NotFound, UpstreamError
from service.protocols.imap.changes import Summaries, changes_since, current_state, snapshot
from service.protocols.imap.session import ImapSession
from service.protocols.pool import SessionPool, Slot
from service.sync.source import ChangePage
from service.sync.state import ImapMark, ImapState, decode_state

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
        *,
        mailbox: str,
    ) -> None:
        self.key = f"{session_key}\0{folder}"
        self.folder = folder
        self.mailbox = mailbox
        self._settings = settings
        self._pool = pool
        self._session_key = session_key
        self._connect = connect
        self._summaries = summaries
        self._slot: Slot[ImapSession] | None = None
        self._reached: ImapMark | None = None  # the mark of the last state computed
        self._uidvalidity: int | None = None  # the folder's, at the last state computed

    def _session(self) -> ImapSession:
        if self._slot is None:
            raise UpstreamError("The event feed is not open.")
        return self._slot.value

    async def open(self) -> str:
        """Take a slot of the budget, log in, ENABLE QRESYNC, select; the state now."""
        self._slot = await self._pool.acquire_slot(
            self._session_key, self._connect, long_lived=True
        )
        session = self._slot.value
        await session.enable("QRESYNC")
        state = await current_state(session, self.folder, mailbox=self.mailbox)
        self._reached = state.base
        self._uidvalidity = state.uidvalidity
        return state.encode()

    async def changes(self, since: str, limit: int) -> ChangePage:
        session = self._session()
        state = decode_state(since, protocol="imap", folder=self.folder, mailbox=self.mailbox)
        assert isinstance(state, ImapState)  # noqa: S101 - decode_state checked the protocol
        session.begin_lease()  # the next select() NOOPs: the view is brought up to date
        try:
            page = await changes_since(session, state, limit, self._summaries)
        except NotFound:
            # The folder was there when the feed opened: it was deleted (and perhaps
            # created again) since; a listing tells which.
            raise CannotCalculateChanges(
                "The folder was deleted since this state: list it again."
            ) from None
        if not page.has_more:
            reached = decode_state(
                page.new_state, protocol="imap", folder=self.folder, mailbox=self.mailbox
            )
            assert isinstance(reached, ImapState)  # noqa: S101 - ours, just made
            self._reached = reached.base
            self._uidvalidity = reached.uidvalidity
        return page

    async def wait(self, wake: asyncio.Event) -> bool:
        session = self._session()
        if "IDLE" not in session.capabilities:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.events_poll_seconds):
                    await wake.wait()
                return False
            return True
        session.begin_lease()
        try:
            now = await snapshot(session, self.folder)
        except NotFound:
            return True  # deleted meanwhile: the changes computation says so to everyone
        last = self._reached
        if (
            last is None
            or now.uidvalidity != self._uidvalidity  # deleted and created again
            or (now.uidnext, now.exists, now.highestmodseq)
            != (last.uidnext, last.exists, last.modseq)
        ):
            return True  # changed since the last computation (told in a command's reply)
        seconds = self._settings.events_idle_seconds
        if not session.tells_deletion:  # Cyrus: look again at each heartbeat
            seconds = min(seconds, self._settings.events_heartbeat_seconds)
        reported = await session.idle(wake, seconds)
        return reported or not wake.is_set()

    async def close(self) -> None:
        slot, self._slot = self._slot, None
        if slot is None:
            return
        try:
            await slot.value.close()
        finally:
            self._pool.release_slot(slot)
