"""State that must hold across requests and replicas: idempotency records, login limits.

One narrow interface (:class:`KeyValueStore`) with two backends, process memory
and Redis (``MAILGATE_REDIS_URL``); the idempotency store and the login limiter
are written once on top of it. :func:`open_state` builds what the app needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.config import Settings
from service.state.idempotency import IdempotencyStore
from service.state.identity import IdentityHasher
from service.state.limiter import LoginAttempt, LoginLimiter
from service.state.memory import MemoryStore
from service.state.store import KeyValueStore

__all__ = [
    "IdempotencyStore",
    "IdentityHasher",
    "KeyValueStore",
    "LoginAttempt",
    "LoginLimiter",
    "MemoryStore",
    "State",
    "open_state",
]


@dataclass(frozen=True)
class State:
    """The app's shared state: one store and what is built on it."""

    store: KeyValueStore
    hasher: IdentityHasher
    idempotency: IdempotencyStore
    limiter: LoginLimiter

    async def close(self) -> None:
        await self.store.close()


def open_state(settings: Settings) -> State:
    """Redis when ``settings.redis_url`` is set, else process memory (no I/O here:
    a Redis that is down at start-up only makes idempotent sends answer 503)."""
    store: KeyValueStore
    if settings.redis_url is not None:
        from service.state.redis import RedisStore

        store = RedisStore(settings.redis_url.get_secret_value(), timeout=settings.redis_timeout)
    else:
        store = MemoryStore()
    key = settings.state_key.get_secret_value().encode() if settings.state_key else None
    hasher = IdentityHasher(key)
    return State(
        store=store,
        hasher=hasher,
        idempotency=IdempotencyStore(
            store,
            ttl_seconds=settings.idempotency_ttl_seconds,
            pending_seconds=settings.send_timeout + settings.connect_timeout + 30,
            wait_seconds=settings.idempotency_wait_seconds,
        ),
        limiter=LoginLimiter(
            store,
            hasher,
            per_mailbox=settings.auth_failures_max,
            per_client=settings.auth_failures_per_client,
            window_seconds=settings.auth_failures_window_seconds,
            known_good_seconds=settings.auth_known_good_seconds,
        ),
    )
