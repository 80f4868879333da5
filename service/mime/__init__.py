"""MIME for the gateway: drafts built into RFC 5322 bytes, raw sends prepared, messages
parsed by byte offsets within budgets, listing fields decoded as the fetch decodes them,
single parts cut from a stream and decoded as they come."""

from service.mime.compose import (
    OutgoingAttachment,
    attachments_from_json,
    build_message,
    envelope,
    prepare_raw,
    sent_copy,
    serialize,
)
from service.mime.cut import PartCutter, is_leaf
from service.mime.read import (
    PartInfo,
    cut_info,
    declared_charset,
    find_attachment,
    parse_message,
    part_info,
)
from service.mime.stream import PartDecoder, decode_part
from service.mime.structure import Limits, MimeScanner, Part, default_type, describe, scan
from service.mime.summary import needs_declared_charset, summary_fields

__all__ = [
    "Limits",
    "MimeScanner",
    "OutgoingAttachment",
    "Part",
    "PartCutter",
    "PartDecoder",
    "PartInfo",
    "attachments_from_json",
    "build_message",
    "cut_info",
    "declared_charset",
    "decode_part",
    "default_type",
    "describe",
    "envelope",
    "find_attachment",
    "is_leaf",
    "needs_declared_charset",
    "parse_message",
    "part_info",
    "scan",
    "prepare_raw",
    "sent_copy",
    "serialize",
    "summary_fields",
]
