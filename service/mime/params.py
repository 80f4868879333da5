"""Content-Type and Content-Disposition fields: type and parameters (RFC 2045 5.1,
RFC 2183, RFC 2231), a fast reader for plain fields, the standard library behind it."""

from __future__ import annotations

import re
from email import policy
from email.headerregistry import ParameterizedMIMEHeader

from service.mime.headers import decode_words, to_str

__all__ = ["MediaField", "media_field"]

# Possessive and atomic throughout (Python 3.11): each piece can be read one way only, so
# a field that does not fit fails in linear time (nested quantifiers over the white space
# around an empty value took cubic time: minutes for 4 kB of spaces).
_PLAIN = re.compile(
    r"\s*+([!#$%&\'*+.^_`|~0-9A-Za-z-]++(?:/[!#$%&\'*+.^_`|~0-9A-Za-z-]++)?)\s*+"
    r'((?>;\s*+[!#$%&\'+.^_`|~0-9A-Za-z-]++\s*+=\s*+(?:"(?:[^"\\]|\\.)*+"|[^;"\s]*+)\s*+)*+);?\s*'
)
_PARAM = re.compile(r';\s*([!#$%&\'+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;"\s]*)')
# The standard library's parser takes time that grows faster than the field (seconds for
# 100 kB of parameters): it reads this much of a field, the rest is left out with a defect.
_STANDARD_MAX = 4096


class MediaField:
    """One Content-Type or Content-Disposition: its lower-case value (``text/plain``,
    ``attachment``) and parameters (lower-case names; values decoded)."""

    __slots__ = ("params", "value")

    def __init__(self, value: str, params: dict[str, str]) -> None:
        self.value = value
        self.params = params


def media_field(
    raw: bytes | None,
    *,
    name: str,
    assumed: str | None = None,
    where: str = "",
    defects: list[str] | None = None,
) -> MediaField | None:
    """Parse one field's raw value; None when absent or without a usable value.

    Plain fields (tokens and quoted strings) are read by one pattern; RFC 2231
    continuations and charsets, comments and the like by the standard library's
    parser. Encoded words inside a parameter value (not standard, but common in
    filenames) are decoded; raw 8-bit bytes as :func:`~service.mime.headers.to_str`.
    """
    if raw is None:
        return None
    value = to_str(raw.replace(b"\r\n", b"").replace(b"\n", b""), assumed=assumed,
                   where=where, defects=defects)  # fmt: skip
    found = _fast(value) if "*" not in value and "(" not in value else None
    if found is None:
        if len(value) > _STANDARD_MAX:
            value = value[:_STANDARD_MAX]
            if defects is not None:
                defects.append(f"MimeHeaderBudgetDefect ({where}: {name} read to "
                               f"{_STANDARD_MAX} characters)")  # fmt: skip
        found = _standard(value, name)
    if found is None:
        return None
    for key, param in found.params.items():
        if "=?" in param:
            found.params[key] = decode_words(param, where=where, defects=defects)
    return found


def _fast(value: str) -> MediaField | None:
    match = _PLAIN.fullmatch(value)
    if match is None:
        return None
    params: dict[str, str] = {}
    for key, param in _PARAM.findall(match.group(2)):
        if param.startswith('"'):
            param = re.sub(r"\\(.)", r"\1", param[1:-1])
        params.setdefault(key.lower(), param)
    return MediaField(match.group(1).lower(), params)


def _standard(value: str, name: str) -> MediaField | None:
    try:
        header = policy.default.header_factory(name, value)
    except Exception:  # the library's parser has its own failure modes; none may escape
        return None
    if not isinstance(header, ParameterizedMIMEHeader):
        return None
    try:
        kind = (
            header.content_type  # type: ignore[attr-defined]
            if name.lower() == "content-type"
            else header.content_disposition  # type: ignore[attr-defined]
        )
        params = {str(k).lower(): str(v) for k, v in header.params.items()}
    except Exception:
        return None
    if not kind:
        return None
    return MediaField(str(kind).lower(), params)
