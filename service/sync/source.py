"""The narrow interface between sync (the API, the event fan-out) and the protocol adapters."""

from __future__ import annotations

from typing import Protocol

from service.models.sync import Changes


class ChangeTracker(Protocol):
    """Tells what changed in one folder of one mailbox since a state (IMAP or POP3)."""

    async def changes(self, folder: str, since: str, limit: int) -> Changes:
        """The changes since state ``since``, at most ``limit`` entries (RFC 8620 §5.2).

        Raises ValidationFailed (a malformed state, or one of another folder or
        protocol), CannotCalculateChanges (the server cannot tell exactly: list
        again), NotFound (no such folder) and the upstream errors.
        """
        ...

    async def state(self, folder: str) -> str:
        """The folder's state now. Raises NotFound and the upstream errors."""
        ...
