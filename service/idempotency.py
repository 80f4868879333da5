"""Idempotency-Key store: replay the first answer, 409 on another body.

In memory, per process: replicas do not share it. A deployment with several
replicas should route a caller to one replica (session affinity) or accept
that a retry landing on another replica sends again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from service.errors import Conflict


@dataclass
class _Entry:
    fingerprint: str
    expires: float
    answer: dict[str, Any] | None = None


class IdempotencyStore:
    """Keys scoped by mailbox user; only successful answers are remembered."""

    def __init__(self, ttl_seconds: float, max_entries: int = 100_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def fingerprint(*parts: bytes) -> str:
        h = hashlib.sha256()
        for part in parts:
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.hexdigest()

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now and len(self._entries) <= self._max:
                break
            del self._entries[key]

    @asynccontextmanager
    async def claim(self, scope: str, key: str, fingerprint: str) -> AsyncIterator[_Slot]:
        """Hold the key while the caller works; the slot tells whether to replay."""
        full = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        lock = self._locks.setdefault(full, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            self._expire(now)
            entry = self._entries.get(full)
            if entry is not None and entry.fingerprint != fingerprint:
                raise Conflict("This Idempotency-Key was used with a different request body.")
            slot = _Slot(entry.answer if entry else None)
            yield slot
            if slot.answer is not None and entry is None:
                self._entries[full] = _Entry(fingerprint, now + self._ttl, slot.answer)
        if not lock.locked():
            self._locks.pop(full, None)


class _Slot:
    def __init__(self, replay: dict[str, Any] | None) -> None:
        self.replay = replay
        self.answer: dict[str, Any] | None = replay

    def store(self, answer: dict[str, Any]) -> None:
        self.answer = answer
