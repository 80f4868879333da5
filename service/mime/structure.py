"""The MIME structure of a message as byte offsets: each part's header and body where
the server has them (RFC 2046 section 5.1, IMAP section numbers of RFC 3501 6.4.5),
read in one pass, from one buffer or chunk by chunk, with budgets for parts and depth.

Boundaries are found as IMAP servers find them (Dovecot's rules): a line that starts
with ``--`` and an open boundary of any enclosing multipart, the longest one winning;
the line break before it belongs to it. A part's header ends at its empty line or at
a boundary line. ``message/rfc822`` bodies are followed into (their boundaries count),
but their parts are not parts of the outer message here.

Budgets (as Dovecot's 10,000 parts and nesting limit): once ``max_parts`` parts exist
(the message itself included), no further boundary is recognised: the part being read
runs to the end of the message; a multipart nested ``max_depth`` levels deep is not
divided: its body (the rest of its subtree) is one leaf. Either adds a defect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from service.mime.headers import HeaderBlock, charset_codec, header_block
from service.mime.params import MediaField, media_field

__all__ = ["Limits", "MimeScanner", "Part", "default_type", "describe", "scan"]

_HEADER, _BODY = 0, 1
_IDENTITY = (None, "7bit", "8bit", "binary")
_MESSAGE_TYPES = ("message/rfc822", "message/global")


@dataclass(frozen=True)
class Limits:
    """Parsing budgets: parts per message (the message itself counts, as in Dovecot)
    and multipart nesting depth (the message's own body is depth 0)."""

    max_parts: int = 10_000
    max_depth: int = 50


@dataclass(eq=False)
class Part:
    """One MIME entity. Offsets are absolute byte positions in the message; the body
    is ``[body_start, end)``, the header ``[header_start, body_start)``."""

    section: str  # IMAP section number; "" for the message itself
    depth: int
    header_start: int
    body_start: int = -1
    end: int = -1
    header: HeaderBlock = field(default_factory=HeaderBlock)
    content_type: str = "text/plain"
    ctype: MediaField | None = None
    encoding: str | None = None
    boundary: bytes | None = None
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the entity inside a message/rfc822 body
    in_message: bool = False  # inside an attached message: not a part of this message
    cut: str | None = None  # why a multipart is one leaf: "depth" or "no-parts"
    closed: bool = False
    defects: list[str] = field(default_factory=list)

    @property
    def container(self) -> bool:
        """Divided into parts here (a multipart with children, within the budgets)."""
        return self.boundary is not None and self.cut is None

    def charset(self) -> str | None:
        """The Content-Type charset parameter when Python has a codec for it."""
        value = self.ctype.params.get("charset") if self.ctype else None
        return value if charset_codec(value) else None

    def where(self) -> str:
        return f"part {self.section or '1'}"


class MimeScanner:
    """Feed a message's bytes (``final=True`` with the last piece); parts appear in
    :attr:`root` as their headers end. ``keep`` False drops what is no longer needed,
    for streaming; then :meth:`bytes_between` serves only what is still buffered."""

    def __init__(
        self,
        limits: Limits,
        *,
        keep: bool = True,
        on_header: Callable[[Part], None] | None = None,
    ) -> None:
        self.limits = limits
        self._on_header = on_header
        self.root = Part(section="", depth=0, header_start=0)
        self.parts = 1
        self.done = False
        self.exhausted = False
        self._keep = keep
        self._stack: list[Part] = [self.root]
        self._active: list[tuple[bytes, Part]] = []
        self._longest = 0
        self._state = _HEADER
        self._buf: bytes | bytearray = b"" if keep else bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._pos = 0  # absolute scan position (a line start)
        self._region = 0  # where the body region being read began
        self.headers_done: list[Part] = []  # parts whose header ended, in order

    # ------------------------------------------------------------------ feeding
    def feed(self, data: bytes, *, final: bool = False) -> None:
        if self.done:
            return
        if isinstance(self._buf, bytearray):
            self._buf += data
        else:
            self._buf = data if not self._buf else self._buf + data
        while (
            self._state == _HEADER
            and self._scan_header(final)
            or (self._state == _BODY and self._scan_body(final))
        ):
            pass
        if final:
            self._finish_all()
        elif not self._keep:
            self._trim()

    @property
    def safe(self) -> int:
        """Bytes before this offset can no longer be claimed by a boundary line."""
        return len(self._buf) + self._base if self.done else max(self._pos - 2, 0)

    def bytes_between(self, start: int, end: int) -> bytes:
        return bytes(self._buf[start - self._base : end - self._base])

    def hold(self, offset: int) -> None:
        """Keep buffered bytes from ``offset`` on (streaming: the caller still needs them)."""
        self._held = offset

    _held: int | None = None

    def _trim(self) -> None:
        keep_from = self._pos - 2 - 256  # and the line before (a close delimiter, see _end)
        if self._state == _HEADER:
            keep_from = min(keep_from, self._stack[-1].header_start)
        if self._held is not None:
            keep_from = min(keep_from, self._held)
        cut = keep_from - self._base
        if cut > 65536 and isinstance(self._buf, bytearray):
            del self._buf[:cut]
            self._base += cut

    # ------------------------------------------------------------------ headers
    def _scan_header(self, final: bool) -> bool:
        part = self._stack[-1]
        buf, base = self._buf, self._base
        i = self._pos - base
        while True:
            nl = buf.find(b"\n", i)
            if nl < 0:
                if not final:
                    self._pos = base + i
                    return False
                end = base + len(buf)
                self._end_header(part, end, end)
                return True
            if nl == i or (nl == i + 1 and buf[i] == 13):  # the empty line
                self._end_header(part, base + i, base + nl + 1)
                return True
            if self._active and buf[i : i + 2] == b"--" and self._match(buf, i + 2)[0]:
                stop = max(base + i - (2 if i >= 2 and buf[i - 2] == 13 else 1), part.header_start)
                self._end_header(part, stop, stop, empty=True)
                self._pos = base + i
                return True
            i = nl + 1

    def _end_header(self, part: Part, header_end: int, body_start: int, *,
                    empty: bool = False) -> None:  # fmt: skip
        part.body_start = body_start
        part.header = header_block(self.bytes_between(part.header_start, header_end))
        self._describe(part)
        self.headers_done.append(part)
        if self._on_header is not None:
            self._on_header(part)
        self._state = _BODY
        self._pos = self._region = body_start
        if part.boundary is not None and part.cut is None:
            self._active.append((part.boundary, part))
            self._longest = max(self._longest, len(part.boundary))
        elif (
            not empty
            and part.content_type in _MESSAGE_TYPES
            and part.encoding in _IDENTITY
            and part.depth < self.limits.max_depth
            and not self.exhausted
            and self.parts < self.limits.max_parts
        ):
            inner = Part(section=part.section, depth=part.depth + 1, header_start=body_start,
                         in_message=True)  # fmt: skip
            part.message = inner
            self.parts += 1
            self._stack.append(inner)
            self._state = _HEADER

    def _describe(self, part: Part) -> None:
        where = part.where()
        ctype = media_field(part.header.first("content-type"), name="content-type",
                            where=where, defects=part.defects)  # fmt: skip
        part.ctype = ctype
        if ctype is not None and "/" in ctype.value:
            part.content_type = ctype.value
        elif part.header.first("content-type") is not None:
            part.defects.append(f"InvalidHeaderDefect ({where}: unreadable Content-Type)")
        cte = part.header.first("content-transfer-encoding")
        if cte is not None:
            part.encoding = cte.decode("ascii", "replace").strip().lower() or None
        if not part.content_type.startswith("multipart/"):
            return
        boundary = (ctype.params.get("boundary") if ctype else None) or ""
        raw = boundary.encode("utf-8", "replace")
        if not raw or b"\n" in raw or b"\r" in raw:
            part.defects.append(f"NoBoundaryInMultipartDefect ({where})")
            part.content_type = "text/plain"
            return
        part.boundary = raw
        if part.depth >= self.limits.max_depth:
            part.cut = "depth"
            part.defects.append(
                f"MimeDepthDefect ({where}: nested deeper than {self.limits.max_depth} "
                "levels; the rest of this subtree is one part)"
            )

    # ------------------------------------------------------------------ bodies
    def _match(self, buf: bytes | bytearray, at: int) -> tuple[Part | None, int]:
        best: Part | None = None
        size = 0
        for boundary, owner in reversed(self._active):  # the innermost wins a tie
            if len(boundary) > size and buf.startswith(boundary, at):
                best, size = owner, len(boundary)
        return best, size

    def _scan_body(self, final: bool) -> bool:
        buf, base = self._buf, self._base
        if not self._active:
            self._pos = base + len(buf)
            return False
        p = self._pos - base
        while True:
            j = buf.find(b"\n--", max(p - 1, 0))
            if j < 0:
                self._pos = base + max(p, len(buf) - 2)
                return False
            line = j + 1
            nl = buf.find(b"\n", line)
            if nl < 0 and not final:  # the whole boundary line first
                self._pos = base + line
                return False
            owner, size = self._match(buf, line + 2)
            if owner is None:
                p = line + 1
                continue
            self._boundary(owner, size, line, nl + 1 if nl >= 0 else len(buf))
            return True

    def _boundary(self, owner: Part, size: int, line: int, line_end: int) -> None:
        buf, base = self._buf, self._base
        closing = buf[line + 2 + size : line + 4 + size] == b"--"
        if not closing and self.parts >= self.limits.max_parts:
            self._exhaust()
            return
        stop = max(base + line - (2 if line >= 2 and buf[line - 2] == 13 else 1), self._region)
        while self._stack[-1] is not owner:
            inner = self._stack.pop()
            self._close(inner, self._end(inner, stop, base + line))
        after = base + line_end
        if closing:
            owner.closed = True
            self._active = [(b, p) for b, p in self._active if p is not owner]
            self._state, self._pos, self._region = _BODY, after, after
            return
        number = len(owner.children) + 1
        child = Part(
            section=f"{owner.section}.{number}" if owner.section else str(number),
            depth=owner.depth + 1,
            header_start=after,
            content_type=default_type(owner),
            in_message=owner.in_message,
        )
        owner.children.append(child)
        self.parts += 1
        self._stack.append(child)
        self._state, self._pos = _HEADER, after

    def _end(self, part: Part, stop: int, line: int) -> int:
        """Where a part closed by an enclosing boundary at ``stop`` ends. A multipart
        shown as one leaf whose own close delimiter is the line before keeps that line's
        break, as servers (reading its parts) count it."""
        if part.cut != "depth" or part.boundary is None:
            return stop
        buf, base = self._buf, self._base
        start = max(buf.rfind(b"\n", 0, stop - base) + 1, 0)
        if start < part.body_start - base:
            return stop
        closing = b"--" + part.boundary + b"--"
        return line if buf[start : stop - base].startswith(closing) else stop

    def _exhaust(self) -> None:
        part = self._stack[-1]
        self.exhausted = True
        self._active = []
        part.defects.append(
            f"MimePartsDefect ({part.where()}: more than {self.limits.max_parts} parts; "
            "the rest of the message is in this part)"
        )

    def _close(self, part: Part, end: int) -> None:
        part.end = end
        if part.boundary is not None and part.cut is None:
            self._active = [(b, p) for b, p in self._active if p is not part]
            if not part.closed and not self.exhausted:
                part.defects.append(f"CloseBoundaryNotFoundDefect ({part.where()})")
            if not part.children:
                part.cut = "no-parts"
                part.defects.append(f"StartBoundaryNotFoundDefect ({part.where()})")

    def _finish_all(self) -> None:
        while self._state == _HEADER:  # a header cut short: it ends here
            end = self._base + len(self._buf)
            self._end_header(self._stack[-1], end, end)
        end = self._base + len(self._buf)
        while self._stack:
            self._close(self._stack.pop(), end)
        self.done = True


def default_type(parent: Part) -> str:
    """The type of a part of ``parent`` whose header names none (RFC 2046 5.1.1, 5.1.5):
    message/rfc822 in a multipart/digest, else text/plain."""
    return "message/rfc822" if parent.content_type == "multipart/digest" else "text/plain"


def describe(header: bytes, section: str, limits: Limits, *,
             default: str = "text/plain") -> Part:  # fmt: skip
    """A part known only by its MIME header (an IMAP ``BODY[n.MIME]``): its type,
    parameters and encoding, read as :class:`MimeScanner` reads them; ``default`` is
    its type when the header names none (:func:`default_type` of its parent). A
    multipart at the depth budget is one leaf, as in the scanner."""
    depth = len(section.split(".")) if section else 0
    part = Part(section=section, depth=depth, header_start=0, body_start=len(header),
                content_type=default)  # fmt: skip
    part.header = header_block(header)
    MimeScanner(limits)._describe(part)
    return part


def scan(raw: bytes, limits: Limits) -> MimeScanner:
    """The structure of a whole message held in memory (no copy of ``raw`` is made)."""
    scanner = MimeScanner(limits)
    scanner.feed(raw, final=True)
    return scanner
