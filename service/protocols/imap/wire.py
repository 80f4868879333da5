"""The IMAP wire, pure: quoting, modified UTF-7, sequence sets and response parsing.

No I/O here: :mod:`service.protocols.imap.session` runs the session and feeds these
functions the lines and literals aioimaplib has framed. Parsing tolerates what
servers send in practice (quoted parentheses, literals anywhere, NIL) and never
raises on garbage it can skip.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from service.errors import NotFound

# --------------------------------------------------------------------------- wire helpers

Word = str | bytes
"""One argument of a command: ``str`` goes on the line as is (ASCII, already
quoted if needed); ``bytes`` is sent as a literal."""

CTL = re.compile(r"[\x00\r\n]")


def quote(text: str) -> str:
    """An IMAP quoted string; ``text`` must be 7-bit without NUL, CR or LF."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def astring(text: str) -> Word:
    """``text`` as a quoted string when it is plain ASCII, else as a UTF-8 literal."""
    if text.isascii() and not CTL.search(text):
        return quote(text)
    return text.encode("utf-8")


def utf7_encode(name: str) -> str:
    """Encode a mailbox name in modified UTF-7 (RFC 3501, 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be", "surrogatepass")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append("&" + b64 + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def utf7_decode(name: str) -> str:
    """Decode a modified UTF-7 mailbox name; ValueError when it is not valid."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            if not 0x20 <= ord(ch) <= 0x7E:
                raise ValueError("not modified UTF-7")
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated shift in modified UTF-7")
        if end == i + 1:
            out.append("&")
        else:
            b64 = name[i + 1 : end].replace(",", "/")
            if "=" in b64 or len(b64) % 4 == 1:
                raise ValueError("bad base64 in modified UTF-7")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError("bad modified UTF-7") from exc
        i = end + 1
    return "".join(out)


def mailbox_arg(name: str) -> str:
    """A folder name (Unicode) as a quoted modified-UTF-7 command argument."""
    if not name or len(name) > 1000:
        raise NotFound("No such folder.")
    return quote(utf7_encode(name))


def mailbox_from_wire(raw: str) -> str:
    """A folder name as the server sent it, decoded for callers (raw if not mUTF-7)."""
    try:
        return utf7_decode(raw)
    except ValueError:
        return raw


def format_uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1:3,7"``."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty uid set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def parse_sequence_set(text: str) -> list[tuple[int, int]]:
    """``"1:3,7"`` → ``[(1, 3), (7, 7)]`` (ranges normalised low-high)."""
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        a, b = int(lo), int(hi or lo)
        out.append((min(a, b), max(a, b)))
    return out


_CHANGE_TAILS = (b" EXISTS", b" EXPUNGE", b" RECENT")
_MODSEQ = re.compile(rb"MODSEQ", re.IGNORECASE)


def reports_change(lines: Sequence[Line], *, solicited_fetch: bool) -> bool:
    """Whether one reply's untagged responses report a change in the selected folder:
    ``EXISTS``, ``EXPUNGE``, ``RECENT``, ``VANISHED``, a ``HIGHESTMODSEQ`` response code,
    or a ``FETCH`` that is not just data asked for (``solicited_fetch``: the reply of a
    FETCH command, whose own lines carry no MODSEQ unless asked; a flag change reported
    under CONDSTORE always carries one, RFC 7162 §3.1). Literal data is skipped."""
    for line in lines:
        if type(line) is not bytes:
            continue
        first = line[:1]
        if first.isdigit():
            if b" FETCH " in line[:24].upper():
                if not solicited_fetch or _MODSEQ.search(line):
                    return True
            elif line.rstrip().upper().endswith(_CHANGE_TAILS):
                return True
        elif first in (b"V", b"v") and line[:9].upper() == b"VANISHED ":
            return True
        elif first in (b"O", b"o") and b"[HIGHESTMODSEQ" in line.upper():
            return True
    return False


def track_exists(lines: Sequence[Line], exists: int | None) -> int | None:
    """The selected folder's message count after one reply's untagged responses.

    ``n EXISTS`` sets it (RFC 3501 7.3.1), each ``n EXPUNGE`` lowers it by one
    (7.4.1), ``VANISHED uid-set`` by the set's size (RFC 7162 3.2.10; the
    ``(EARLIER)`` form reports messages already gone and changes nothing). None
    (not known) stays None until an EXISTS. Literal data (``bytearray``) is skipped.
    """
    for line in lines:
        if type(line) is not bytes:
            continue
        first = line[:1]
        try:
            if first.isdigit():
                tail = line[-8:].upper()
                if tail.endswith(b" EXISTS"):
                    exists = int(line.split(b" ", 1)[0])
                elif tail == b" EXPUNGE" and exists is not None:
                    exists = max(0, exists - 1)
            elif first in (b"V", b"v") and exists is not None:
                if line[:9].upper() == b"VANISHED " and not line[9:].lstrip().startswith(b"("):
                    gone = parse_sequence_set(line[9:].strip().decode("ascii"))
                    exists = max(0, exists - sum(hi - lo + 1 for lo, hi in gone))
        except (ValueError, UnicodeDecodeError):
            exists = None  # garbled: not known any more (listings then search)
    return exists


_CODE_RE = re.compile(r"^\[([^\]]*)\]")


_COPYUID_RE = re.compile(rb"\[COPYUID (\d+) (\d+) (\d+)\]", re.IGNORECASE)


def copied_uid(texts: Iterable[bytes]) -> tuple[int, int] | None:
    """The destination's UIDVALIDITY and the new UID of a one-message UID COPY or UID
    MOVE, from its ``[COPYUID v src dst]`` response code (RFC 4315 §3; RFC 6851 §4.3:
    MOVE sends it untagged); None where the server says nothing (no UIDPLUS) or more
    than one UID was copied."""
    for text in texts:
        m = _COPYUID_RE.search(text)
        if m:
            validity, dst = int(m.group(1)), int(m.group(3))
            if 1 <= validity < 2**32 and 1 <= dst < 2**32:
                return validity, dst
    return None


def response_code(text: str) -> tuple[str, str]:
    """``"[TRYCREATE] No such mailbox"`` → ``("TRYCREATE", "")``; first word upper-cased
    and the rest of the code's text."""
    m = _CODE_RE.match(text.lstrip())
    if not m:
        return "", ""
    name, _, rest = m.group(1).partition(" ")
    return name.upper(), rest


# --------------------------------------------------------------------------- response parsing

Line = bytes | bytearray
"""A response element as aioimaplib collects it: ``bytes`` for a line (CRLF and
the leading ``* `` removed), ``bytearray`` for the data of a literal."""

Token = str | bytes | None | list["Token"]
"""Parsed value: ``str`` atom or number, ``bytes`` quoted string or literal,
``None`` for NIL, ``list`` for a parenthesised list."""

_LITERAL_END = re.compile(rb"~?\{(\d+)\+?\}")


def split_records(lines: Sequence[Line]) -> list[list[Line]]:
    """Group response elements into one list per untagged response.

    A literal belongs to the response before it; the rest of that response's
    line after the literal begins with a space or ``)``, anything else starts
    a new response. The tagged reply (the last element of a library response)
    must not be included.
    """
    records: list[list[Line]] = []
    after_literal = False
    for el in lines:
        if isinstance(el, bytearray):
            if records:
                records[-1].append(el)
            after_literal = True
            continue
        if after_literal and records and el[:1] in (b" ", b")"):
            records[-1].append(el)
        else:
            records.append([el])
        after_literal = False
    return records


_TOKEN = re.compile(
    rb'[()]|"(?:[^"\\]|\\.)*"|[^ ()"\[]+(?:\[[^\]]*\]?[^ ()"\[]*)?|\[[^\]]*\]?[^ ()"\[]*'
)
_UNESCAPE = re.compile(rb"\\(.)")


def tokenize(record: Sequence[Line]) -> list[Token]:
    """Parse one untagged response into tokens; never raises, tolerates garbage."""
    root: list[Token] = []
    stack: list[list[Token]] = [root]
    top = root
    idx = 0
    while idx < len(record):
        el = record[idx]
        idx += 1
        if isinstance(el, bytearray):  # a literal without its announcing line: keep it
            top.append(bytes(el))
            continue
        toks = _TOKEN.findall(el)
        last = len(toks) - 1
        for i, tok in enumerate(toks):
            first = tok[0]
            if first == 0x28:  # (
                new: list[Token] = []
                top.append(new)
                stack.append(new)
                top = new
            elif first == 0x29:  # )
                if len(stack) > 1:
                    stack.pop()
                    top = stack[-1]
            elif first == 0x22:  # "
                body = tok[1:-1]
                top.append(_UNESCAPE.sub(rb"\1", body) if b"\\" in body else body)
            elif i == last and tok[-1] == 0x7D and _LITERAL_END.fullmatch(tok):  # {n} at the end
                data = b""
                if idx < len(record) and isinstance(record[idx], bytearray):
                    data = bytes(record[idx])
                    idx += 1
                top.append(data)
            else:
                atom = tok.decode("latin-1")
                top.append(None if atom.upper() == "NIL" else atom)
    return root


def _text(tok: Token) -> str:
    if isinstance(tok, bytes):
        return tok.decode("utf-8", "replace")
    if isinstance(tok, str):
        return tok
    return ""


@dataclass
class FetchItem:
    """One message's data from FETCH responses, merged by UID."""

    uid: int
    flags: list[str] | None = None
    size: int | None = None
    sections: dict[str, bytes] = field(default_factory=dict)
    structure: Token = None  # BODYSTRUCTURE, as parsed tokens
    modseq: int | None = None  # MODSEQ (RFC 7162), when the server sent it
    seq: int | None = None  # the message sequence number the (last) response named

    def section(self, prefix: str) -> bytes | None:
        """The first body section whose name (upper case, e.g. ``BODY[]<0>``) starts so."""
        for key, value in self.sections.items():
            if key.startswith(prefix):
                return value
        return None


FETCH_HEAD = re.compile(rb"\d+ FETCH[ (]", re.IGNORECASE)


# The commonest reply of all (a page's flags): parsed without the tokenizer.
_FLAGS_ONLY = re.compile(
    rb"\d+ FETCH \((?:UID (\d+) FLAGS \(([^()\"{}]*)\)|FLAGS \(([^()\"{}]*)\) UID (\d+))\)",
    re.IGNORECASE,
)


# A listing's summary reply as Dovecot and most servers order it: parsed by one match.
_SUMMARY_HEAD = re.compile(
    rb"\d+ FETCH \(UID (\d+) FLAGS \(([^()\"{}]*)\) RFC822\.SIZE (\d+) "
    rb"(BODY\[HEADER\.FIELDS \([^()\"{}\[\]]*\)\]) \{(\d+)\}",
    re.IGNORECASE,
)


def _seq(head: Line) -> int:
    """The sequence number at the start of a ``n FETCH (...)`` response (already matched)."""
    return int(head[: head.index(b" ")])


def _fast_summary(record: list[Line]) -> FetchItem | None:
    if len(record) != 3 or record[2] != b")" or not isinstance(record[1], bytearray):
        return None
    m = _SUMMARY_HEAD.fullmatch(record[0])
    if m is None or int(m.group(5)) != len(record[1]):
        return None
    item = FetchItem(int(m.group(1)), seq=_seq(record[0]))
    item.flags = m.group(2).decode("utf-8", "replace").split()
    item.size = int(m.group(3))
    item.sections[m.group(4).decode("ascii").upper()] = bytes(record[1])
    return item


def parse_fetch(lines: Sequence[Line]) -> dict[int, FetchItem]:
    """FETCH responses by UID (responses without a UID, e.g. unsolicited, are dropped)."""
    out: dict[int, FetchItem] = {}
    for record in split_records(lines):
        if (fast := _fast_summary(record)) is not None and fast.uid not in out:
            out[fast.uid] = fast
            continue
        if len(record) == 1 and (simple := _FLAGS_ONLY.fullmatch(record[0])):
            uid_text = simple.group(1) or simple.group(4)
            flag_text = simple.group(2) if simple.group(1) else simple.group(3)
            item = out.setdefault(int(uid_text), FetchItem(int(uid_text)))
            item.flags = flag_text.decode("utf-8", "replace").split()
            item.seq = _seq(record[0])
            continue
        if not FETCH_HEAD.match(record[0]):
            continue
        toks = tokenize(record)
        if len(toks) < 3 or not isinstance(toks[2], list):
            continue
        data = toks[2]
        uid: int | None = None
        flags: list[str] | None = None
        size: int | None = None
        modseq: int | None = None
        sections: dict[str, bytes] = {}
        structure: Token = None
        for k in range(0, len(data) - 1, 2):
            key, val = data[k], data[k + 1]
            if not isinstance(key, str):
                continue
            name = key.upper()
            if name == "UID" and isinstance(val, str) and val.isdigit():
                uid = int(val)
            elif name == "FLAGS" and isinstance(val, list):
                # NIL is a keyword like any other here, not "nothing" (as the fast paths read it)
                flags = [
                    t if isinstance(t, str) else "NIL"
                    for t in val
                    if t is None or isinstance(t, str)
                ]
            elif name == "RFC822.SIZE" and isinstance(val, str) and val.isdigit():
                size = int(val)
            elif name == "BODYSTRUCTURE" and isinstance(val, list):
                structure = val
            elif name == "MODSEQ" and isinstance(val, list) and val and isinstance(val[0], str):
                modseq = int(val[0]) if val[0].isdigit() else None
            elif name.startswith(("BODY[", "BINARY[", "RFC822")):
                sections[name] = val if isinstance(val, bytes) else b""
        if uid is None:
            continue
        item = out.setdefault(uid, FetchItem(uid))
        item.seq = _seq(record[0])
        if flags is not None:
            item.flags = flags
        if size is not None:
            item.size = size
        if modseq is not None:
            item.modseq = modseq
        item.sections.update(sections)
        if structure is not None:
            item.structure = structure
    return out


def parse_vanished(lines: Sequence[Line]) -> set[int]:
    """UIDs of ``VANISHED`` and ``VANISHED (EARLIER)`` responses (RFC 7162 §3.2.10);
    ValueError on a garbled UID set."""
    out: set[int] = set()
    for line in lines:
        if not isinstance(line, bytes) or line[:9].upper() != b"VANISHED ":
            continue
        rest = line[9:].strip()
        if rest[:9].upper() == b"(EARLIER)":
            rest = rest[9:].strip()
        for lo, hi in parse_sequence_set(rest.decode("ascii")):
            out.update(range(lo, hi + 1))
    return out


@dataclass(frozen=True)
class MailboxInfo:
    """One LIST response (name as on the wire, modified UTF-7) plus its STATUS if asked."""

    raw_name: str
    delimiter: str | None
    attributes: frozenset[str]  # lower case, with the backslash
    messages: int | None = None
    unseen: int | None = None
    counters: dict[str, int] = field(default_factory=dict, hash=False, compare=False)
    """Every STATUS item the server returned (UIDNEXT, UIDVALIDITY, HIGHESTMODSEQ, …)."""

    @property
    def name(self) -> str:
        return mailbox_from_wire(self.raw_name)

    @property
    def selectable(self) -> bool:
        return not self.attributes & {"\\noselect", "\\nonexistent"}


def parse_status(lines: Sequence[Line]) -> dict[str, dict[str, int]]:
    """``STATUS name (MESSAGES 3 UNSEEN 1)`` responses: raw name → counters."""
    out: dict[str, dict[str, int]] = {}
    for record in split_records(lines):
        if not record[0][:7].upper().startswith(b"STATUS "):
            continue
        toks = tokenize(record)
        if len(toks) < 3 or not isinstance(toks[2], list):
            continue
        items = toks[2]
        counters: dict[str, int] = {}
        for k in range(0, len(items) - 1, 2):
            key, val = items[k], items[k + 1]
            if isinstance(key, str) and isinstance(val, str) and val.isdigit():
                counters[key.upper()] = int(val)
        out[_text(toks[1])] = counters
    return out


def parse_list(lines: Sequence[Line]) -> list[MailboxInfo]:
    """LIST responses (with STATUS counters merged in when the server sent them)."""
    status = parse_status(lines)
    out: list[MailboxInfo] = []
    for record in split_records(lines):
        if not record[0][:5].upper().startswith(b"LIST "):
            continue
        toks = tokenize(record)
        if len(toks) < 4 or not isinstance(toks[1], list):
            continue
        attrs = frozenset(_text(a).lower() for a in toks[1] if isinstance(a, str))
        delim = _text(toks[2]) if toks[2] is not None else None
        raw = _text(toks[3])
        counters = status.get(raw, {})
        out.append(
            MailboxInfo(
                raw,
                delim or None,
                attrs,
                counters.get("MESSAGES"),
                counters.get("UNSEEN"),
                counters,
            )
        )
    return out


def parse_namespace(lines: Sequence[Line]) -> tuple[str, str | None] | None:
    """The first personal namespace of a NAMESPACE response (RFC 2342 §5) as
    (prefix, hierarchy delimiter), the prefix decoded like a folder name: Dovecot
    ``("", ".")``, Cyrus with its default ``altnamespace: no`` ``("INBOX.", ".")``. None
    when the response is missing or lists no personal namespace (NIL)."""
    for record in split_records(lines):
        if not record[0][:10].upper().startswith(b"NAMESPACE "):
            continue
        toks = tokenize(record)
        personal = toks[1] if len(toks) > 1 else None
        if not isinstance(personal, list) or not personal or not isinstance(personal[0], list):
            return None
        first = personal[0]
        if not first or first[0] is None or isinstance(first[0], list):
            return None
        delim = first[1] if len(first) > 1 and not isinstance(first[1], list) else None
        return mailbox_from_wire(_text(first[0])), (_text(delim) if delim else None)
    return None


@dataclass(frozen=True)
class SearchResult:
    """UIDs (or numbers) found by SEARCH, as ranges, highest last; the ESEARCH COUNT; the
    highest one found (ESEARCH MAX, else from the ranges; None when nothing matched)."""

    ranges: list[tuple[int, int]]
    count: int
    maximum: int | None = None

    def highest(self, limit: int, below: int | None = None) -> list[int]:
        """Up to ``limit`` UIDs (only those under ``below``, if given), highest first;
        cost grows with ``limit`` only."""
        out: list[int] = []
        for lo, hi in reversed(self.ranges):
            uid = hi if below is None else min(hi, below - 1)
            while uid >= lo and len(out) < limit:
                out.append(uid)
                uid -= 1
            if len(out) >= limit:
                break
        return out


def parse_search(lines: Sequence[Line]) -> SearchResult:
    """``SEARCH 1 2 3`` or ``ESEARCH (TAG "x") UID ALL 1:3 COUNT 3 MAX 3`` responses."""
    uids: list[int] = []
    ranges: list[tuple[int, int]] = []
    count: int | None = None
    maximum: int | None = None
    for record in split_records(lines):
        head = bytes(record[0])
        upper = head[:8].upper()
        if upper.startswith(b"SEARCH"):
            for word in head[6:].split():
                if word.isdigit():
                    uids.append(int(word))
        elif upper.startswith(b"ESEARCH"):
            toks = tokenize(record)
            k = 1
            while k < len(toks):
                tok = toks[k]
                key = tok.upper() if isinstance(tok, str) else ""
                val = toks[k + 1] if k + 1 < len(toks) else None
                if key == "ALL" and isinstance(val, str):
                    ranges.extend(parse_sequence_set(val))
                    k += 2
                elif key == "COUNT" and isinstance(val, str) and val.isdigit():
                    count = int(val)
                    k += 2
                elif key == "MAX" and isinstance(val, str) and val.isdigit():
                    maximum = int(val)
                    k += 2
                elif key in ("MIN", "MODSEQ"):
                    k += 2
                else:
                    k += 1
    if uids:
        uids.sort()
        for uid in uids:
            if ranges and ranges[-1][1] + 1 == uid:
                ranges[-1] = (ranges[-1][0], uid)
            elif not ranges or ranges[-1][1] < uid:
                ranges.append((uid, uid))
    else:
        ranges.sort()
    if count is None:
        count = sum(hi - lo + 1 for lo, hi in ranges)
    if maximum is None and ranges:
        maximum = ranges[-1][1]
    return SearchResult(ranges, count, maximum)
