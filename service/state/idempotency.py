"""Idempotency-Key records: replay the first answer, never send twice.

A record's key is the caller's identity (provider + user + keyed hash of the
secret, :meth:`IdentityHasher.identity`) and the Idempotency-Key, so a caller
with other credentials never sees another's answer, nor learns that the key
exists: for them it is a new key. The record's life:

- absent → ``pending`` (atomic add, owned by one request) while the send runs;
- ``pending`` → ``done`` with the answer (TTL ``MAILGATE_IDEMPOTENCY_TTL_SECONDS``)
  after a successful send; deleted after a failed one (a retry sends again);
- a ``pending`` record left by a crashed process expires after the send deadline.

A request that finds a ``pending`` record of the same body waits for its
answer up to ``wait_seconds``, then answers 409 ``conflict`` (Retry-After); a
different body is 409 at once. A store that cannot be reached is 503: nothing
is sent without the guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service.errors import Conflict
from service.state.store import KeyValueStore, StoreUnavailable


class IdempotencySlot:
    """What :meth:`IdempotencyStore.claim` hands the route: a replay, or the duty to
    send and :meth:`store` the answer."""

    def __init__(self, replay: dict[str, Any] | None) -> None:
        self.replay = replay
        self.answer: dict[str, Any] | None = None

    def store(self, answer: dict[str, Any]) -> None:
        self.answer = answer


class IdempotencyStore:
    """Idempotency records on a :class:`KeyValueStore`; see the module docstring."""

    prefix = "mailgate:idem:"

    def __init__(
        self,
        store: KeyValueStore,
        *,
        ttl_seconds: float,
        pending_seconds: float,
        wait_seconds: float,
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._pending_ttl = pending_seconds
        self._wait = wait_seconds

    @staticmethod
    def fingerprint(*parts: bytes) -> str:
        """SHA-256 over length-prefixed parts (media type, query, body…), hex."""
        h = hashlib.sha256()
        for part in parts:
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.hexdigest()

    def _key(self, identity: str, key: str) -> str:
        return self.prefix + hashlib.sha256(f"{identity}\0{key}".encode()).hexdigest()

    @asynccontextmanager
    async def claim(
        self, identity: str, key: str, fingerprint: str
    ) -> AsyncIterator[IdempotencySlot]:
        """Hold ``key`` for ``identity`` while the caller sends.

        Yields a slot whose ``replay`` is the stored answer (send nothing), or
        None: then send and call ``slot.store(answer)``; without an answer (or
        on an exception) the claim is dropped. Raises Conflict (another body,
        or still in flight after the wait) and StoreUnavailable before yielding.
        """
        full = self._key(identity, key)
        pending = json.dumps({"state": "pending", "fp": fingerprint, "t": secrets.token_hex(8)})
        replay = await self._acquire(full, pending, fingerprint)
        if replay is not None:
            yield IdempotencySlot(replay)
            return
        slot = IdempotencySlot(None)
        try:
            yield slot
        except BaseException:
            await self._drop(full, pending)
            raise
        if slot.answer is None:
            await self._drop(full, pending)
            return
        done = json.dumps({"state": "done", "fp": fingerprint, "answer": slot.answer})
        try:
            await self._store.swap(full, pending, done, self._ttl)
        except StoreUnavailable:
            # Sent, but not remembered: a retry meets the pending record until it
            # expires (409), never a second send while the record lives.
            pass

    async def _acquire(self, full: str, pending: str, fingerprint: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        delay = 0.05
        while True:
            existing = await self._store.add(full, pending, self._pending_ttl)
            if existing is None:
                return None
            record = _parse(existing)
            if record.get("fp") != fingerprint:
                raise Conflict("This Idempotency-Key was used with a different request.")
            if record.get("state") == "done" and isinstance(record.get("answer"), dict):
                answer: dict[str, Any] = record["answer"]
                return answer
            if loop.time() + delay > deadline:
                raise Conflict(
                    "A request with this Idempotency-Key is still in progress.", retry_after=2
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _drop(self, full: str, pending: str) -> None:
        try:
            await self._store.discard(full, pending)
        except StoreUnavailable:
            pass  # the pending record expires by itself


def _parse(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
