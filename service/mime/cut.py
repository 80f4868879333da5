"""One part's bytes cut from a message as it streams past: the message is read once,
and reading can stop as soon as the part has ended."""

from __future__ import annotations

from service.mime.structure import Limits, MimeScanner, Part

__all__ = ["PartCutter", "is_leaf", "leaf_section"]


def leaf_section(part: Part) -> str:
    """The id of a leaf part: its IMAP section; the message's own body is "1"."""
    return part.section or "1"


def is_leaf(part: Part) -> bool:
    """A part shown as one piece: not a multipart divided into parts."""
    return not part.container or part.cut is not None


class PartCutter:
    """Feed the message's bytes; get back the encoded body bytes of the leaf part
    ``section`` (IMAP ``BODY[section]`` semantics: for ``message/rfc822`` the whole
    attached message), as soon as no boundary can claim them any more.

    :attr:`part` is the part once its header has been read; :attr:`missing` is True
    when the message has no such leaf (no such section, a multipart that has parts,
    or a part inside an attached message); :attr:`finished` once the part has ended
    or is missing: the rest of the message need not be read.
    """

    def __init__(self, section: str, limits: Limits) -> None:
        self.section = section
        self.scanner = MimeScanner(limits, keep=False, on_header=self._header)
        self.part: Part | None = None
        self.missing = False
        self._candidate: Part | None = None  # a multipart that may turn out a leaf
        self._seen = 0
        self._sent = 0

    def _header(self, part: Part) -> None:
        """As soon as a header ends (before the scanner drops what it has read):
        keep the bytes of a part that may be the one wanted."""
        if self.part is None and leaf_section(part) == self.section and not part.in_message:
            self.scanner.hold(part.body_start)

    @property
    def finished(self) -> bool:
        return self.missing or (self.part is not None and self.part.end >= 0)

    def feed(self, data: bytes, *, final: bool = False) -> bytes:
        if self.finished:
            return b""
        self.scanner.feed(data, final=final)
        if self.part is None:
            self._look()
        if self.part is None:
            if self.scanner.done:
                self.missing = True
            return b""
        return self._take()

    def _look(self) -> None:
        done = self.scanner.headers_done
        while self._seen < len(done):
            part = done[self._seen]
            self._seen += 1
            if part.in_message or leaf_section(part) != self.section:
                continue
            if part is self.scanner.root and part.container and self.section == "1":
                self._candidate = part  # "1" is its first part, unless it has none
                self.scanner.hold(part.body_start)
                continue
            self._found(part)
            return
        candidate = self._candidate
        if candidate is not None and candidate.end >= 0 and not candidate.children:
            self._found(candidate)  # the multipart had no parts: it is the leaf
        elif candidate is not None and candidate.children:
            self._candidate = None
            self.scanner.hold(self.scanner.safe)
            if self.part is None and self.section != "1":
                self.missing = True

    def _found(self, part: Part) -> None:
        if part.container and part.cut is None and part.end < 0:
            self._candidate = part
            self.scanner.hold(part.body_start)
            return
        if not is_leaf(part):
            self.missing = True
            return
        self.part = part
        self._sent = part.body_start
        self.scanner.hold(part.body_start)

    def _take(self) -> bytes:
        part = self.part
        if part is None:
            return b""
        stop = part.end if part.end >= 0 else min(self.scanner.safe, 1 << 62)
        if stop <= self._sent:
            return b""
        data = self.scanner.bytes_between(self._sent, stop)
        self._sent = stop
        self.scanner.hold(stop)
        return data
