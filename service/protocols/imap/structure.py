"""The server's BODYSTRUCTURE (RFC 3501 7.4.2), pure: where one part is, by section.

Only what a part download needs: whether the section names a part of the message
itself (reached through multiparts only: parts inside an attached message are not
parts of this message), whether it is a multipart, how many parts come before it
(against the gateway's part budget), and the charset declared up to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from service.mime.headers import charset_codec
from service.protocols.imap.wire import Token

__all__ = ["Located", "declared_charset", "locate", "reuses_boundary"]


@dataclass(frozen=True)
class Located:
    """One part in the server's structure."""

    multipart: bool
    number: int  # its place in section order, the message itself being 1
    assumed: str | None  # the first charset declared up to it (not US-ASCII or UTF-8)
    whole_body: bool  # section "1" of a message that is not multipart: its body
    boundaries: tuple[bytes | None, ...] = ()  # of the enclosing multiparts, outermost first


def _is_multipart(node: Token) -> bool:
    return isinstance(node, list) and bool(node) and isinstance(node[0], list)


def _children(node: list[Token]) -> list[list[Token]]:
    out: list[list[Token]] = []
    for child in node:
        if not isinstance(child, list):
            break
        out.append(child)
    return out


def _boundary(node: list[Token]) -> bytes | None:
    """A multipart's boundary parameter as the server read it (None: it found none)."""
    kids = len(_children(node))
    found = node[kids + 1] if len(node) > kids + 1 else None
    params = found if isinstance(found, list) else []
    for i in range(0, len(params) - 1, 2):
        key, value = params[i], params[i + 1]
        if isinstance(key, bytes) and key.lower() == b"boundary" and isinstance(value, bytes):
            return value
    return None


def _ancestors(structure: list[Token], section: str) -> tuple[bytes | None, ...]:
    """The boundary of each multipart on the way to ``section`` (the message first, the
    part itself last; None for what is not a multipart)."""
    out: list[bytes | None] = []
    node: list[Token] | None = structure
    for number in [*section.split("."), ""]:
        if node is None:
            out.append(None)
            continue
        out.append(_boundary(node) if _is_multipart(node) else None)
        kids = _children(node) if _is_multipart(node) else []
        index = int(number) - 1 if number else -1
        node = kids[index] if 0 <= index < len(kids) else None
    return tuple(out)


def _charset(node: list[Token]) -> str | None:
    """The charset parameter of a part, a multipart's too (in its extension data), when
    Python knows it and it is not US-ASCII or UTF-8."""
    at = len(_children(node)) + 1 if _is_multipart(node) else 2
    found = node[at] if len(node) > at else None
    params = found if isinstance(found, list) else []
    for i in range(0, len(params) - 1, 2):
        key, value = params[i], params[i + 1]
        if isinstance(key, bytes) and key.lower() == b"charset" and isinstance(value, bytes):
            name = value.decode("ascii", "replace")
            if charset_codec(name) not in (None, "ascii", "utf-8"):
                return name
    return None


def _walk(node: list[Token], section: str, inside: bool) -> Iterator[tuple[str, list[Token], bool]]:
    """(section, node, inside an attached message) in section order, the message first;
    the entity inside a message/rfc822 part counts as a part, as servers count it."""
    stack: list[tuple[str, list[Token], bool]] = [(section, node, inside)]
    while stack:
        sec, cur, within = stack.pop()
        yield sec, cur, within
        if _is_multipart(cur):
            kids = _children(cur)
            for i in range(len(kids), 0, -1):
                stack.append((f"{sec}.{i}" if sec else str(i), kids[i - 1], within))
            continue
        kind = cur[:2]
        if (
            len(cur) > 8
            and len(kind) == 2
            and all(isinstance(k, bytes) for k in kind)
            and bytes(kind[0]).lower() == b"message"  # type: ignore[arg-type]
            and bytes(kind[1]).lower() in (b"rfc822", b"global")  # type: ignore[arg-type]
            and isinstance(cur[8], list)
        ):
            stack.append((sec, cur[8], True))


def declared_charset(structure: Token) -> str | None:
    """The charset the message declares (as :func:`service.mime.declared_charset`): the
    first one in section order, multiparts included, not US-ASCII or UTF-8, attached
    messages not looked into."""
    if not isinstance(structure, list) or not structure:
        return None
    for _, node, inside in _walk(structure, "", False):
        if not inside and (found := _charset(node)):
            return found
    return None


def locate(structure: Token, section: str) -> Located | None:
    """The part ``section`` of a message with this BODYSTRUCTURE; None when the message
    has no such part of its own. Never raises."""
    if not isinstance(structure, list) or not structure:
        return None
    if not _is_multipart(structure):
        if section != "1":
            return None
        return Located(False, 1, _charset(structure), True)
    declared: str | None = None
    for number, (sec, node, inside) in enumerate(_walk(structure, "", False), 1):
        if not inside:
            declared = declared or _charset(node)
        if sec == section and not inside:
            return Located(_is_multipart(node), number, declared, False,
                           _ancestors(structure, section))  # fmt: skip
    return None


def reuses_boundary(structure: Token) -> bool:
    """True when a multipart of the message's own structure has the boundary of a
    multipart around it. Parsers then disagree on where parts end (a boundary line
    closes the inner or the outer one): Cyrus and Dovecot number and cut such a
    message differently, so no server's ``BODY[n]`` can stand for the gateway's part.
    Attached messages are not looked into. Never raises."""
    if not isinstance(structure, list) or not _is_multipart(structure):
        return False
    stack: list[tuple[list[Token], tuple[bytes, ...]]] = [(structure, ())]
    while stack:
        node, around = stack.pop()
        own = _boundary(node)
        if own is not None and own in around:
            return True
        inner = (*around, own) if own is not None else around
        stack.extend((kid, inner) for kid in _children(node) if _is_multipart(kid))
    return False
