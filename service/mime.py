"""MIME for the gateway: drafts built into RFC 5322 bytes, raw sends prepared, messages parsed."""

from __future__ import annotations

import base64
import binascii
import io
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.generator import BytesGenerator
from email.header import Header, decode_header, make_header
from email.headerregistry import Address as StdAddress
from email.headerregistry import (
    AddressHeader,
    HeaderRegistry,
    ParameterizedMIMEHeader,
    UnstructuredHeader,
)
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import format_datetime, getaddresses, make_msgid, parsedate_to_datetime
from typing import Any, Literal

from service.errors import ValidationFailed
from service.models.common import Address
from service.models.message import AddressOut, AttachmentInfo, ParsedMessage
from service.models.send import Draft

__all__ = [
    "OutgoingAttachment",
    "attachments_from_json",
    "build_message",
    "envelope",
    "find_attachment",
    "parse_message",
    "prepare_raw",
    "sent_copy",
    "serialize",
    "summary_fields",
]


class _BuildPolicy(EmailPolicy):
    """The policy for building: CRLF, and bodies in 7-bit transfer encodings (quoted-printable
    or base64) so that any SMTP server takes them, with or without 8BITMIME.

    Non-ASCII unstructured headers (Subject, extra headers) are encoded by the legacy
    encoder: Python 3.11's folder can turn the space between two encoded words into folding
    white space, which decoders drop (RFC 2047 section 6.2), gluing two words together.
    """

    def fold(self, name: str, value: Any) -> str:
        if isinstance(value, UnstructuredHeader) and not str(value).isascii():
            encoded = Header(str(value), "utf-8", header_name=name).encode(linesep=self.linesep)
            return f"{name}: {encoded}{self.linesep}"
        return str(super().fold(name, value))

    def fold_binary(self, name: str, value: Any) -> bytes:
        if isinstance(value, UnstructuredHeader) and not str(value).isascii():
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


_BUILD = _BuildPolicy(linesep="\r\n", cte_type="7bit")
# Reading: the standard policy; regenerating a message/* part keeps its headers as received.
_READ = policy.default
_REGEN = policy.default.clone(linesep="\r\n", refold_source="none", max_line_length=0)
_UNSTRUCTURED = HeaderRegistry(use_default_map=False)  # decodes encoded words, nothing else

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")  # a header field's first line: ftext name, colon
_LINE_END = re.compile(rb"\r\n|\r|\n")
_ESCAPED = re.compile("[\udc80-\udcff]+")  # raw 8-bit bytes smuggled through surrogateescape
_SURROGATE = re.compile("[\ud800-\udfff]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_MSGID = re.compile(r"<[^<>]*>")
_EW = r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?="
_BETWEEN_EWS = re.compile(rf"(?<=\?=)\s+(?={_EW})")  # ignored white space (RFC 2047 6.2)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ATOM_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
)
_MAX_DEPTH = 40  # deeper multipart nesting is listed as one leaf, not walked


@dataclass
class OutgoingAttachment:
    """An attachment to send, decoded (from JSON base64 or a multipart/form-data file)."""

    filename: str | None
    content_type: str
    data: bytes
    content_id: str | None = None
    inline: bool = False


# ---------------------------------------------------------------- building


def attachments_from_json(draft: Draft) -> list[OutgoingAttachment]:
    """Decode the draft's base64 attachments (whitespace is ignored, the alphabet is strict)."""
    out = []
    for i, att in enumerate(draft.attachments):
        try:
            text = re.sub(r"\s+", "", att.content_base64)
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationFailed(f"attachments[{i}].content_base64 is not valid base64") from exc
        out.append(
            OutgoingAttachment(att.filename, att.content_type, data, att.content_id, att.inline)
        )
    return out


def build_message(
    draft: Draft,
    attachments: list[OutgoingAttachment],
    *,
    default_from: str,
    domain: str | None = None,
) -> EmailMessage:
    """Compose the message to send. It has **no Bcc header**: take the Bcc recipients from
    :func:`envelope` (and :func:`sent_copy` for the copy kept in Sent).

    ``default_from`` (the authenticated user) is used when the draft has no ``from``;
    ``domain`` names the Message-ID's right-hand side (default: the From domain).
    Address domains are sent in IDNA form; a non-ASCII local part (SMTPUTF8) is refused.
    Raises ValidationFailed for anything that cannot become a safe header.
    """
    sender = draft.from_ or _default_sender(default_from)
    msg = EmailMessage(policy=_BUILD)
    author = _std_address(sender, "from")
    _set(msg, "From", author)
    for name, addresses in (("To", draft.to), ("Cc", draft.cc), ("Reply-To", draft.reply_to)):
        if addresses:
            _set(msg, name, [_std_address(a, name.lower()) for a in addresses])
    if draft.subject is not None:
        _set(msg, "Subject", _one_line(draft.subject, "subject"))
    _set(msg, "Date", format_datetime(datetime.now(UTC)))
    msgid_domain = _smtp_domain(domain, "domain") if domain else author.domain
    _set(msg, "Message-ID", make_msgid(domain=msgid_domain))
    if draft.in_reply_to:
        _set(msg, "In-Reply-To", _bracketed(draft.in_reply_to, "in_reply_to"))
    if draft.references:
        _set(msg, "References", " ".join(_bracketed(r, "references") for r in draft.references))
    for name, value in draft.headers.items():
        _set(msg, name, _one_line(value, f"header {name}"))
    _set(msg, "MIME-Version", "1.0")
    body = _body(draft, attachments)
    for name, value in body.items():
        msg[name] = value
    msg.set_payload(body.get_payload())
    for part in msg.walk():
        for name, value in part.items():
            _check_fold(name, value)
    return msg


def envelope(draft: Draft, msg: EmailMessage) -> tuple[str, list[str]]:
    """SMTP envelope of a built message: MAIL FROM (the From address) and every
    recipient (to + cc + bcc), de-duplicated case-insensitively, first spelling kept."""
    author = msg["From"]
    if not isinstance(author, AddressHeader) or not author.addresses:
        raise ValidationFailed("the message has no From address")
    mail_from = _smtp_address(author.addresses[0].addr_spec, "from")
    rcpts = [_smtp_address(a.address, "recipient") for a in [*draft.to, *draft.cc, *draft.bcc]]
    return mail_from, _dedupe(rcpts)


def serialize(msg: EmailMessage) -> bytes:
    """The message as bytes for SMTP DATA or IMAP APPEND: CRLF line ends throughout."""
    buf = io.BytesIO()
    try:
        BytesGenerator(buf, policy=msg.policy.clone(linesep="\r\n")).flatten(msg, linesep="\r\n")
    except Exception as exc:
        raise ValidationFailed("the message cannot be serialised") from exc
    data = buf.getvalue()
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data
    if b"\r" in head.replace(b"\r\n", b"") or b"\n" in head.replace(b"\r\n", b""):
        raise ValidationFailed("a header would contain a bare CR or LF")
    _header_fields(head)
    return data


def sent_copy(data: bytes, draft: Draft) -> bytes:
    """The serialized message with the draft's Bcc header added, for the Sent folder."""
    if not draft.bcc:
        return data
    header = _BUILD.header_factory("Bcc", [_std_address(a, "bcc") for a in draft.bcc])
    line = _check_fold("Bcc", header).encode("ascii")
    end = data.find(b"\r\n\r\n")
    return data[: end + 2] + line + data[end + 2 :] if end >= 0 else line + data


def _default_sender(default_from: str) -> Address:
    try:
        return Address.model_validate(default_from)
    except ValueError as exc:
        raise ValidationFailed(
            'give "from": the authenticated user name is not an email address'
        ) from exc


def _set(msg: EmailMessage, name: str, value: object) -> None:
    try:
        msg[name] = value
    except Exception as exc:
        raise ValidationFailed(f"{name}: not usable as a header value") from exc


def _check_fold(name: str, value: Any) -> str:
    """Fold one header as it will be sent; refuse it unless the result is clean ASCII lines."""
    try:
        folded = str(_BUILD.fold(name, value))
    except Exception as exc:
        raise ValidationFailed(f"{name}: cannot be encoded as a header") from exc
    lines = folded.split("\r\n")
    if (
        lines[-1] != ""
        or not folded.isascii()
        or any(len(line) > 998 or "\r" in line or "\n" in line for line in lines)
        or any(line[:1] not in (" ", "\t") for line in lines[1:-1])
    ):
        raise ValidationFailed(f"{name}: cannot be encoded as a safe header")
    return folded


def _one_line(value: str, what: str) -> str:
    """Refuse control characters (tab excepted) and line or paragraph separators."""
    for ch in value:
        if ch != "\t" and (unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029"):
            raise ValidationFailed(f"{what} must not contain control or line-break characters")
    return value


def _bracketed(value: str, what: str) -> str:
    core = value.strip().removeprefix("<").removesuffix(">")
    if not core or not core.isascii() or any(c in core for c in "<> \t") or not core.isprintable():
        raise ValidationFailed(f"{what}: {value[:100]!r} is not a message id")
    return f"<{core}>"


def _smtp_domain(domain: str, what: str) -> str:
    try:
        ascii_domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValidationFailed(f"{what}: invalid domain {domain[:100]!r}") from exc
    if not (_DOMAIN.fullmatch(ascii_domain) or re.fullmatch(r"\[[!-Z^-~]+\]", ascii_domain)):
        raise ValidationFailed(f"{what}: invalid domain {domain[:100]!r}")
    return ascii_domain


def _split_address(address: str, what: str) -> tuple[str, str]:
    """(unquoted local part, ASCII domain) of an SMTP-usable address, or ValidationFailed."""
    local, at, domain = address.strip().rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        unquoted = re.sub(r"\\(.)", r"\1", local[1:-1])
        ok = unquoted.isascii() and unquoted.isprintable()
    else:
        unquoted, ok = local, bool(_ATOM_LOCAL.fullmatch(local))
    if not at or not ok or not local:
        raise ValidationFailed(
            f"{what}: {address[:100]!r} is not an ASCII email address (SMTPUTF8 is not supported)"
        )
    return unquoted, _smtp_domain(domain, what)


def _smtp_address(address: str, what: str) -> str:
    local, domain = _split_address(address, what)
    return StdAddress(username=local, domain=domain).addr_spec


def _std_address(address: Address, what: str) -> StdAddress:
    local, domain = _split_address(address.address, what)
    name = _one_line(address.name or "", f"{what} name")
    try:
        return StdAddress(display_name=name, username=local, domain=domain)
    except ValueError as exc:
        raise ValidationFailed(f"{what}: not a usable address") from exc


def _dedupe(addresses: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for addr in addresses:
        if addr.lower() not in seen:
            seen.add(addr.lower())
            out.append(addr)
    return out


def _body(draft: Draft, attachments: list[OutgoingAttachment]) -> MIMEPart:
    """text/plain, text/html or multipart/alternative; inline images with a content id go
    into multipart/related around the HTML; anything else makes it multipart/mixed."""
    related_ix = {
        i for i, a in enumerate(attachments) if a.inline and a.content_id and draft.html is not None
    }
    html = None if draft.html is None else _text_part(draft.html, "html")
    if html is not None and related_ix:
        inline = [_attachment_part(attachments[i]) for i in sorted(related_ix)]
        html = _multipart("related", [html, *inline], type_="text/html")
    text = None if draft.text is None else _text_part(draft.text, "plain")
    if text is not None and html is not None:
        main: MIMEPart | None = _multipart("alternative", [text, html])
    else:
        main = text if text is not None else html
    others = [_attachment_part(a) for i, a in enumerate(attachments) if i not in related_ix]
    if not others:
        return main if main is not None else _text_part("", "plain")
    return _multipart("mixed", ([] if main is None else [main]) + others)


def _text_part(content: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=_BUILD)
    try:
        part.set_content(content, subtype=subtype, charset="utf-8")
    except UnicodeError as exc:
        raise ValidationFailed(f"the {subtype} body is not valid Unicode") from exc
    return part


def _multipart(subtype: str, parts: list[MIMEPart], type_: str | None = None) -> MIMEPart:
    container = MIMEPart(policy=_BUILD)
    container["Content-Type"] = f"multipart/{subtype}"
    if type_:
        container.set_param("type", type_)
    for part in parts:
        container.attach(part)
    return container


def _attachment_part(att: OutgoingAttachment) -> MIMEPart:
    maintype, subtype, params = _content_type_parts(att.content_type)
    data, cte = att.data, "base64"
    if maintype == "message":  # RFC 2046: message/* allows 7bit or 8bit only
        data = _crlf(data)
        if any(len(line) > 998 for line in data.split(b"\r\n")):
            raise ValidationFailed("a message/* attachment has lines over 998 bytes")
        cte = "7bit" if data.isascii() else "8bit"
    cid = None
    if att.content_id:
        cid = _bracketed(_one_line(att.content_id, "content_id"), "content_id")
    filename = _one_line(att.filename, "filename") if att.filename else None
    part = MIMEPart(policy=_BUILD)
    try:
        part.set_content(
            data,
            maintype,
            subtype,
            cte=cte,
            disposition="inline" if att.inline else "attachment",
            filename=filename,
            cid=cid,
            params=params,
        )
    except Exception as exc:
        raise ValidationFailed(f"attachment {filename or ''!r}: cannot be encoded") from exc
    return part


def _content_type_parts(value: str) -> tuple[str, str, dict[str, str]]:
    main, _, sub = _one_line(value, "content_type").partition(";")[0].strip().partition("/")
    if not _TOKEN.fullmatch(main) or not _TOKEN.fullmatch(sub) or main.lower() == "multipart":
        raise ValidationFailed(f"content_type {value[:100]!r} is not a non-multipart type/subtype")
    params: dict[str, str] = {}
    try:
        header = _BUILD.header_factory("Content-Type", value)
        if isinstance(header, ParameterizedMIMEHeader):
            params = {k: str(v) for k, v in header.params.items() if k.lower() != "boundary"}
    except Exception as exc:
        raise ValidationFailed(f"content_type {value[:100]!r} has unreadable parameters") from exc
    return main.lower(), sub.lower(), params


# ---------------------------------------------------------------- raw sends


def prepare_raw(
    raw: bytes, *, mail_from: str | None, rcpt_to: list[str]
) -> tuple[bytes, str, list[str], str | None]:
    """Make raw RFC 5322 bytes ready for SMTP DATA: ``(data, mail_from, rcpt_to, message_id)``.

    - Line ends are normalised to CRLF (a bare LF or bare CR becomes CRLF, as SMTP requires
      and as the SMTP client would do anyway); every other byte is kept, except that every
      ``Bcc`` and ``Resent-Bcc`` field (with its continuation lines) is cut out of the header
      section. The caller keeps ``raw`` itself for the Sent copy, Bcc included.
    - Envelope, unless given: MAIL FROM is Sender, else From; recipients are To, Cc and Bcc,
      de-duplicated. A resent message (its topmost block of Resent-* fields has Resent-From)
      goes to that block's Resent-To/Cc/Bcc instead, from its Resent-Sender, else Resent-From.
    - ``message_id`` is the Message-ID field's id with its angle brackets, or None.

    Raises ValidationFailed: no blank line after the header section, a header line that is
    neither a field nor a continuation, no sender or no recipient, an unusable address.
    """
    data = _crlf(raw)
    end = data.find(b"\r\n\r\n")
    if data.startswith(b"\r\n") or end < 0:
        raise ValidationFailed("the message needs header fields, then an empty line, then a body")
    fields = _header_fields(data[: end + 2])
    kept = b"".join(f for name, f in fields if name not in ("bcc", "resent-bcc"))
    values = [(name, f.split(b":", 1)[1].decode("ascii", "surrogateescape")) for name, f in fields]

    block = _resent_block(values)
    if any(n == "resent-from" for n, _ in block):
        header_from = _field_addresses(block, "resent-sender") or _field_addresses(
            block, "resent-from"
        )
        header_rcpts = _field_addresses(block, "resent-to", "resent-cc", "resent-bcc")
    else:
        header_from = _field_addresses(values, "sender") or _field_addresses(values, "from")
        header_rcpts = _field_addresses(values, "to", "cc", "bcc")
    if mail_from is None and not header_from:
        raise ValidationFailed("no sender: give mail_from or a From header")
    sender = _smtp_address(mail_from if mail_from is not None else header_from[0], "mail_from")
    rcpts = _dedupe(_smtp_address(a, "rcpt_to") for a in (rcpt_to or header_rcpts))
    if not rcpts:
        raise ValidationFailed("no recipients: give rcpt_to or To, Cc or Bcc headers")
    ids = [v for n, v in values if n == "message-id"]
    return kept + data[end + 2 :], sender, rcpts, _message_id(ids[0]) if ids else None


def _crlf(data: bytes) -> bytes:
    """Bare LF and bare CR become CRLF; the counts spare the rewrite when there is none."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs and data.count(b"\r") == pairs:
        return data
    return _LINE_END.sub(b"\r\n", data)


def _header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """Split a CRLF header section into (lower-case name, the field's exact bytes)."""
    fields: list[tuple[str, bytes]] = []
    for number, line in enumerate(head.split(b"\r\n")[:-1], 1):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line + b"\r\n")
        elif match := _FIELD.match(line):
            fields.append((match.group(1).decode("ascii").lower(), line + b"\r\n"))
        else:
            raise ValidationFailed(f"header line {number} is neither a field nor a continuation")
    return fields


def _field_addresses(values: list[tuple[str, str]], *names: str) -> list[str]:
    return [a.address for n, v in values if n in names for a in _parse_addresses(n, v)]


def _resent_block(values: list[tuple[str, str]]) -> list[tuple[str, str]]:
    start = next((i for i, (n, _) in enumerate(values) if n.startswith("resent-")), len(values))
    block = []
    for name, value in values[start:]:
        if not name.startswith("resent-"):
            break
        block.append((name, value))
    return block


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


# ---------------------------------------------------------------- parsing


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


def summary_fields(header_bytes: bytes) -> dict[str, object]:
    """Listing fields from a header section (POP3 ``TOP n 0``, IMAP ``BODY.PEEK[HEADER]``):
    ``message_id, subject, from, to, cc, date, has_attachments, content_type``. Never raises.

    ``has_attachments`` is a guess from the top-level headers alone: multipart/mixed, a
    top-level non-text, non-multipart type, or ``Content-Disposition: attachment``.
    """
    try:
        return _fast_summary_fields(header_bytes)
    except Exception:  # noqa: S110 - the full parser below handles what this cannot
        pass
    try:
        msg, _ = _parse(header_bytes, headersonly=True)
        ctype = _content_type(msg)
        subject = _first(msg, "subject")
        return {
            "message_id": _message_id(_first(msg, "message-id")),
            "subject": None if subject is None else _decode_header("Subject", subject),
            "from": _plain(_addresses_of(msg, "from")),
            "to": _plain(_addresses_of(msg, "to")),
            "cc": _plain(_addresses_of(msg, "cc")),
            "date": _iso_date(_first(msg, "date")),
            "has_attachments": ctype == "multipart/mixed"
            or ctype.split("/")[0] not in ("text", "multipart")
            or _disposition(msg) == "attachment",
            "content_type": ctype,
        }
    except Exception:
        empty: dict[str, object] = {"from": [], "to": [], "cc": [], "has_attachments": False}
        return {
            **dict.fromkeys(("message_id", "subject", "date")),
            **empty,
            "content_type": "text/plain",
        }


_SUMMARY_NAMES = {"message-id", "subject", "from", "to", "cc", "date", "content-type",
                  "content-disposition"}  # fmt: skip


def _header_map(header_bytes: bytes) -> dict[str, list[str]]:
    """The wanted fields of a header block, unfolded (values as str, raw 8-bit kept)."""
    text = header_bytes.decode("utf-8", "surrogateescape")
    end = text.find("\r\n\r\n")
    if end >= 0:
        text = text[:end]
    fields: dict[str, list[str]] = {}
    name: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t"):
            if name is not None:
                fields[name][-1] += " " + line.strip()
            continue
        field, sep, value = line.partition(":")
        key = field.strip().lower()
        if not sep or not key or key not in _SUMMARY_NAMES:
            name = None
            continue
        name = key
        fields.setdefault(key, []).append(value.strip())
    return fields


def _plain(addresses: list[Address]) -> list[AddressOut]:
    return [{"name": a.name, "address": a.address} for a in addresses]


def _fast_words(value: str) -> str:
    """Encoded words decoded with the legacy decoder: fast, and exact for listings."""
    if "=?" not in value:
        return _clean(value)
    return _clean(str(make_header(decode_header(value))))


_NAME_ADDR = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^<>"]*?))\s*<([^<>\s]+@[^<>\s]+)>\s*')
_BARE_ADDR = re.compile(r"\s*<?([^<>\s\"(),;:]+@[^<>\s\"(),;:]+)>?\s*")


def _split_list(value: str) -> list[str] | None:
    """Split an address list on commas outside quotes; None when it has groups or
    comments (the full parser handles those)."""
    if '"' not in value:
        if any(c in value for c in "():;"):
            return None
        return [i for i in value.split(",") if i.strip()]
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch in "():;":
            return None
        elif not quoted and ch == ",":
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted:
        return None
    items.append("".join(current))
    return [i for i in items if i.strip()]


def _simple_addresses(value: str) -> list[tuple[str, str]] | None:
    items = _split_list(value)
    if items is None:
        return None
    out = []
    for item in items:
        if m := _NAME_ADDR.fullmatch(item):
            name = m.group(1) if m.group(1) is not None else m.group(2)
            out.append((re.sub(r"\\(.)", r"\1", name) if m.group(1) else name, m.group(3)))
        elif m := _BARE_ADDR.fullmatch(item):
            out.append(("", m.group(1)))
        else:
            return None
    return out


def _fast_addresses(values: list[str]) -> list[AddressOut]:
    out: list[AddressOut] = []
    for value in values:
        pairs = _simple_addresses(value)
        if pairs is None:
            pairs = getaddresses([value])
        for name, addr in pairs:
            addr = addr.strip()
            if addr and addr != "<>":
                out.append({"name": _fast_words(name).strip() or None, "address": addr})
    return out


def _fast_summary_fields(header_bytes: bytes) -> dict[str, object]:
    """summary_fields without the policy parser (about 8x faster: listings are hot).

    Any value it cannot read plainly (8-bit bytes, odd encoded words) raises, and
    the caller falls back to the full parser.
    """
    fields = _header_map(header_bytes)
    if any(_SURROGATE.search(v) for vs in fields.values() for v in vs):
        raise ValueError("raw 8-bit header bytes")

    def first(name: str) -> str | None:
        values = fields.get(name)
        return values[0] if values else None

    ctype = (first("content-type") or "text/plain").split(";")[0].strip().lower()
    if "/" not in ctype:
        ctype = "text/plain"
    disposition = (first("content-disposition") or "").split(";")[0].strip().lower()
    msgid = first("message-id")
    match = _MSGID.search(msgid) if msgid else None
    subject = first("subject")
    date_raw = first("date")
    date_iso = None
    if date_raw:
        try:
            when = parsedate_to_datetime(date_raw)
            date_iso = (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
        except (TypeError, ValueError, IndexError):
            date_iso = None
    return {
        "message_id": match.group() if match else (msgid.split()[0] if msgid else None),
        "subject": None if subject is None else _fast_words(subject).strip(),
        "from": _fast_addresses(fields.get("from", [])),
        "to": _fast_addresses(fields.get("to", [])),
        "cc": _fast_addresses(fields.get("cc", [])),
        "date": date_iso,
        "has_attachments": ctype == "multipart/mixed"
        or ctype.split("/")[0] not in ("text", "multipart")
        or disposition == "attachment",
        "content_type": ctype,
    }


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
