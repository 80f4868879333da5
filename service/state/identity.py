"""Keyed hashes (HMAC-SHA256) of mailbox identities: what the shared state may hold.

Nothing in the state store names a user or a secret in clear: keys are
HMACs under ``MAILGATE_STATE_KEY`` (random per process when it is not set,
which is fine for process memory and is why Redis requires it). Without the
key, a copy of the store cannot be used to test password guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from service.protocols.base import Credentials


class IdentityHasher:
    """HMACs of (provider, user) and (provider, user, secret), hex."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or os.urandom(32)

    def _mac(self, *parts: str) -> str:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            data = part.encode("utf-8", "surrogatepass")
            mac.update(len(data).to_bytes(4, "big"))
            mac.update(data)
        return mac.hexdigest()

    def mailbox(self, provider: str, user: str) -> str:
        """One mailbox of one provider (the user name compared case-insensitively)."""
        return self._mac("mailbox", provider, user.strip().lower())

    def identity(self, provider: str, creds: Credentials) -> str:
        """One mailbox together with one secret: who may see whose idempotency records.
        The user name is compared case-insensitively, as :meth:`mailbox` does (servers
        find a user whatever its case): a retry that spells the user otherwise is the
        same caller, and must not send a second time."""
        user = creds.user.strip().lower()
        return self._mac("identity", provider, user, creds.kind, creds.secret)

    def client(self, address: str) -> str:
        """A client address (kept out of the store in clear too)."""
        return self._mac("client", address)[:32]
