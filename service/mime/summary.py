"""Listing fields from a header section, decoded as the fetch decodes them."""

from __future__ import annotations

from service.mime import headers
from service.mime.params import media_field
from service.models.message import AddressOut

__all__ = ["needs_declared_charset", "summary_fields"]


def summary_fields(header_bytes: bytes, *, assumed: str | None = None) -> dict[str, object]:
    """Listing fields from a header section (POP3 ``TOP n 0``, IMAP ``BODY.PEEK[HEADER]``):
    ``message_id, subject, from, to, cc, date, has_attachments, content_type``. Never raises.

    Names and subjects are decoded by the same functions as the fetch
    (:mod:`service.mime.headers`); ``assumed`` is the charset the message declares
    (:func:`service.mime.read.declared_charset`) for raw 8-bit bytes that are not
    UTF-8; without it, the top-level Content-Type's charset.

    ``has_attachments`` is a guess from the top-level headers alone: multipart/mixed, a
    top-level non-text, non-multipart type, or ``Content-Disposition: attachment``.
    """
    try:
        block = headers.header_block(header_bytes)
        ctype = media_field(block.first("content-type"), name="content-type")
        kind = ctype.value if ctype is not None and "/" in ctype.value else "text/plain"
        if assumed is None and ctype is not None:
            assumed = ctype.params.get("charset")
        disposition = media_field(block.first("content-disposition"), name="content-disposition")

        def addresses(name: str) -> list[AddressOut]:
            found = headers.addresses(block.all(name), assumed=assumed)
            return [{"name": a.name, "address": a.address} for a in found]

        return {
            "message_id": headers.message_id(block.first("message-id")),
            "subject": headers.text(block.first("subject"), assumed=assumed),
            "from": addresses("from"),
            "to": addresses("to"),
            "cc": addresses("cc"),
            "date": headers.iso_date(block.first("date")),
            "has_attachments": kind == "multipart/mixed"
            or kind.split("/")[0] not in ("text", "multipart")
            or (disposition is not None and disposition.value == "attachment"),
            "content_type": kind,
        }
    except Exception:  # nothing in a header may fail a listing
        return {
            **dict.fromkeys(("message_id", "subject", "date")),
            "from": [],
            "to": [],
            "cc": [],
            "has_attachments": False,
            "content_type": "text/plain",
        }


_SHOWN = ("subject", "from", "to", "cc")


def needs_declared_charset(header_bytes: bytes) -> bool:
    """Whether the listing of this header depends on a charset declared inside the
    message: a multipart whose shown fields hold raw 8-bit bytes that are not UTF-8."""
    if header_bytes.isascii():
        return False
    block = headers.header_block(header_bytes)
    ctype = media_field(block.first("content-type"), name="content-type")
    if ctype is None or not ctype.value.startswith("multipart/"):
        return False
    for name in _SHOWN:
        for value in block.all(name):
            if not value.isascii():
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    return True
    return False
