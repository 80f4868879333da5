"""The process-memory backend: one gateway process, nothing shared."""

from __future__ import annotations

import time
from collections import OrderedDict

from limits.aio.storage import MemoryStorage, Storage


class MemoryStore:
    """:class:`~service.state.store.KeyValueStore` in a dict; oldest entries are evicted
    beyond ``max_entries``. Each operation runs without awaiting, hence atomically
    for every coroutine of the process."""

    name = "memory"

    def __init__(self, max_entries: int = 200_000) -> None:
        self._max = max_entries
        self._data: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.limits_storage: Storage = MemoryStorage()

    def _live(self, key: str) -> str | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._data[key]
            return None
        return entry[0]

    def _set(self, key: str, value: str, ttl: float) -> None:
        self._data[key] = (value, time.monotonic() + ttl)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def add(self, key: str, value: str, ttl: float) -> str | None:
        current = self._live(key)
        if current is not None:
            return current
        self._set(key, value, ttl)
        return None

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def put(self, key: str, value: str, ttl: float) -> None:
        self._set(key, value, ttl)

    async def swap(self, key: str, expected: str, value: str, ttl: float) -> bool:
        if self._live(key) != expected:
            return False
        self._set(key, value, ttl)
        return True

    async def discard(self, key: str, expected: str | None = None) -> None:
        if expected is None or self._live(key) == expected:
            self._data.pop(key, None)

    @property
    def failing(self) -> bool:
        return False

    async def available(self) -> bool:
        return True

    async def close(self) -> None:
        return None
