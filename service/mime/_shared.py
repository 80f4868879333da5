"""What the MIME modules share: header decoding that never raises, and its patterns."""

from __future__ import annotations

import re
from datetime import UTC
from email import policy
from email.headerregistry import (
    AddressHeader,
    HeaderRegistry,
)
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from service.models.common import Address

# Reading: the standard policy; regenerating a message/* part keeps its headers as received.
_READ = policy.default
_UNSTRUCTURED = HeaderRegistry(use_default_map=False)  # decodes encoded words, nothing else

_ESCAPED = re.compile("[\udc80-\udcff]+")  # raw 8-bit bytes smuggled through surrogateescape
_SURROGATE = re.compile("[\ud800-\udfff]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_MSGID = re.compile(r"<[^<>]*>")
_EW = r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?="
_BETWEEN_EWS = re.compile(rf"(?<=\?=)\s+(?={_EW})")  # ignored white space (RFC 2047 6.2)
# ---------------------------------------------------------------- header decoding


def _clean(text: str) -> str:
    """Text fit for JSON: escaped raw bytes decoded (UTF-8, else windows-1252), any
    other lone surrogate replaced."""
    if not _SURROGATE.search(text):
        return text

    def run(match: re.Match[str]) -> str:
        data = match.group().encode("utf-8", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", "replace")

    return _SURROGATE.sub("\ufffd", _ESCAPED.sub(run, text))


def _unfold(raw: str) -> str:
    return _FOLD.sub("", raw).replace("\r", " ").replace("\n", " ")


def _decode_header(name: str, raw: str, defects: list[str] | None = None) -> str:
    """A header value for display: unfolded, raw 8-bit decoded, encoded words decoded.
    The one decoder for every header; it never raises."""
    value = _unfold(raw)
    if defects is not None and _ESCAPED.search(value):
        defects.append(f"UndecodableBytesDefect (header {name})")
    value = _clean(value)
    try:
        header = _UNSTRUCTURED(name, value)
        text = str(header)
        if defects is not None:
            defects.extend(f"{type(d).__name__} (header {name})" for d in header.defects)
    except Exception:
        text = value
    return _clean(text).strip()


def _parse_addresses(name: str, raw: str) -> list[Address]:
    """Addresses of one address header (groups flattened); never raises."""
    # The 3.11 address parser keeps the space between adjacent encoded words: drop it first.
    value = _BETWEEN_EWS.sub("", _clean(_unfold(raw)))
    pairs: list[tuple[str, str]]
    try:
        header = _READ.header_factory(name, value)
        if not isinstance(header, AddressHeader):
            raise TypeError(name)
        pairs = [(a.display_name, a.addr_spec) for a in header.addresses]
    except Exception:
        pairs = getaddresses([_decode_header(name, raw)])
    return [
        Address.model_construct(name=_clean(n).strip() or None, address=_clean(a).strip())
        for n, a in pairs
        if a and a.strip() not in ("", "<>")
    ]


def _raw_headers(part: Message) -> list[tuple[str, str]]:
    try:
        return [(str(n), str(v)) for n, v in part.raw_items()]
    except Exception:
        return []


def _first(part: Message, name: str) -> str | None:
    return next((v for n, v in _raw_headers(part) if n.lower() == name), None)


def _addresses_of(part: Message, name: str) -> list[Address]:
    found = [_parse_addresses(n, v) for n, v in _raw_headers(part) if n.lower() == name]
    return [a for group in found for a in group]


def _message_id(raw: str | None) -> str | None:
    text = _decode_header("Message-ID", raw) if raw is not None else ""
    match = _MSGID.search(text)
    return match.group() if match else (text.split()[0] if text.split() else None)


def _iso_date(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        when = parsedate_to_datetime(_decode_header("Date", raw))
    except Exception:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"
