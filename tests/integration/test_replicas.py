"""Two gateway processes on one Redis, as two replicas behind a load balancer: a send
retried through the other process is not sent twice, and the login limits count
across both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from live_gateway import serve, stack_env
from mailboxes import Mailbox
from test_security import STATE_KEY, failed_logins

pytestmark = pytest.mark.mailstack


@contextmanager
def replica(stack: dict[str, str], log: Path, **settings: str) -> Iterator[str]:
    """`mailgate serve` in its own process on the stack's Redis; yields its base URL."""
    env = stack_env(
        stack,
        MAILGATE_REDIS_URL=stack["MAILSTACK_REDIS_URL"],
        MAILGATE_STATE_KEY=STATE_KEY,
        MAILGATE_LOG_LEVEL="warning",
        **{f"MAILGATE_{k.upper()}": v for k, v in settings.items()},
    )
    with serve(env, log) as url:
        yield url


@contextmanager
def two_replicas(stack: dict[str, str], tmp_path: Path, **settings: str) -> Iterator[list[str]]:
    with ExitStack() as stack_:
        yield [
            stack_.enter_context(replica(stack, tmp_path / f"replica-{i}.log", **settings))
            for i in (1, 2)
        ]


async def test_a_send_retried_through_the_other_replica_is_not_sent_twice(
    stack: dict[str, str], tmp_path: Path, mailbox: Mailbox, other_mailbox: Mailbox
) -> None:
    draft = {"to": [other_mailbox.address], "subject": "replicated", "text": "once"}
    headers = {**mailbox.auth, "Idempotency-Key": "retry-elsewhere"}
    with two_replicas(stack, tmp_path) as (a, b):
        async with httpx.AsyncClient(timeout=30) as http:
            first = await http.post(f"{a}/v1/send", json=draft, headers=headers)
            assert first.status_code == 200, first.text
            retry = await http.post(f"{b}/v1/send", json=draft, headers=headers)
            assert retry.status_code == 200, retry.text
            assert retry.headers["idempotent-replayed"] == "true"
            assert retry.json() == first.json()
            # Concurrent duplicates spread over both replicas: still one send.
            again = {**headers, "Idempotency-Key": "race-across"}
            answers = await asyncio.gather(*(
                http.post(f"{(a, b)[i % 2]}/v1/send", json={**draft, "subject": "race"},
                          headers=again)
                for i in range(6)
            ))  # fmt: skip
            assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
            assert len({r.json()["message_id"] for r in answers}) == 1
    got = other_mailbox.wait_for(stack, count=2)
    await asyncio.sleep(0.5)
    subjects = sorted(
        line for _, raw, _ in other_mailbox.messages(stack)
        for line in raw.decode().splitlines() if line.startswith("Subject:")
    )  # fmt: skip
    assert len(got) == 2 and subjects == ["Subject: race", "Subject: replicated"]


async def test_login_limits_count_across_replicas(
    stack: dict[str, str], tmp_path: Path, mailbox: Mailbox
) -> None:
    wrong = Mailbox(mailbox.address, "wrong-password").auth
    with two_replicas(
        stack, tmp_path, auth_failures_max="4", auth_failures_per_client="4"
    ) as replicas:
        async with httpx.AsyncClient(timeout=30) as http:
            # The owner's app logs in through one replica (one of the four)...
            owner = await http.get(f"{replicas[0]}/v1/folders", headers=mailbox.auth)
            assert owner.status_code == 200
            codes = []
            for i in range(12):  # alternating: each replica alone would allow 4 more
                r = await http.get(f"{replicas[i % 2]}/v1/folders", headers=wrong)
                codes.append(r.status_code)
            assert codes == [401] * 3 + [429] * 9
            assert int(r.headers["retry-after"]) > 0
            # ...and, proven in the shared store, is served by the other one as well.
            owner = await http.get(f"{replicas[1]}/v1/folders", headers=mailbox.auth)
            assert owner.status_code == 200
    assert failed_logins(stack, mailbox.address) == 3
