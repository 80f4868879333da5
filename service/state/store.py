"""The one interface of the shared-state backends (memory, Redis)."""

from __future__ import annotations

from typing import Protocol

from limits.aio.storage import Storage

from service.errors import UpstreamUnavailable


class StoreUnavailable(UpstreamUnavailable):
    """The shared state store cannot be reached (503, Retry-After); no mail was touched."""

    def __init__(self, detail: str | None = None, **kw: object) -> None:
        super().__init__(
            detail or "The gateway's shared state store is unavailable; try again shortly.",
            retry_after=5,
        )


class KeyValueStore(Protocol):
    """Atomic operations on string values with a time to live (seconds).

    Every operation is atomic across all gateway processes that share the
    backend. Every method raises :class:`StoreUnavailable` (and nothing else)
    when the backend cannot be reached.
    """

    name: str
    """``memory`` or ``redis``."""

    limits_storage: Storage
    """The same backend as a :mod:`limits` storage, for the rate-limit algorithms."""

    async def add(self, key: str, value: str, ttl: float) -> str | None:
        """Store ``value`` unless ``key`` exists (Redis ``SET NX PX``): None when
        stored, else the value already there."""
        ...

    async def get(self, key: str) -> str | None:
        """The value, or None when absent or expired."""
        ...

    async def put(self, key: str, value: str, ttl: float) -> None:
        """Store ``value`` whatever was there."""
        ...

    async def swap(self, key: str, expected: str, value: str, ttl: float) -> bool:
        """Replace the value only if it is still ``expected``; True when replaced."""
        ...

    async def discard(self, key: str, expected: str | None = None) -> None:
        """Delete ``key`` (only if its value is ``expected``, when given)."""
        ...

    @property
    def failing(self) -> bool:
        """True while the backend is known to be down (calls would fail at once)."""
        ...

    async def available(self) -> bool:
        """One cheap round trip: can the backend be reached now?"""
        ...

    async def close(self) -> None:
        """Release connections; never raises."""
        ...
