"""Opaque message ids and list cursors: URL-safe, stable, validated on the way in."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidId, ValidationFailed


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or len(text) > 2048 or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


@dataclass(frozen=True)
class ImapRef:
    """An IMAP message: folder + UIDVALIDITY + UID."""

    folder: str
    uidvalidity: int
    uid: int

    def encode(self) -> str:
        return "i" + _b64(f"{self.uidvalidity}:{self.uid}:{self.folder}".encode())


@dataclass(frozen=True)
class Pop3Ref:
    """A POP3 message: its UIDL (unique within the maildrop)."""

    uidl: str

    def encode(self) -> str:
        return "p" + _b64(self.uidl.encode())


MessageRef = ImapRef | Pop3Ref


def decode_id(text: str) -> MessageRef:
    """Parse an id from a URL; raise InvalidId for anything malformed."""
    try:
        kind, payload = text[:1], _unb64(text[1:]).decode("utf-8")
        if kind == "i":
            uidvalidity, uid, folder = payload.split(":", 2)
            if not (uidvalidity.isdigit() and uid.isdigit()) or not folder:
                raise ValueError("bad imap id")
            imap_ref = ImapRef(folder, int(uidvalidity), int(uid))
            if not (0 < imap_ref.uid < 2**32 and 0 < imap_ref.uidvalidity < 2**32):
                raise ValueError("out of range")
            return imap_ref
        if kind == "p":
            # RFC 1939: 1-70 characters in 0x21..0x7E
            if not 1 <= len(payload) <= 70 or not all(33 <= ord(c) <= 126 for c in payload):
                raise ValueError("bad uidl")
            return Pop3Ref(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidId("The message id is malformed.") from exc
    raise InvalidId("The message id is malformed.")


def encode_cursor(data: dict[str, Any]) -> str:
    """Pack a cursor's state into an opaque URL-safe token."""
    return _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())


def decode_cursor(token: str) -> dict[str, Any]:
    """Unpack a cursor; 400 bad-request when it is not one of ours."""
    try:
        data = json.loads(_unb64(token))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("The cursor is malformed.") from exc
    if not isinstance(data, dict):
        raise ValidationFailed("The cursor is malformed.")
    return data
