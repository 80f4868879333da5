"""The Redis backend (redis-py asyncio): state shared by every replica of the gateway.

Atomicity: ``SET NX PX`` for :meth:`add`, small Lua scripts for compare-and-set
and compare-and-delete; the limiter's counters use :mod:`limits`' own Lua
scripts on the same connection pool. Every call has a short timeout
(``MAILGATE_REDIS_TIMEOUT``); after a failure the store answers
:class:`StoreUnavailable` at once for a few seconds instead of making every
request wait for a dead server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from limits.aio.storage import RedisStorage, Storage
from redis.exceptions import RedisError

from service.state.store import StoreUnavailable

log = logging.getLogger("mailgate")
T = TypeVar("T")

_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_DISCARD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore:
    """:class:`~service.state.store.KeyValueStore` on one Redis server (or a proxy)."""

    name = "redis"
    retry_after_failure = 2.0
    """Seconds during which calls fail fast after a connection failure."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            max_connections=256,
        )
        self._swap = self._client.register_script(_SWAP)
        self._discard = self._client.register_script(_DISCARD)
        self._down_until = 0.0
        self._limits_pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=256
        )
        pool: Any = self._limits_pool
        self.limits_storage: Storage = RedisStorage(
            "async+" + url,
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix="mailgate:limits",
            connection_pool=pool,
        )

    @property
    def failing(self) -> bool:
        return time.monotonic() < self._down_until

    def mark_down(self) -> None:
        """Fail fast for a while (also called by the limiter on its own failures)."""
        self._down_until = time.monotonic() + self.retry_after_failure

    async def _call(self, what: Awaitable[T]) -> T:
        if time.monotonic() < self._down_until:
            _close_unawaited(what)
            raise StoreUnavailable()
        try:
            return await what
        except (RedisError, OSError, TimeoutError) as exc:
            self.mark_down()
            log.warning("state store (redis) unavailable: %s", type(exc).__name__)
            raise StoreUnavailable() from None

    async def add(self, key: str, value: str, ttl: float) -> str | None:
        ms = max(1, int(ttl * 1000))
        while True:
            if await self._call(self._client.set(key, value, px=ms, nx=True)):
                return None
            current: Any = await self._call(self._client.get(key))
            if current is not None:
                return str(current)
            # expired or deleted between SET NX and GET: try again

    async def get(self, key: str) -> str | None:
        value: Any = await self._call(self._client.get(key))
        return None if value is None else str(value)

    async def put(self, key: str, value: str, ttl: float) -> None:
        await self._call(self._client.set(key, value, px=max(1, int(ttl * 1000))))

    async def swap(self, key: str, expected: str, value: str, ttl: float) -> bool:
        done = await self._call(
            self._swap(keys=[key], args=[expected, value, max(1, int(ttl * 1000))])
        )
        return bool(done)

    async def discard(self, key: str, expected: str | None = None) -> None:
        if expected is None:
            await self._call(self._client.delete(key))
        else:
            await self._call(self._discard(keys=[key], args=[expected]))

    async def available(self) -> bool:
        try:
            return bool(await self._call(self._client.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        try:
            await self._client.aclose()
            await self._limits_pool.aclose()
        except (RedisError, OSError):
            pass


def _close_unawaited(what: Awaitable[Any]) -> None:
    close = getattr(what, "close", None)
    if close is not None:
        close()
