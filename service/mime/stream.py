"""Content-Transfer-Encoding decoders (RFC 2045 section 6), incremental, for whole
parts and for parts that stream."""

from __future__ import annotations

import binascii
import re

__all__ = ["PartDecoder", "decode_part"]

_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/=]+")
_PAD_RUN = re.compile(rb"=+")
_UUENCODE = ("x-uuencode", "uuencode", "x-uue", "uue")  # as the standard library names it
_UU_SEARCH = 64 * 1024  # looked through for the "begin" line; the part is kept as it is


class PartDecoder:
    """Feed encoded bytes in any pieces; get decoded bytes back, bounded by the input.

    base64 decodes every block: data after a padded group (mailing lists append a
    footer as a second base64 block) starts a new block, as ``base64 -d``, mutt and
    notmuch read it; characters outside the alphabet are skipped. quoted-printable
    and x-uuencode decode whole lines, keeping a partial line for the next piece. 7bit,
    8bit, binary and unknown encodings pass through unchanged. :attr:`defects` names what was
    irregular (``InvalidBase64CharactersDefect``, ``InvalidBase64PaddingDefect`` for
    padding inside the data, missing at the end or of the wrong length,
    ``InvalidBase64LengthDefect``); no byte is dropped silently.
    """

    def __init__(self, encoding: str | None) -> None:
        self.encoding = (encoding or "7bit").strip().lower()
        self._rest = b""
        self.defects: set[str] = set()
        self._uu = "before"  # where a uuencoded part is: before, body, after (or raw)
        self._held = bytearray()  # its lines before "begin"

    def feed(self, data: bytes) -> bytes:
        if self.encoding == "base64":
            return self._base64(data, final=False)
        if self.encoding in _UUENCODE:
            return self._uudecode(data, final=False)
        if self.encoding == "quoted-printable":
            text = self._rest + data
            cut = text.rfind(b"\n") + 1
            self._rest = text[cut:]
            return binascii.a2b_qp(text[:cut])
        return data

    def flush(self) -> bytes:
        if self.encoding == "base64":
            return self._base64(b"", final=True)
        if self.encoding in _UUENCODE:
            return self._uudecode(b"", final=True)
        rest, self._rest = self._rest, b""
        if self.encoding == "quoted-printable":
            return binascii.a2b_qp(rest)
        return rest

    def _base64(self, data: bytes, *, final: bool) -> bytes:
        stripped = data.translate(None, b"\r\n\t ")
        clean = _NOT_B64.sub(b"", stripped)
        if len(clean) != len(stripped):
            self.defects.add("InvalidBase64CharactersDefect")
        text = self._rest + clean
        out = bytearray()
        pos = 0
        while True:
            pad = text.find(b"=", pos)
            if pad < 0:
                break
            # The group holding this "=" ends a block: decode up to it, then skip the run.
            run_end = _PAD_RUN.match(text, pad)
            end = run_end.end() if run_end else pad + 1
            if end == len(text) and not final:
                break  # the run may go on in the next piece
            block = text[pos:pad]
            out += _decode_block(block, self.defects)
            pos = end
            if end < len(text) or (end - pad) != -len(block) % 4:
                self.defects.add("InvalidBase64PaddingDefect")  # inside, or not as long
        tail = text[pos:]
        if final:
            if len(tail) % 4 in (2, 3):
                self.defects.add("InvalidBase64PaddingDefect")  # the last group unpadded
            out += _decode_block(tail, self.defects)
            self._rest = b""
        else:
            whole = len(tail) - len(tail) % 4
            if b"=" in tail:  # an unfinished padding run: keep the block whole
                whole = 0
            out += binascii.a2b_base64(tail[:whole]) if whole else b""
            self._rest = tail[whole:]
        return bytes(out)

    def _uudecode(self, data: bytes, *, final: bool) -> bytes:
        """The lines between ``begin`` and ``end``, as the standard library decodes
        x-uuencode; a line too short for its length character gives what it holds (a
        defect). With no ``begin`` line the part is kept as it is (a defect)."""
        text = self._rest + data
        cut = len(text) if final else text.rfind(b"\n") + 1
        self._rest = text[cut:]
        out = bytearray()
        for line in text[:cut].splitlines(keepends=True):
            if self._uu == "before":
                self._held += line
                if line.startswith(b"begin "):
                    self._uu = "body"
                    self._held.clear()
                elif len(self._held) > _UU_SEARCH:
                    self._uu = "raw"
            elif self._uu == "body":
                line = line.rstrip(b"\r\n")
                if line.strip() == b"end":
                    self._uu = "after"
                elif line:
                    out += _uu_line(line, self.defects)
            if self._uu == "raw":
                self.defects.add("InvalidUuencodeDefect")
                out += self._held or line
                self._held.clear()
        if final and self._uu == "before":
            self.defects.add("InvalidUuencodeDefect")
            self._uu = "raw"
            out += self._held
        return bytes(out)


def _uu_line(line: bytes, defects: set[str]) -> bytes:
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        defects.add("InvalidUuencodeDefect")
        length = (((line[0] - 32) & 63) * 4 + 5) // 3  # what the standard library keeps
        try:
            return binascii.a2b_uu(line[:length])
        except binascii.Error:
            return b""


def _decode_block(block: bytes, defects: set[str]) -> bytes:
    """One base64 block without its padding; a dangling single character carries no
    byte (a length defect)."""
    if len(block) % 4 == 1:
        defects.add("InvalidBase64LengthDefect")
        block = block[:-1]
    if not block:
        return b""
    return binascii.a2b_base64(block + b"=" * (-len(block) % 4))


def decode_part(data: bytes, encoding: str | None) -> tuple[bytes, set[str]]:
    """A whole part's body decoded by its Content-Transfer-Encoding, and its defects."""
    decoder = PartDecoder(encoding)
    out = decoder.feed(data)
    out += decoder.flush()
    return out, decoder.defects
