"""MIME for the gateway: drafts built into RFC 5322 bytes, raw sends prepared, messages
parsed, listing fields read fast, single parts decoded as they stream."""

from service.mime.compose import (
    OutgoingAttachment,
    attachments_from_json,
    build_message,
    envelope,
    prepare_raw,
    sent_copy,
    serialize,
)
from service.mime.read import PartInfo, find_attachment, parse_message, part_info
from service.mime.stream import PartDecoder
from service.mime.summary import summary_fields

__all__ = [
    "OutgoingAttachment",
    "PartDecoder",
    "PartInfo",
    "attachments_from_json",
    "build_message",
    "envelope",
    "find_attachment",
    "parse_message",
    "part_info",
    "prepare_raw",
    "sent_copy",
    "serialize",
    "summary_fields",
]
