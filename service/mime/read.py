"""Messages parsed to the fetch shape, attachments found by IMAP section number; never raises."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import (
    ParameterizedMIMEHeader,
)
from email.message import Message
from email.parser import BytesParser
from typing import Any, Literal

from service.mime._shared import (
    _MSGID,
    _READ,
    _addresses_of,
    _clean,
    _content_type,
    _decode_header,
    _first,
    _iso_date,
    _message_id,
    _raw_headers,
    _unfold,
)
from service.models.common import Address
from service.models.message import AttachmentInfo, ParsedMessage

# ---------------------------------------------------------------- parsing


_REGEN = policy.default.clone(linesep="\r\n", refold_source="none", max_line_length=0)
_MAX_DEPTH = 40  # deeper multipart nesting is listed as one leaf, not walked


@dataclass
class _Leaf:
    section: str  # IMAP (RFC 3501) section number
    part: Message
    content_type: str
    disposition: Literal["attachment", "inline"] | None
    filename: str | None
    content_id: str | None

    @property
    def body_candidate(self) -> bool:
        return (
            self.content_type in ("text/plain", "text/html")
            and self.filename is None
            and self.disposition != "attachment"
            and not (self.disposition == "inline" and self.content_id)
        )

    def info(self, size: int) -> AttachmentInfo:
        return AttachmentInfo(
            id=self.section,
            filename=self.filename,
            content_type=self.content_type,
            size=size,
            disposition=self.disposition,
            content_id=self.content_id,
        )


def _parse(raw: bytes, headersonly: bool = False) -> tuple[Message, list[str]]:
    try:
        return BytesParser(policy=_READ).parsebytes(raw, headersonly), []
    except Exception as exc:  # fall back to the lenient legacy policy
        defect = f"ParserError ({type(exc).__name__})"
        try:
            return BytesParser(policy=policy.compat32).parsebytes(raw, headersonly), [defect]
        except Exception:
            return Message(), [defect]


def _is_container(part: Message) -> bool:
    try:
        return part.is_multipart() and part.get_content_maintype() == "multipart"
    except Exception:
        return False


def _walk(part: Message, section: str = "", depth: int = 0) -> Iterator[tuple[str, Message, bool]]:
    """(section, part, is_leaf) for every part in IMAP order, containers included; message/*
    parts are leaves (not descended). A non-multipart message's body is section "1"."""
    leaf = not _is_container(part) or depth >= _MAX_DEPTH
    yield section, part, leaf
    payload = None if leaf else part.get_payload()
    for i, child in enumerate(payload if isinstance(payload, list) else [], 1):
        if isinstance(child, Message):
            yield from _walk(child, f"{section}.{i}" if section else str(i), depth + 1)


def _leaves(msg: Message) -> list[_Leaf]:
    leaves = []
    for section, part, leaf in _walk(msg):
        if not leaf:
            continue
        ctype = _content_type(part)
        if ctype.startswith("multipart/"):  # unparsable multipart (e.g. no boundary): its text
            ctype = "text/plain"
        content_id = _decode_header("Content-ID", _first(part, "content-id") or "")
        content_id = content_id.removeprefix("<").removesuffix(">").strip()
        leaves.append(
            _Leaf(
                section=section or "1",
                part=part,
                content_type=ctype,
                disposition=_disposition(part),
                filename=_filename(part),
                content_id=content_id or None,
            )
        )
    return leaves


def _disposition(part: Message) -> Literal["attachment", "inline"] | None:
    value = (_first(part, "content-disposition") or "").partition(";")[0].strip().lower()
    return "attachment" if value == "attachment" else "inline" if value == "inline" else None


def _filename(part: Message) -> str | None:
    value: Any = None
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        raw = _first(part, header)
        if raw is None:
            continue
        try:
            parsed = _READ.header_factory(header, _clean(_unfold(raw)))
            if isinstance(parsed, ParameterizedMIMEHeader):
                value = parsed.params.get(param)
        except Exception:
            try:
                value = part.get_filename()
            except Exception:
                value = None
        if value:
            break
    if not isinstance(value, str) or not value.strip():
        return None
    return _decode_header("filename", value) if "=?" in value else _clean(value).strip()


def _leaf_bytes(part: Message) -> bytes:
    """The decoded content of a leaf part; a message/* part is regenerated from its tree."""
    try:
        if isinstance(part.get_payload(), list):
            buf = io.BytesIO()
            generator: BytesGenerator[Any] = BytesGenerator(buf, policy=_REGEN)
            generator.flatten(part, linesep="\r\n")
            data = buf.getvalue()
            return data[2:] if data.startswith(b"\r\n") else data.partition(b"\r\n\r\n")[2]
        decoded = part.get_payload(decode=True)
        return decoded if isinstance(decoded, bytes) else b""
    except Exception:
        return b""


def _leaf_text(leaf: _Leaf, defects: list[str]) -> str:
    data = _leaf_bytes(leaf.part)
    try:
        charset = leaf.part.get_content_charset()
    except Exception:
        charset = None
    text = None
    if charset and charset not in ("us-ascii", "ascii"):
        try:
            text = data.decode(charset, "replace")
        except LookupError:
            defects.append(f"CharsetError (part {leaf.section}: unknown charset {charset!r})")
            text = data.decode("utf-8", "replace")
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", "replace")
    return _clean(text).replace("\r\n", "\n")


def _attachments(leaves: list[_Leaf]) -> tuple[_Leaf | None, _Leaf | None, list[_Leaf]]:
    """(text body, html body, attachments). Bodies are the first text/plain and text/html
    parts that are not attachments; every other leaf, a second text body too, is listed."""
    text = next((x for x in leaves if x.body_candidate and x.content_type == "text/plain"), None)
    html = next((x for x in leaves if x.body_candidate and x.content_type == "text/html"), None)
    return text, html, [x for x in leaves if x is not text and x is not html]


def _defects(msg: Message) -> list[str]:
    found: list[str] = []
    for section, part, leaf in _walk(msg):
        where = f" (part {section})" if section else ""
        try:
            inner = list(part.walk()) if leaf else [part]
            found.extend(f"{type(d).__name__}{where}" for sub in inner for d in sub.defects)
        except Exception:
            found.append(f"ParserError{where}")
    return found


def parse_message(
    raw: bytes, *, id: str, folder: str, flags: list[str], size: int | None
) -> ParsedMessage:
    """Parse one message to the fetch shape; never raises, however broken the message.

    Attachment ids are IMAP section numbers (RFC 3501): "1" for the body of a non-multipart
    message, "2", "2.1"… inside multiparts; a message/rfc822 part is one attachment and is
    not descended into. ``content_id`` is given without its angle brackets (as in ``cid:``
    URLs). ``text``/``html`` use CRLF → LF. ``defects`` names each parser defect as its
    class name with where it was found.
    """
    base: dict[str, Any] = {"id": id, "folder": folder, "flags": flags, "size": size}
    try:
        msg, defects = _parse(raw)
        headers = [(n, _decode_header(n, v, defects)) for n, v in _raw_headers(msg)]
        leaves = _leaves(msg)
        text, html, attachments = _attachments(leaves)
        text_body = _leaf_text(text, defects) if text else None
        html_body = _leaf_text(html, defects) if html else None
        infos = [leaf.info(len(_leaf_bytes(leaf.part))) for leaf in attachments]
        refs_raw = _decode_header("References", _first(msg, "references") or "")
        in_reply_to = _message_id(_first(msg, "in-reply-to"))

        def addresses(name: str) -> list[Address]:
            return _checked(_addresses_of(msg, name), name, defects)

        senders = addresses("sender")
        subject = _first(msg, "subject")
        fields = {
            **base,
            "message_id": _message_id(_first(msg, "message-id")),
            "in_reply_to": in_reply_to,
            "references": _MSGID.findall(refs_raw) or refs_raw.split(),
            "subject": None if subject is None else _decode_header("Subject", subject),
            "from": addresses("from"),
            "sender": senders[0] if senders else None,
            "reply_to": addresses("reply-to"),
            "to": addresses("to"),
            "cc": addresses("cc"),
            "bcc": addresses("bcc"),
            "date": _iso_date(_first(msg, "date")),
            "headers": [{"name": _clean(n), "value": v} for n, v in headers],
            "text": text_body,
            "html": html_body,
            "attachments": infos,
            "defects": list(dict.fromkeys(defects + _defects(msg))),
        }
        return ParsedMessage.model_validate(fields)
    except Exception as exc:  # the last resort: a strange message is not a server error
        return ParsedMessage.model_validate(
            {**base, "defects": [f"ParserError ({type(exc).__name__})"]}
        )


def _checked(found: list[Address], header: str, defects: list[str]) -> list[Address]:
    """Addresses that hold up as addresses; each one that does not becomes a defect
    (one broken address must not cost the caller the rest of the message)."""
    out = []
    for addr in found:
        try:
            out.append(Address.model_validate({"name": addr.name, "address": addr.address}))
        except ValueError:
            defects.append(f"InvalidAddressDefect (header {header})")
    return out


def find_attachment(raw: bytes, attachment_id: str) -> tuple[AttachmentInfo, bytes] | None:
    """The attachment with this id (see :func:`parse_message`) and its decoded bytes,
    or None when there is no such part or it is a body part."""
    try:
        msg, _ = _parse(raw)
        _, _, attachments = _attachments(_leaves(msg))
    except Exception:
        return None
    for leaf in attachments:
        if leaf.section == attachment_id:
            data = _leaf_bytes(leaf.part)
            return leaf.info(len(data)), data
    return None


@dataclass(frozen=True)
class PartInfo:
    """What the MIME header of one part says about it."""

    content_type: str
    encoding: str | None
    filename: str | None
    disposition: Literal["attachment", "inline"] | None


def part_info(header: bytes) -> PartInfo | None:
    """Describe a leaf part from its MIME header alone; None for a multipart. Never raises."""
    try:
        part, _ = _parse(header if header.endswith(b"\r\n\r\n") else header + b"\r\n",
                         headersonly=True)  # fmt: skip
        ctype = _content_type(part)
        if ctype.startswith("multipart/"):
            return None
        encoding = part.get("Content-Transfer-Encoding")
        return PartInfo(
            content_type=ctype,
            encoding=str(encoding).strip().lower() if encoding else None,
            filename=_filename(part),
            disposition=_disposition(part),
        )
    except Exception:
        return PartInfo("application/octet-stream", None, None, None)
