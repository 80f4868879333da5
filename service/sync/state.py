"""Sync state tokens: opaque, URL-safe, versioned, self-contained, validated on the way in.

A state names one point in a folder's history so that ``GET /v1/changes`` can
tell what happened since (the JMAP ``state`` of RFC 8620 §5.2, computed from
what the mail server keeps, so any replica reads any token and nothing is
stored). Pure: no I/O.

Wire form: one letter for the protocol (``i`` IMAP, ``p`` POP3), one digit for
the format version, then base64url (no padding) of compact JSON::

    IMAP  {"m": MAILBOX, "f": folder, "v": UIDVALIDITY, "b": MARK, "t": MARK, "u": UID}
          MARK = [UIDNEXT, EXISTS, HIGHESTMODSEQ | null, flags digest | null]
          "t"/"u" only while a /changes answer is paged: the changes of UIDs >= "u"
          up to mark "t" were delivered; those of UIDs below "u" since "b" were not.
    POP3  {"m": MAILBOX, "n": count, "d": digest of the first n UIDLs}
    MAILBOX = :func:`mailbox_tag` of the provider and user the state was made for

Anything else is :class:`~service.errors.ValidationFailed` (422), as the contract
asks; a state of another folder, protocol or mailbox is 422 too
(:func:`decode_state`). The mailbox is a plain truncated digest, not a keyed one:
any replica checks any state with no shared key (it binds, it does not sign: a
state is no credential, the request's own login still decides what it reads).
Version 1 states (before the mailbox was bound) are still read, and answer 410
``cannot-calculate-changes``: nothing in them says whose they are, and two new
mailboxes may share a UIDVALIDITY, so the client lists again, once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from service.errors import CannotCalculateChanges, ValidationFailed

__all__ = [
    "ImapMark",
    "ImapState",
    "Pop3State",
    "SyncState",
    "decode_state",
    "flags_digest",
    "mailbox_tag",
    "uidl_digest",
]

VERSION = "2"
_UNBOUND_VERSION = "1"  # states made before they named their mailbox
_MAX_TOKEN = 4096
_U32 = 2**32
_MODSEQ_MAX = 2**63
_DIGEST_LEN = 22  # 16 bytes in base64url without padding
_MAILBOX_LEN = 16  # 12 bytes in base64url
_RECENT = "\\recent"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return _b64(h.digest()[:16])


def flags_digest(flags_by_uid: dict[int, list[str]]) -> str:
    """A digest of every message's UID and flags (``\\Recent`` left out: it is per
    session), for servers without CONDSTORE: equal digests mean nothing below the
    state's UIDNEXT was flagged, unflagged or expunged."""
    lines = []
    for uid in sorted(flags_by_uid):
        kept = sorted(f for f in flags_by_uid[uid] if f.lower() != _RECENT)
        lines.append(f"{uid} {' '.join(kept)}\n".encode())
    return _digest(lines)


def mailbox_tag(provider: str, user: str) -> str:
    """Which mailbox a state belongs to: 12 bytes of SHA-256 over the provider's name
    and the user name case-folded (servers find a user whatever its case), base64url
    (16 characters). The same on every replica, with no key to share."""
    data = f"mailgate-state\0{provider}\0{user.casefold()}".encode("utf-8", "surrogatepass")
    return _b64(hashlib.sha256(data).digest()[:12])


def uidl_digest(uidls: Iterable[str]) -> str:
    """A digest of a POP3 UIDL sequence, in message-number order."""
    return _digest(u.encode("utf-8", "surrogateescape") + b"\n" for u in uidls)


@dataclass(frozen=True)
class ImapMark:
    """A point in an IMAP folder's history, from one SELECT (or STATUS).

    ``exists`` counts the messages below ``uidnext`` then; ``modseq`` is
    HIGHESTMODSEQ (RFC 7162), None without CONDSTORE; ``digest`` is
    :func:`flags_digest` of the messages below ``uidnext`` (only where there is no
    MODSEQ; None when it was not taken, e.g. a folder's state from STATUS)."""

    uidnext: int
    exists: int
    modseq: int | None = None
    digest: str | None = None

    def _wire(self) -> list[Any]:
        return [self.uidnext, self.exists, self.modseq, self.digest]


@dataclass(frozen=True)
class ImapState:
    """An IMAP folder's state: folder, UIDVALIDITY and a mark; while paging, the
    mark the client reaches when done (``target``) and the UID below which the
    changes are still to come (``below``); ``mailbox`` is :func:`mailbox_tag` of
    whose folder it is (empty in a version 1 state)."""

    folder: str
    uidvalidity: int
    base: ImapMark
    target: ImapMark | None = None
    below: int | None = None
    mailbox: str = field(kw_only=True)

    protocol = "imap"

    def encode(self) -> str:
        data: dict[str, Any] = {
            "m": self.mailbox,
            "f": self.folder,
            "v": self.uidvalidity,
            "b": self.base._wire(),
        }
        if self.target is not None and self.below is not None:
            data["t"] = self.target._wire()
            data["u"] = self.below
        return "i" + VERSION + _b64(_json(data))


@dataclass(frozen=True)
class Pop3State:
    """A POP3 maildrop's state: how many messages, a digest of their UIDLs, and
    :func:`mailbox_tag` of whose maildrop it is (empty in a version 1 state)."""

    count: int
    digest: str
    mailbox: str = field(kw_only=True)

    protocol = "pop3"
    folder = "INBOX"

    def encode(self) -> str:
        return "p" + VERSION + _b64(_json({"m": self.mailbox, "n": self.count, "d": self.digest}))


SyncState = ImapState | Pop3State


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _int(value: Any, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError("out of range")
    return value


def _urlsafe(value: Any, length: int) -> bool:
    """A str of ``length`` URL-safe base64 characters (a digest or mailbox tag)."""
    return (
        isinstance(value, str)
        and len(value) == length
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    )


def _digest_field(value: Any) -> str | None:
    if value is None:
        return None
    if not _urlsafe(value, _DIGEST_LEN):
        raise ValueError("bad digest")
    return str(value)


def _mark(value: Any) -> ImapMark:
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError("bad mark")
    uidnext = _int(value[0], 1, _U32)
    exists = _int(value[1], 0, uidnext - 1)
    modseq = None if value[2] is None else _int(value[2], 0, _MODSEQ_MAX - 1)
    return ImapMark(uidnext, exists, modseq, _digest_field(value[3]))


def _mailbox_field(data: dict[str, Any], bound: bool) -> str:
    if not bound:
        return ""
    value = data.pop("m", None)
    if not _urlsafe(value, _MAILBOX_LEN):
        raise ValueError("mailbox")
    return str(value)


def _parse(token: str) -> SyncState:
    if not isinstance(token, str) or not 3 <= len(token) <= _MAX_TOKEN:
        raise ValueError("length")
    kind, version, payload = token[0], token[1], token[2:]
    if version not in (VERSION, _UNBOUND_VERSION) or not all(
        c.isascii() and (c.isalnum() or c in "-_") for c in payload
    ):
        raise ValueError("version or alphabet")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a token of nested arrays ("[[[[…") deeper than json allows
        raise ValueError("not base64url JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("not an object")
    mailbox = _mailbox_field(data, bound=version == VERSION)
    if kind == "p":
        if set(data) != {"n", "d"}:
            raise ValueError("keys")
        digest = _digest_field(data["d"])
        if digest is None:
            raise ValueError("digest")
        return Pop3State(_int(data["n"], 0, _U32), digest, mailbox=mailbox)
    if kind == "i":
        if not {"f", "v", "b"} <= set(data) <= {"f", "v", "b", "t", "u"}:
            raise ValueError("keys")
        folder = data["f"]
        if (
            not isinstance(folder, str)
            or not 1 <= len(folder) <= 1000
            or any(ord(c) < 32 or ord(c) == 127 for c in folder)
        ):
            raise ValueError("folder")
        base = _mark(data["b"])
        target: ImapMark | None = None
        below: int | None = None
        if ("t" in data) != ("u" in data):
            raise ValueError("paging")
        if "t" in data:
            target = _mark(data["t"])
            below = _int(data["u"], 1, target.uidnext)
            if target.uidnext < base.uidnext or (target.modseq is None) != (base.modseq is None):
                raise ValueError("paging marks")
            if base.modseq is not None and target.modseq is not None:
                if target.modseq < base.modseq:
                    raise ValueError("paging marks")
        return ImapState(folder, _int(data["v"], 1, _U32 - 1), base, target, below, mailbox=mailbox)
    raise ValueError("kind")


def decode_state(token: str, *, protocol: str, folder: str, mailbox: str) -> SyncState:
    """Read a state from a request for ``mailbox`` (:func:`mailbox_tag`).

    Raises ValidationFailed (422 validation-failed) when it is malformed or belongs
    to another protocol, folder (``folder`` as the adapter spells it) or mailbox;
    CannotCalculateChanges (410) for a well-formed version 1 state, which names no
    mailbox (see the module docstring).
    """
    try:
        state = _parse(token)
    except ValueError:
        raise ValidationFailed("The state is malformed: use one that mailgate answered.") from None
    if state.protocol != protocol:
        raise ValidationFailed(f"The state belongs to {state.protocol}, not {protocol}.")
    if state.folder != folder:
        raise ValidationFailed("The state belongs to another folder.")
    if not state.mailbox:
        raise CannotCalculateChanges(
            "This state was made by an older mailgate and names no mailbox: list the "
            "folder again and use the new state."
        )
    if state.mailbox != mailbox:
        raise ValidationFailed("The state belongs to another mailbox.")
    return state
