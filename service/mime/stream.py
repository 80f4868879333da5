"""Incremental Content-Transfer-Encoding decoders, for streaming one MIME part."""

from __future__ import annotations

import base64
import binascii
import quopri


class PartDecoder:
    """Feed encoded bytes in any pieces; get decoded bytes back, bounded by the input.

    base64 ignores line breaks and undecodable junk characters (as mail readers do);
    quoted-printable decodes whole lines only, keeping a partial line for the next
    piece; 7bit, 8bit and binary pass through.
    """

    def __init__(self, encoding: str | None) -> None:
        self.encoding = (encoding or "7bit").strip().lower()
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        if self.encoding == "base64":
            clean = self._rest + data.translate(None, _NOT_B64)
            usable = len(clean) - len(clean) % 4
            self._rest = clean[usable:]
            return _b64(clean[:usable])
        if self.encoding == "quoted-printable":
            text = self._rest + data
            cut = text.rfind(b"\n") + 1
            self._rest = text[cut:]
            return quopri.decodestring(text[:cut])
        return data

    def flush(self) -> bytes:
        rest, self._rest = self._rest, b""
        if self.encoding == "base64":
            rest = rest.rstrip(b"=")
            if len(rest) % 4 == 1:  # a lone trailing character carries no byte
                rest = rest[:-1]
            return _b64(rest + b"=" * (-len(rest) % 4)) if rest else b""
        if self.encoding == "quoted-printable":
            return quopri.decodestring(rest)
        return rest


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_B64 = bytes(c for c in range(256) if c not in _B64_ALPHABET)


def _b64(data: bytes) -> bytes:
    if not data:
        return b""
    try:
        return base64.b64decode(data)
    except binascii.Error:
        # '=' inside the stream (concatenated base64): decode quad by quad.
        out = bytearray()
        for i in range(0, len(data), 4):
            quad = data[i : i + 4]
            try:
                out += base64.b64decode(quad)
            except binascii.Error:
                continue
        return bytes(out)
