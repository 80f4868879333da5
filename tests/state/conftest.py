"""One suite over every state backend: process memory and a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.state import KeyValueStore, MemoryStore
from service.state.redis import RedisStore


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
