"""Messages parsed to the fetch shape, and single parts cut out by IMAP section number;
never raises, however broken the message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from service.mime import headers
from service.mime.cut import PartCutter, is_leaf, leaf_section
from service.mime.params import media_field
from service.mime.stream import decode_part
from service.mime.structure import Limits, Part, scan
from service.models.message import AttachmentInfo, ParsedMessage

__all__ = [
    "PartInfo",
    "cut_info",
    "declared_charset",
    "find_attachment",
    "parse_message",
    "part_info",
]

_TEXT_BODIES = ("text/plain", "text/html")


@dataclass(frozen=True)
class PartInfo:
    """What one leaf part's MIME header says about it."""

    section: str
    content_type: str
    encoding: str | None
    filename: str | None
    disposition: Literal["attachment", "inline"] | None
    content_id: str | None

    @property
    def body_candidate(self) -> bool:
        """Could be the message's text or HTML body (not an attachment of any kind)."""
        return (
            self.content_type in _TEXT_BODIES
            and self.filename is None
            and self.disposition != "attachment"
            and not (self.disposition == "inline" and self.content_id)
        )

    def attachment(self, size: int) -> AttachmentInfo:
        return AttachmentInfo(
            id=self.section,
            filename=self.filename,
            content_type=self.content_type,
            size=size,
            disposition=self.disposition,
            content_id=self.content_id,
        )


def part_info(part: Part, *, assumed: str | None = None, defects: list[str] | None = None
              ) -> PartInfo:  # fmt: skip
    """Describe a leaf part from its header. A multipart that is one leaf keeps its
    type, except one without parts (no boundary found): that one is text, as IMAP
    servers show it. ``assumed``: the charset for raw 8-bit bytes in its header."""
    where = part.where()
    own = part.charset() or assumed
    ctype = part.content_type
    if ctype.startswith("multipart/") and part.cut != "depth":
        ctype = "text/plain"
    kind = media_field(part.header.first("content-disposition"), name="content-disposition",
                       assumed=own, where=where, defects=defects)  # fmt: skip
    disposition: Literal["attachment", "inline"] | None = None
    if kind is not None and kind.value in ("attachment", "inline"):
        disposition = "attachment" if kind.value == "attachment" else "inline"
    filename = (kind.params.get("filename") if kind else None) or (
        part.ctype.params.get("name") if part.ctype else None
    )
    cid = headers.text(part.header.first("content-id"), assumed=own, where=where)
    cid = (cid or "").removeprefix("<").removesuffix(">").strip()
    return PartInfo(
        section=leaf_section(part),
        content_type=ctype,
        encoding=part.encoding,
        filename=headers.display_name(filename) if filename else None,
        disposition=disposition,
        content_id=cid or None,
    )


def _leaves(root: Part) -> list[Part]:
    """The leaf parts in IMAP section order; an attached message is one leaf."""
    out: list[Part] = []
    stack = [root]
    while stack:
        part = stack.pop()
        if is_leaf(part):
            out.append(part)
        else:
            stack.extend(reversed(part.children))
    return out


def declared_charset(parts: list[Part]) -> str | None:
    """The charset the message declares for its text: the first Content-Type charset
    (in section order, attached messages not looked into) that Python knows and that is
    not US-ASCII or UTF-8. Raw 8-bit bytes of the message's header that are not UTF-8
    are read with it; those of a part's header with the part's own charset, else the
    first one declared up to that part (what a download that streams the message has
    seen by then)."""
    for part in parts:
        if part.in_message:
            continue
        charset = part.charset()
        if charset and headers.charset_codec(charset) not in ("ascii", "utf-8"):
            return charset
    return None


def _assumed_by_part(parts: list[Part]) -> dict[Part, str | None]:
    out: dict[Part, str | None] = {}
    first: str | None = None
    for part in parts:
        first = first or declared_charset([part])
        out[part] = first
    return out


def _in_order(root: Part) -> list[Part]:
    out: list[Part] = []
    stack = [root]
    while stack:
        part = stack.pop()
        out.append(part)
        if part.container:
            stack.extend(reversed(part.children))
    return out


def _text(raw: bytes, part: Part, defects: list[str]) -> str:
    data, found = decode_part(raw[part.body_start : part.end], part.encoding)
    defects.extend(f"{name} ({part.where()})" for name in sorted(found))
    charset = part.charset()
    declared = part.ctype.params.get("charset") if part.ctype else None
    if declared and not charset:
        defects.append(f"CharsetError ({part.where()}: unknown charset {declared!r})")
    codec = headers.charset_codec(charset)
    text = None
    if codec and codec != "ascii":
        text = data.decode(codec, "replace")
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", "replace")
    return text.replace("\r\n", "\n")


def parse_message(
    raw: bytes,
    *,
    id: str,
    folder: str,
    flags: list[str],
    size: int | None,
    limits: Limits | None = None,
) -> ParsedMessage:
    """Parse one message to the fetch shape; never raises, however broken the message.

    Attachment ids are IMAP section numbers (RFC 3501 6.4.5): "1" for the body of a
    non-multipart message, "2", "2.1"… inside multiparts; a message/rfc822 part is one
    attachment (its bytes as the server has them) and is not descended into. An
    attachment's ``size`` is its length decoded by its Content-Transfer-Encoding.
    ``content_id`` has no angle brackets (as in ``cid:`` URLs). ``text``/``html`` use
    CRLF → LF. ``defects`` name each irregularity (a class name, then where).
    Header fields are decoded by :mod:`service.mime.headers`, as in the listing.
    """
    base: dict[str, Any] = {"id": id, "folder": folder, "flags": flags, "size": size}
    try:
        scanner = scan(raw, limits or Limits())
        root = scanner.root
        parts = _in_order(root)
        assumed = declared_charset(parts)
        defects: list[str] = list(root.header.defects)
        top = root.header

        def text(name: str) -> str | None:
            return headers.text(top.first(name), assumed=assumed, where=f"header {name}",
                                defects=defects)  # fmt: skip

        def addresses(name: str) -> list[Any]:
            return headers.addresses(top.all(name), assumed=assumed, where=f"header {name}",
                                     defects=defects)  # fmt: skip

        fields = [
            {
                "name": name,
                "value": headers.text(
                    value, assumed=assumed, where=f"header {name}", defects=defects
                ),
            }  # fmt: skip
            for name, value in top.fields
        ]
        by_part = _assumed_by_part(parts)
        infos = [(leaf, part_info(leaf, assumed=by_part.get(leaf), defects=defects))
                 for leaf in _leaves(root)]  # fmt: skip
        body = next((x for x in infos if x[1].body_candidate
                     and x[1].content_type == "text/plain"), None)  # fmt: skip
        html = next((x for x in infos if x[1].body_candidate
                     and x[1].content_type == "text/html"), None)  # fmt: skip
        attachments = []
        for leaf, info in infos:
            if (leaf, info) in (body, html):
                continue
            data, found = decode_part(raw[leaf.body_start : leaf.end], leaf.encoding)
            defects.extend(f"{name} ({leaf.where()})" for name in sorted(found))
            attachments.append(info.attachment(len(data)))
        text_body = _text(raw, body[0], defects) if body else None
        html_body = _text(raw, html[0], defects) if html else None
        senders = addresses("sender")
        for part in parts:
            defects.extend(part.defects)
        result = {
            **base,
            "message_id": headers.message_id(top.first("message-id")),
            "in_reply_to": headers.message_id(top.first("in-reply-to")),
            "references": headers.message_ids(top.first("references")),
            "subject": text("subject"),
            "from": addresses("from"),
            "sender": senders[0] if senders else None,
            "reply_to": addresses("reply-to"),
            "to": addresses("to"),
            "cc": addresses("cc"),
            "bcc": addresses("bcc"),
            "date": headers.iso_date(top.first("date")),
            "headers": fields,
            "text": text_body,
            "html": html_body,
            "attachments": attachments,
            "defects": list(dict.fromkeys(defects)),
        }
        return ParsedMessage.model_validate(result)
    except Exception as exc:  # the last resort: a strange message is not a server error
        return ParsedMessage.model_validate(
            {**base, "defects": [f"ParserError ({type(exc).__name__})"]}
        )


def cut_info(cutter: PartCutter) -> PartInfo:
    """:func:`part_info` of the part a cutter found, its raw 8-bit header bytes read as
    the parsed fetch reads them (the charset declared up to that part)."""
    part = cutter.part
    if part is None:
        raise ValueError("the cutter has found no part")
    seen = cutter.scanner.headers_done
    upto = seen[: seen.index(part) + 1] if part in seen else seen
    return part_info(part, assumed=declared_charset(upto))


def find_attachment(
    raw: bytes, section: str, limits: Limits | None = None
) -> tuple[AttachmentInfo, bytes] | None:
    """The leaf part ``section`` (an attachment id of :func:`parse_message`, or the
    section of its text or HTML body) and its decoded bytes; None when there is no
    such leaf. Cut the way a streamed download cuts it (:class:`PartCutter`)."""
    cutter = PartCutter(section, limits or Limits())
    encoded = cutter.feed(raw, final=True)
    if cutter.part is None:
        return None
    info = cut_info(cutter)
    data, _ = decode_part(encoded, cutter.part.encoding)
    return info.attachment(len(data)), data
