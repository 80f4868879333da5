"""Header fields as text: the one decoder of raw 8-bit bytes, encoded words, addresses,
message ids and dates, for the listing and the fetch alike. Nothing here raises."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

from service.models.common import Address

__all__ = [
    "HeaderBlock",
    "addresses",
    "charset_codec",
    "display_name",
    "header_block",
    "iso_date",
    "message_id",
    "text",
    "to_str",
]

_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # a field name, then the colon
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_MSGID = re.compile(r"<[^<>]*>")
# RFC 2047 section 2 encoded word, with the RFC 2231 section 5 language suffix.
_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_SPACE_ONLY = re.compile(r"[ \t]*")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")


@dataclass
class HeaderBlock:
    """The fields of one header section, in order: (name, raw value bytes, still folded)."""

    fields: list[tuple[str, bytes]] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def first(self, name: str) -> bytes | None:
        """The raw value of the first field called ``name`` (case-insensitive)."""
        name = name.lower()
        return next((v for n, v in self.fields if n.lower() == name), None)

    def all(self, name: str) -> list[bytes]:
        name = name.lower()
        return [v for n, v in self.fields if n.lower() == name]


def header_block(data: bytes) -> HeaderBlock:
    """Split a header section (up to its empty line, if any) into fields (RFC 5322 2.2).

    A line that is neither a field nor a continuation is skipped with an
    ``InvalidHeaderDefect``, as IMAP servers keep reading the header to its empty line;
    an mbox ``From `` line at the very start is skipped silently.
    """
    end = _header_end(data)
    block = HeaderBlock()
    lines = data[:end].split(b"\n")
    pieces: list[list[bytes]] = []  # each field's lines, joined once at the end
    for number, line in enumerate(lines, 1):
        line = line.removesuffix(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if pieces and number > 1:
                pieces[-1].append(line)
            continue
        match = _FIELD.match(line)
        if match:
            value = line[match.end() :]
            block.fields.append((match.group(1).decode("ascii"), b""))
            pieces.append([value])
        elif not (number == 1 and line.startswith(b"From ")):
            block.defects.append(f"InvalidHeaderDefect (header line {number}: not a field)")
    block.fields = [
        (name, b"\r\n".join(lines)) for (name, _), lines in zip(block.fields, pieces, strict=True)
    ]
    return block


def _header_end(data: bytes) -> int:
    """Where the header section ends: after its empty line (CRLF or bare LF), else the end."""
    if data.startswith((b"\r\n", b"\n")):
        return 0
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    ends = [i for i in (crlf, lf) if i >= 0]
    return min(ends) + 1 if ends else len(data)


# ---------------------------------------------------------------- bytes → text


def charset_codec(charset: str | None) -> str | None:
    """Python's codec name for a MIME charset, or None when there is none by that name."""
    if not charset:
        return None
    name = charset.strip().strip('"').lower()
    if name in ("", "unknown-8bit", "x-unknown", "default"):
        return None
    if name in ("us-ascii", "ascii", "ansi_x3.4-1968"):
        return "ascii"
    if name in ("ks_c_5601-1987", "ks_c_5601"):  # what mailers mean by it (as browsers do)
        return "cp949"
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):
        return None


def to_str(
    raw: bytes, *, assumed: str | None = None, where: str = "", defects: list[str] | None = None
) -> str:
    """Header bytes as text. ASCII and valid UTF-8 (RFC 6532) as they are; other 8-bit
    bytes (no encoded words, RFC 2047 ignored) with ``assumed``, the charset the message
    declares for its text, as Thunderbird and mutt's assumed_charset do; where that is
    absent or does not fit, windows-1252 (every byte maps to a character). Each of
    those two cases adds an ``UndecodableBytesDefect`` naming what was used.

    Raw ISO-2022-JP (7-bit: escape sequences switch the character set; old Japanese
    mailers wrote headers so) is ASCII, but is read as ISO-2022-JP-2 where it decodes,
    as Thunderbird does, whatever the message declares, with the same defect: its
    escapes are control characters, and the ``(`` of ``ESC ( B`` opens a comment."""
    if raw.isascii():
        if b"\x1b" in raw:
            try:
                text = raw.decode("iso2022_jp_2")
            except UnicodeDecodeError:
                pass
            else:
                if defects is not None:
                    defects.append(f"UndecodableBytesDefect ({where}: escape sequences "
                                   "read as iso2022_jp_2)")  # fmt: skip
                return text
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = charset_codec(assumed)
    if codec is not None and codec not in ("ascii", "utf-8"):
        try:
            text = raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            pass
        else:
            if defects is not None:
                defects.append(f"UndecodableBytesDefect ({where}: 8-bit bytes read as {codec})")
            return text
    if defects is not None:
        defects.append(f"UndecodableBytesDefect ({where}: 8-bit bytes read as cp1252)")
    return raw.decode("cp1252", "replace")


def _unfold(raw: bytes) -> bytes:
    return _FOLD.sub(b"", raw).replace(b"\r", b" ").replace(b"\n", b" ")


# ---------------------------------------------------------------- RFC 2047 encoded words


def decode_words(value: str, *, where: str = "", defects: list[str] | None = None) -> str:
    """Decode RFC 2047 encoded words in ``value``. White space between two adjacent
    encoded words is dropped (section 6.2); adjacent words of one charset are joined
    before decoding, so a character split across them survives. Words inside quoted
    strings or glued to text are decoded too, as mail readers do. An unknown charset
    reads as UTF-8, else windows-1252, with a ``CharsetError`` defect."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []  # (charset, bytes) of adjacent encoded words
    pos = 0
    for match in _WORD.finditer(value):
        between = value[pos : match.start()]
        if pending and not _SPACE_ONLY.fullmatch(between):
            out.append(_flush(pending, where, defects))
        if not pending or not _SPACE_ONLY.fullmatch(between):
            out.append(between)
        charset, kind, payload = match.group(1), match.group(2).upper(), match.group(3)
        data = _q_decode(payload) if kind == "Q" else _b_decode(payload, where, defects)
        if pending and pending[-1][0] == charset.lower():
            pending[-1] = (pending[-1][0], pending[-1][1] + data)
        else:
            pending.append((charset.lower(), data))
        pos = match.end()
    if pending:
        out.append(_flush(pending, where, defects))
    out.append(value[pos:])
    return "".join(out)


def _q_decode(payload: str) -> bytes:
    raw = payload.encode("ascii", "replace").replace(b"_", b" ")
    return _QP_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _b_decode(payload: str, where: str, defects: list[str] | None) -> bytes:
    raw = payload.encode("ascii", "replace")
    clean = _NOT_B64.sub(b"", raw.rstrip(b"="))
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    if defects is not None and (clean != raw.rstrip(b"=") or len(raw) % 4):
        defects.append(f"InvalidBase64PaddingDefect ({where}: an encoded word)")
    try:
        return base64.b64decode(clean + b"=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        return b""


def _flush(pending: list[tuple[str, bytes]], where: str, defects: list[str] | None) -> str:
    parts = []
    for charset, data in pending:
        codec = charset_codec(charset)
        if codec is None:
            if defects is not None:
                defects.append(f"CharsetError ({where}: unknown charset {charset!r})")
            try:
                parts.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                parts.append(data.decode("cp1252", "replace"))
            continue
        parts.append(data.decode(codec, "replace"))
    pending.clear()
    return "".join(parts)


# ---------------------------------------------------------------- fields


def text(
    raw: bytes | None,
    *,
    assumed: str | None = None,
    where: str = "",
    defects: list[str] | None = None,
) -> str | None:
    """An unstructured field (Subject, any header's value) for display: unfolded, raw
    8-bit bytes decoded (see :func:`to_str`), encoded words decoded; line breaks that
    decoding brings in become spaces, so the value is one line. None for None."""
    if raw is None:
        return None
    value = to_str(_unfold(raw), assumed=assumed, where=where, defects=defects)
    decoded = decode_words(value, where=where, defects=defects)
    return _LINE_BREAKS.sub(" ", decoded).strip()


def display_name(value: str) -> str | None:
    """A display name fit to show: every run of control characters (line breaks too)
    becomes one space; None when nothing is left."""
    return _CONTROLS.sub(" ", value).strip() or None


def message_id(raw: bytes | None) -> str | None:
    """The ``<id>`` of a Message-ID / In-Reply-To field, with its angle brackets; the
    first word when there are none."""
    value = text(raw) or ""
    match = _MSGID.search(value)
    return match.group() if match else (value.split()[0] if value.split() else None)


def message_ids(raw: bytes | None) -> list[str]:
    """Every ``<id>`` of a References field (the words, when there are no brackets)."""
    value = text(raw) or ""
    return _MSGID.findall(value) or value.split()


def iso_date(raw: bytes | None) -> str | None:
    """An RFC 5322 date as ISO 8601 (UTC when it names no zone); None when unreadable."""
    value = text(raw)
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


# ---------------------------------------------------------------- addresses (RFC 5322 3.4)

_RUN = re.compile(r'[^"()<>,:;\\]+')


def addresses(
    values: list[bytes],
    *,
    assumed: str | None = None,
    where: str = "",
    defects: list[str] | None = None,
) -> list[Address]:
    """Every mailbox of these address fields (groups flattened), in order. Display names
    are decoded like :func:`text` and cleaned by :func:`display_name`; an old-style
    ``addr (Name)`` gives the comment as the name. An entry that is not a usable address
    is left out with an ``InvalidAddressDefect``."""
    out: list[Address] = []
    for raw in values:
        value = to_str(_unfold(raw), assumed=assumed, where=where, defects=defects)
        for name, addr in _mailboxes(value):
            addr = addr.strip()
            if not addr or addr == "<>":
                continue
            decoded = display_name(decode_words(name, where=where, defects=defects))
            try:
                out.append(Address.model_validate({"name": decoded, "address": addr}))
            except ValueError:
                if defects is not None:
                    defects.append(f"InvalidAddressDefect ({where})")
    return out


def _mailboxes(value: str) -> list[tuple[str, str]]:
    """(raw display name, addr-spec) pairs of an address list; lenient, never raises."""
    found: list[tuple[str, str]] = []
    phrase: list[str] = []
    comment = ""
    angle: str | None = None

    def close() -> None:
        nonlocal comment, angle
        words = "".join(phrase).strip()
        if angle is not None:
            found.append((words, angle))
        elif words:
            found.append((comment, "".join(words.split())))
        phrase.clear()
        comment, angle = "", None

    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i, quoted = _delimited(value, i + 1, '"')
            phrase.append(quoted)
        elif c == "(":
            i, comment = _delimited(value, i + 1, ")")
            phrase.append(" ")
        elif c == "<":
            end = value.find(">", i + 1)
            end = n if end < 0 else end
            spec = "".join(value[i + 1 : end].split())
            angle = spec.rsplit(":", 1)[-1] if spec.startswith("@") else spec  # obs-route
            i = end + 1
        elif c in ",;":
            close()
            i += 1
        elif c == ":":
            phrase.clear()  # what came before was a group's name
            i += 1
        elif c in ">)\\":
            i += 1
        else:
            match = _RUN.match(value, i)
            end = match.end() if match else i + 1
            phrase.append(value[i:end])
            i = end
    close()
    return found


def _delimited(value: str, start: int, stop: str) -> tuple[int, str]:
    """A quoted string or (nested) comment from ``start``: (index after it, its text
    with quoted-pairs resolved)."""
    out: list[str] = []
    depth = 1
    i, n = start, len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        if stop == ")" and c == "(":
            depth += 1
        elif c == stop:
            depth -= 1
            if depth == 0:
                return i + 1, "".join(out)
        out.append(c)
        i += 1
    return n, "".join(out)
