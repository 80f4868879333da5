"""A bounded LRU of listing summaries: a message's headers never change under one UID.

RFC 3501 2.3.1.1: a UID with the same UIDVALIDITY always names the same,
immutable message. So a summary (all but its flags) can be reused across
listings, and a page whose summaries are all known costs a FETCH of FLAGS only.
Keys include the pool key (provider, user and a hash of the secret), so one
caller never sees another's entries.
"""

from __future__ import annotations

from collections import OrderedDict

from service.models.message import MessageSummary

CacheKey = tuple[str, str, int, int]  # pool key, folder, UIDVALIDITY, UID


class SummaryCache:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[CacheKey, MessageSummary] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, key: CacheKey) -> bool:
        """Whether this summary is cached (without counting as a use)."""
        return key in self._entries

    def get(self, key: CacheKey) -> MessageSummary | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: CacheKey, summary: MessageSummary) -> None:
        if self._max <= 0:
            return
        self._entries[key] = summary
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
