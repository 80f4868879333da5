"""The narrow interfaces between sync (the API, the event fan-out) and the protocol adapters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

from service.models.message import MessageSummary
from service.models.sync import Changes, FlagUpdate

__all__ = ["Change", "ChangeFeed", "ChangePage", "ChangeTracker"]


@dataclass(frozen=True)
class Change:
    """One change and the state reached once it (and every change before it) is applied:
    an event's ``id``, from which ``/changes`` resumes exactly after it."""

    kind: Literal["created", "updated", "destroyed"]
    item: MessageSummary | FlagUpdate | str
    state: str

    def data(self) -> object:
        """The JSON value of the change, as ``/changes`` shows it."""
        if isinstance(self.item, str):
            return self.item
        data = self.item.model_dump(mode="json", by_alias=True)
        if isinstance(self.item, MessageSummary):  # the id's own protocol key only
            data.pop("uidl" if self.item.uid is not None else "uid", None)
        return data


@dataclass(frozen=True)
class ChangePage:
    """One answer of ``/changes``: its changes in event order (each one's ``state``
    resumes right after it; the last one's is ``new_state``)."""

    old_state: str
    new_state: str
    has_more: bool
    changes: list[Change]
    oldest_first: bool = False
    """The events run oldest first (POP3 arrivals); ``/changes`` lists newest first."""

    def model(self) -> Changes:
        """The HTTP shape: ``created`` newest first, then ``updated``, ``destroyed``."""
        created = [c.item for c in self.changes if isinstance(c.item, MessageSummary)]
        if self.oldest_first:
            created.reverse()
        return Changes(
            old_state=self.old_state,
            new_state=self.new_state,
            has_more=self.has_more,
            created=created,
            updated=[c.item for c in self.changes if isinstance(c.item, FlagUpdate)],
            destroyed=[c.item for c in self.changes if isinstance(c.item, str)],
        )


class ChangeTracker(Protocol):
    """Tells what changed in one folder of one mailbox since a state (IMAP or POP3)."""

    async def changes(self, folder: str, since: str, limit: int) -> ChangePage:
        """The changes since state ``since``, at most ``limit`` (RFC 8620 §5.2).

        Raises ValidationFailed (a malformed state, or one of another folder or
        protocol), CannotCalculateChanges (the server cannot tell exactly: list
        again), NotFound (no such folder) and the upstream errors.
        """
        ...

    async def state(self, folder: str) -> str:
        """The folder's state now. Raises NotFound and the upstream errors."""
        ...

    def feed(self, folder: str) -> ChangeFeed:
        """A feed of this folder's changes for the event fan-out (not opened yet)."""
        ...


class ChangeFeed(Protocol):
    """One folder's changes as they happen, for every subscriber of one process.

    It holds at most one connection (IMAP: one IDLE session, counted in the
    mailbox's connection budget; POP3: a short session per poll), from
    :meth:`open` to :meth:`close`.
    """

    key: str
    """Feeds with the same key watch the same folder of the same mailbox with the same
    credentials (a digest of the secret, never the secret)."""
    folder: str
    """The folder as the adapter spells it (as states name it)."""
    mailbox: str
    """Whose folder (:func:`~service.sync.state.mailbox_tag`, as states name it)."""

    async def open(self) -> str:
        """Connect (IMAP: take a slot of the budget, select the folder); the state now."""
        ...

    async def changes(self, since: str, limit: int) -> ChangePage:
        """As :meth:`ChangeTracker.changes`, on the feed's own connection."""
        ...

    async def wait(self, wake: asyncio.Event) -> bool:
        """Until the server reports a change (IMAP IDLE, RFC 2177), the poll interval
        has passed (no IDLE; POP3), or ``wake`` is set; True unless woken by ``wake``
        alone (then nothing need be asked of the server)."""
        ...

    async def close(self) -> None:
        """Log out and give the slot back; never raises."""
        ...
