"""The state backends and what is built on them: one suite over every backend (process
memory and a real Redis), same behaviour in both."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from service.errors import Conflict, RateLimited
from service.protocols.base import Credentials
from service.state import (
    IdempotencyStore,
    IdentityHasher,
    KeyValueStore,
    LoginLimiter,
    MemoryStore,
)
from service.state.redis import RedisStore
from service.state.store import StoreUnavailable


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[KeyValueStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    stack = request.getfixturevalue("stack")
    redis = RedisStore(stack["MAILSTACK_REDIS_URL"], timeout=2.0)
    assert await redis.available(), "the test stack's Redis does not answer"
    yield redis
    await redis.close()


def _key() -> str:
    return f"test:{uuid.uuid4().hex}"


def _limiter(store: KeyValueStore, **kw: int) -> LoginLimiter:
    params = {"per_mailbox": 5, "per_client": 3, "window_seconds": 60, "known_good_seconds": 60}
    params.update(kw)
    return LoginLimiter(store, IdentityHasher(b"k" * 32), **params)


def _idem(store: KeyValueStore, wait: float = 2.0) -> IdempotencyStore:
    return IdempotencyStore(store, ttl_seconds=60, pending_seconds=30, wait_seconds=wait)


async def test_add_is_atomic_and_values_expire(store: KeyValueStore) -> None:
    key = _key()
    results = await asyncio.gather(*(store.add(key, f"v{i}", 0.3) for i in range(40)))
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert all(r == f"v{winners[0]}" for r in results if r is not None)
    assert await store.get(key) == f"v{winners[0]}"
    await asyncio.sleep(0.4)
    assert await store.get(key) is None
    assert await store.add(key, "again", 5) is None


async def test_swap_and_discard_compare_first(store: KeyValueStore) -> None:
    key = _key()
    await store.put(key, "a", 5)
    assert not await store.swap(key, "b", "c", 5)
    assert await store.get(key) == "a"
    assert await store.swap(key, "a", "c", 5)
    assert await store.get(key) == "c"
    await store.discard(key, "a")
    assert await store.get(key) == "c"
    await store.discard(key, "c")
    assert await store.get(key) is None
    await store.put(key, "d", 5)
    await store.discard(key)
    assert await store.get(key) is None


async def test_idempotency_replays_only_to_the_same_identity(store: KeyValueStore) -> None:
    idem, key = _idem(store), _key()
    async with idem.claim("alice+secret", key, "fp1") as slot:
        assert slot.replay is None
        slot.store({"message_id": "<1@x>"})
    async with idem.claim("alice+secret", key, "fp1") as slot:
        assert slot.replay == {"message_id": "<1@x>"}
    # Another identity (same user, wrong secret): a new key, nothing revealed.
    async with idem.claim("alice+wrong", key, "fp2") as slot:
        assert slot.replay is None
    with pytest.raises(Conflict):
        async with idem.claim("alice+secret", key, "fp2"):
            pass


async def test_idempotency_forgets_failed_sends(store: KeyValueStore) -> None:
    idem, key = _idem(store), _key()
    with pytest.raises(RuntimeError):
        async with idem.claim("id", key, "fp"):
            raise RuntimeError("send failed")
    async with idem.claim("id", key, "fp") as slot:
        assert slot.replay is None  # the retry sends


async def test_concurrent_claims_send_once(store: KeyValueStore) -> None:
    idem, key = _idem(store), _key()
    sends = 0

    async def request() -> dict[str, object]:
        nonlocal sends
        async with idem.claim("id", key, "fp") as slot:
            if slot.replay is not None:
                return slot.replay
            sends += 1
            await asyncio.sleep(0.3)  # the send
            answer = {"n": sends}
            slot.store(answer)
            return answer

    answers = await asyncio.gather(*(request() for _ in range(8)))
    assert sends == 1
    assert answers == [{"n": 1}] * 8


async def test_claim_in_flight_past_the_wait_is_409(store: KeyValueStore) -> None:
    idem, key = _idem(store, wait=0.2), _key()
    async with idem.claim("id", key, "fp") as slot:
        assert slot.replay is None
        with pytest.raises(Conflict) as info:
            async with idem.claim("id", key, "fp"):
                pass
        assert info.value.retry_after
        slot.store({"ok": True})


async def test_limiter_admits_exactly_the_limit_concurrently(store: KeyValueStore) -> None:
    limiter = _limiter(store, per_mailbox=5, per_client=5)
    user = f"{uuid.uuid4().hex}@example.test"

    async def attempt(i: int) -> bool:
        a = limiter.attempt("default", Credentials(user, f"wrong{i}"), "10.0.0.1")
        try:
            await limiter.before_login(a)
        except RateLimited:
            return False
        finally:
            limiter.finished(a)
        return True

    admitted = await asyncio.gather(*(attempt(i) for i in range(60)))
    assert sum(admitted) == 5


async def test_concurrent_first_logins_of_one_secret_wait_for_the_first(
    store: KeyValueStore,
) -> None:
    limiter = _limiter(store, per_mailbox=2, per_client=2)
    creds = Credentials(f"{uuid.uuid4().hex}@example.test", "right")
    logins = 0

    async def request() -> None:
        nonlocal logins
        a = limiter.attempt("default", creds, "10.0.0.1")
        try:
            await a.before_login()
            logins += 1
            await asyncio.sleep(0.2)  # the server checks the password
            await a.login_accepted()
        finally:
            limiter.finished(a)

    await asyncio.gather(*(request() for _ in range(12)))  # none is refused
    assert logins == 12
    # a guesser still has its two attempts: the owner's logins cost one hit in all
    guess = limiter.attempt("default", Credentials(creds.user, "guess"), "10.0.0.1")
    await limiter.before_login(guess)


async def test_limiter_windows_per_client_and_per_mailbox(store: KeyValueStore) -> None:
    limiter = _limiter(store, per_mailbox=5, per_client=2)
    user = f"{uuid.uuid4().hex}@example.test"
    outcomes = []
    for client in ["10.0.0.1"] * 3 + ["10.0.0.2"] * 3 + ["10.0.0.3"] * 3:
        a = limiter.attempt("default", Credentials(user, "wrong"), client)
        try:
            await limiter.before_login(a)
            outcomes.append("ok")
            await limiter.login_refused(a)
        except RateLimited as exc:
            assert exc.retry_after is not None and 0 < exc.retry_after <= 60
            outcomes.append("429")
        finally:
            limiter.finished(a)
    # two per client, five per mailbox in all
    assert outcomes == ["ok", "ok", "429", "ok", "ok", "429", "ok", "429", "429"]
    # another mailbox is not affected
    other = limiter.attempt("default", Credentials("x" + user, "wrong"), "10.0.0.1")
    await limiter.before_login(other)


async def test_proven_secret_is_never_locked_out(store: KeyValueStore) -> None:
    limiter = _limiter(store, per_mailbox=3, per_client=3)
    user = f"{uuid.uuid4().hex}@example.test"
    owner = Credentials(user, "right")
    first = limiter.attempt("default", owner, "10.0.0.9")
    await limiter.before_login(first)
    await limiter.login_accepted(first)
    limiter.finished(first)
    for i in range(10):  # guessers exhaust the mailbox's window
        a = limiter.attempt("default", Credentials(user, f"guess{i}"), f"10.1.0.{i}")
        try:
            await limiter.before_login(a)
            await limiter.login_refused(a)
        except RateLimited:
            continue
        finally:
            limiter.finished(a)
    with pytest.raises(RateLimited):
        await limiter.before_login(limiter.attempt("default", Credentials(user, "new"), "10.0.0.9"))
    for _ in range(20):
        a = limiter.attempt("default", owner, "10.0.0.9")
        await limiter.before_login(a)
        assert a.proven
        limiter.finished(a)
    # The password changed: the old secret fails once, then it is an unproven guess.
    a = limiter.attempt("default", owner, "10.0.0.9")
    await limiter.before_login(a)
    await limiter.login_refused(a)
    limiter.finished(a)
    with pytest.raises(RateLimited):
        await limiter.before_login(limiter.attempt("default", owner, "10.0.0.9"))


async def test_state_keeps_no_user_or_secret_in_clear(store: KeyValueStore) -> None:
    limiter = _limiter(store)
    user = f"{uuid.uuid4().hex}@example.test"
    a = limiter.attempt("default", Credentials(user, "hunter2-secret"), "10.0.0.1")
    await limiter.before_login(a)
    await limiter.login_accepted(a)
    for value in (a.mailbox, a.client, a.secret):
        assert user not in value and "hunter2" not in value and "10.0.0.1" not in value
    if isinstance(store, RedisStore):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(store_url(store))
        try:
            keys = [k.decode() async for k in client.scan_iter("mailgate:*")]
        finally:
            await client.aclose()
        assert keys and not any(user in k or "hunter2" in k for k in keys)


def store_url(store: RedisStore) -> str:
    kw = store._client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_fails_fast_and_limits_still_count() -> None:
    store = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.5)
    try:
        assert not await store.available()
        with pytest.raises(StoreUnavailable) as info:
            async with _idem(store).claim("id", _key(), "fp"):
                pass
        assert info.value.status == 503 and info.value.retry_after
        limiter = _limiter(store, per_mailbox=2, per_client=2)
        user = f"{uuid.uuid4().hex}@example.test"
        admitted = 0
        for _ in range(4):
            a = limiter.attempt("default", Credentials(user, "w"), "c")
            try:
                await limiter.before_login(a)
                admitted += 1
                await limiter.login_refused(a)
            except RateLimited:
                pass
            finally:
                limiter.finished(a)
        assert admitted == 2  # counted in this process while Redis is away
    finally:
        await store.close()
