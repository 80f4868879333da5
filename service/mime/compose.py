"""Drafts built into RFC 5322 bytes, and raw messages prepared for SMTP (Bcc removed)."""

from __future__ import annotations

import base64
import binascii
import io
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.header import Header
from email.headerregistry import Address as StdAddress
from email.headerregistry import (
    AddressHeader,
    ParameterizedMIMEHeader,
    UnstructuredHeader,
)
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid
from typing import Any

import idna

from service.errors import ValidationFailed
from service.mime import headers
from service.models.common import Address
from service.models.send import Draft

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")  # a header field's first line: ftext name, colon
_LINE_END = re.compile(rb"\r\n|\r|\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ATOM_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
)


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
    """The ASCII form of a domain for SMTP and headers. A non-ASCII domain is converted
    with IDNA 2008 and the UTS #46 mapping, non-transitional (RFC 5891, UTS #46 section 4),
    so ``ß`` and final ``ς`` stay themselves (``straße.test`` → ``xn--strae-oqa.test``,
    never IDNA 2003's ``strasse.test``, another domain); what IDNA 2008 does not allow
    raises ValidationFailed (422) rather than going to a different domain."""
    try:
        ascii_domain = (
            domain if domain.isascii()
            else idna.encode(domain, uts46=True, transitional=False).decode("ascii")
        )  # fmt: skip
    except (idna.IDNAError, UnicodeError) as exc:
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
    message_id = headers.message_id(ids[0].encode("ascii", "surrogateescape")) if ids else None
    return kept + data[end + 2 :], sender, rcpts, message_id


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
    raw = [v.encode("ascii", "surrogateescape") for n, v in values if n in names]
    return [a.address for a in headers.addresses(raw)]


def _resent_block(values: list[tuple[str, str]]) -> list[tuple[str, str]]:
    start = next((i for i, (n, _) in enumerate(values) if n.startswith("resent-")), len(values))
    block = []
    for name, value in values[start:]:
        if not name.startswith("resent-"):
            break
        block.append((name, value))
    return block
