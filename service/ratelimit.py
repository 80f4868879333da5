"""Failed-login limiter: after too many refused logins for one mailbox, answer 429.

Protects mail servers from password guessing through the gateway (and callers
from the server's own growing auth penalty). Per process, in memory; keyed by
provider + user, never by password.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict, deque

from service.errors import RateLimited


class FailedLoginLimiter:
    def __init__(self, max_failures: int, window_seconds: float, max_keys: int = 100_000) -> None:
        self._max = max_failures
        self._window = window_seconds
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def key(provider: str, user: str) -> str:
        return hashlib.sha256(f"{provider}\0{user.lower()}".encode()).hexdigest()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def check(self, key: str) -> None:
        """RateLimited (with Retry-After) while this mailbox is over the limit."""
        if self._max <= 0:
            return
        now = time.monotonic()
        times = self._recent(key, now)
        if times is not None and len(times) >= self._max:
            wait = math.ceil(times[0] + self._window - now)
            raise RateLimited(
                "Too many refused logins for this mailbox; try again later.",
                retry_after=max(wait, 1),
            )

    def failed(self, key: str) -> None:
        now = time.monotonic()
        times = self._recent(key, now) or deque()
        times.append(now)
        self._failures[key] = times
        self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)
