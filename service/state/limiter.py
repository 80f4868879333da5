"""Login limiter: password guessing through the gateway is bounded, the owner is not
locked out.

The adapters tell the limiter about each login they are about to send
(:class:`~service.protocols.base.LoginGuard`); a request that makes no login
(a reused session, a request refused before any mail server is asked) costs
nothing. A login whose secret has not logged in successfully lately costs one
hit of two moving windows (:mod:`limits`, atomic in memory and in Redis), at
most one per request: ``per_client`` for this client address + mailbox, and
``per_mailbox`` for the mailbox from all clients together. The hit is taken
*before* the credentials go on the wire, so concurrent attempts cannot slip
past the limit (no check-then-record race): whatever the number of clients, a
mailbox sees at most ``per_mailbox`` logins with unproven secrets per window
(plus one per proven secret that stopped working).

A secret that logged in successfully within ``known_good_seconds`` (kept only
as a keyed hash) skips both windows, so guessers exhausting them never lock
the owner's apps out. Concurrent first logins with the same unproven secret in
one process go one at a time: the others wait (up to ``wait_seconds``) and,
once the first is accepted, proceed as proven without a hit. When the shared
store is down, the windows fall back to this process's memory (limits still
hold per replica).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from functools import cached_property

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from service.errors import RateLimited
from service.protocols.base import Credentials
from service.state.identity import IdentityHasher
from service.state.store import KeyValueStore, StoreUnavailable

log = logging.getLogger("mailgate")


@dataclass
class LoginAttempt:
    """One request's logins, as the limiter knows them (hashes only); the
    :class:`~service.protocols.base.LoginGuard` handed to the adapters.

    The keyed hashes are made when a login first needs them: most requests reuse a
    pooled session and make no login (three HMACs were a tenth of the HTTP side of a
    raw read)."""

    limiter: LoginLimiter = field(repr=False)
    provider: str = field(repr=False)
    creds: Credentials = field(repr=False)
    address: str = field(repr=False)
    proven: bool = False
    """The secret logged in successfully lately: no window applies."""
    counted: bool = False
    leading: asyncio.Event | None = field(default=None, repr=False)
    """Set while this request makes the first login of its secret in this process."""

    @cached_property
    def mailbox(self) -> str:
        return self.limiter.hasher.mailbox(self.provider, self.creds.user)

    @cached_property
    def client(self) -> str:
        return self.limiter.hasher.client(self.address)

    @cached_property
    def secret(self) -> str:
        return self.limiter.hasher.identity(self.provider, self.creds)

    async def before_login(self) -> None:
        await self.limiter.before_login(self)

    async def login_accepted(self) -> None:
        await self.limiter.login_accepted(self)


class LoginLimiter:
    """See the module docstring. ``per_mailbox == 0`` turns the limiter off."""

    prefix = "mailgate:good:"

    def __init__(
        self,
        store: KeyValueStore,
        hasher: IdentityHasher,
        *,
        per_mailbox: int,
        per_client: int,
        window_seconds: int,
        known_good_seconds: int,
        wait_seconds: float = 10.0,
    ) -> None:
        self._store = store
        self.hasher = hasher
        self._enabled = per_mailbox > 0
        self._mailbox_item = RateLimitItemPerSecond(max(per_mailbox, 1), window_seconds)
        self._client_item = RateLimitItemPerSecond(
            max(min(per_client, per_mailbox), 1), window_seconds
        )
        self._known_good = known_good_seconds
        self._wait = wait_seconds
        self._shared = MovingWindowRateLimiter(store.limits_storage)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._first_logins: dict[str, asyncio.Event] = {}

    def attempt(self, provider: str, creds: Credentials, client: str) -> LoginAttempt:
        """The guard for one request's credentials (``client``: its address)."""
        return LoginAttempt(limiter=self, provider=provider, creds=creds, address=client)

    async def before_login(self, attempt: LoginAttempt) -> None:
        """Let a login go to the mail server, or raise RateLimited (Retry-After)."""
        if not self._enabled or attempt.counted or attempt.leading is not None:
            return
        if await self._is_proven(attempt):
            return
        first = self._first_logins.get(attempt.secret)
        if first is not None:  # the same secret is logging in right now: wait for it
            try:
                await asyncio.wait_for(first.wait(), self._wait)
            except TimeoutError:
                pass
            if await self._is_proven(attempt):
                return
        if attempt.secret not in self._first_logins:  # no await since the check above
            attempt.leading = self._first_logins[attempt.secret] = asyncio.Event()
        try:
            await self._hit(attempt)
        except BaseException:
            self._release(attempt)
            raise
        attempt.counted = True

    async def login_accepted(self, attempt: LoginAttempt) -> None:
        """Remember the secret as proven (for ``known_good_seconds``)."""
        if self._enabled and self._known_good and not attempt.proven:
            attempt.proven = True
            try:
                await self._store.put(self.prefix + attempt.secret, "1", self._known_good)
            except StoreUnavailable:
                pass
        self._release(attempt)

    async def login_refused(self, attempt: LoginAttempt) -> None:
        """The mail server refused the credentials. A proven secret loses its standing
        and this failure is counted (an unproven one was counted before the login)."""
        self._release(attempt)
        if not self._enabled or not attempt.proven:
            return
        attempt.proven = False
        try:
            await self._store.discard(self.prefix + attempt.secret)
        except StoreUnavailable:
            pass
        try:
            await self._hit(attempt)
        except RateLimited:
            pass

    def finished(self, attempt: LoginAttempt) -> None:
        """The request is over: wake whoever waits for this request's first login."""
        self._release(attempt)

    def _release(self, attempt: LoginAttempt) -> None:
        if attempt.leading is not None:
            attempt.leading.set()
            if self._first_logins.get(attempt.secret) is attempt.leading:
                del self._first_logins[attempt.secret]
            attempt.leading = None

    async def _is_proven(self, attempt: LoginAttempt) -> bool:
        if not self._known_good:
            return False
        try:
            attempt.proven = await self._store.get(self.prefix + attempt.secret) is not None
        except StoreUnavailable:
            attempt.proven = False
        return attempt.proven

    async def _hit(self, attempt: LoginAttempt) -> None:
        checks = (
            (self._client_item, (attempt.mailbox, attempt.client)),
            (self._mailbox_item, (attempt.mailbox,)),
        )
        for item, ids in checks:
            limiter = self._local if self._store.failing else self._shared
            try:
                allowed = await limiter.hit(item, *ids)
            except (StorageError, StoreUnavailable) as exc:
                mark_down = getattr(self._store, "mark_down", None)
                if mark_down is not None:
                    mark_down()
                log.warning("login limiter: shared store unavailable (%s); counting locally",
                            type(exc).__name__)  # fmt: skip
                limiter = self._local
                allowed = await limiter.hit(item, *ids)
            if not allowed:
                raise RateLimited(
                    "Too many login attempts for this mailbox; try again later.",
                    retry_after=await self._retry_after(limiter, item, ids),
                )

    async def _retry_after(
        self, limiter: MovingWindowRateLimiter, item: RateLimitItemPerSecond, ids: tuple[str, ...]
    ) -> int:
        try:
            stats = await limiter.get_window_stats(item, *ids)
        except (StorageError, StoreUnavailable):
            return item.get_expiry()
        return max(1, math.ceil(stats.reset_time - time.time()))
