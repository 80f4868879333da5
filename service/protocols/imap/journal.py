"""What a selected IMAP session has been told since its SELECT: a change journal.

``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m VANISHED)`` makes the server look at every
message's MODSEQ (Dovecot: 11 ms for 100,000 messages against 0.6 ms for 100,
measured by bench/changes_cost.py), so /changes would cost what the folder holds,
not what changed. But a session that keeps a folder selected with QRESYNC enabled
is already told every change as it happens (RFC 7162 §3.1.2 and §3.2.10): each flag
change as an untagged ``FETCH`` carrying ``UID`` and ``MODSEQ``, each expunge as
``VANISHED``, and arrivals as ``EXISTS``. The journal keeps what it was told, so that
the changes since any state at or after the SELECT are found from the journal plus one
``UID FETCH`` of the UIDs it names (:func:`service.protocols.imap.changes.changes_since`).

It answers exactly or not at all:

- flag changes: UID → the highest MODSEQ heard for it; a state at MODSEQ ``m`` has
  missed every UID heard above ``m``.
- expunges carry no MODSEQ, but each raised the folder's HIGHESTMODSEQ (RFC 7162
  §3.1.2), so one told after the view was known to be at ``v`` happened above ``v``,
  and below any HIGHESTMODSEQ the view reached after it was told. ``view`` is that
  known point: a real SELECT's HIGHESTMODSEQ, or a STATUS of the selected folder whose
  reply reported nothing, sent right after a full sync (:meth:`ImapSession.keep_mark`).
  An expunge that falls between those two bounds and the state's MODSEQ makes the
  journal unable to answer that state.
- only messages the session's view already held are told about: one that arrives,
  changes or goes between two syncs of the view comes as a bare ``EXISTS`` (measured on
  Dovecot 2.3: a message flagged and one expunged before the session first saw them
  gave no ``FETCH`` and no ``VANISHED``). So each known point also keeps the view's
  UIDNEXT, and a state is answered only when a known point at or below its MODSEQ had
  a UIDNEXT at or above the state's: every message of the state was then in the view,
  and all that happened to it since was told.
- anything it cannot read (an ``EXPUNGE`` by sequence number, a ``FETCH`` outside a
  FETCH command without ``MODSEQ``, one with ``MODSEQ`` but no ``UID``, ``NOMODSEQ``,
  a response told between commands) breaks it: the session then answers from the
  server (CHANGEDSINCE) until its next SELECT.

Bounded: past :data:`LIMIT` entries the journal starts again at the view's point
(older states are then answered by the server, as before the SELECT).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from service.protocols.imap.wire import Line, parse_sequence_set

__all__ = ["LIMIT", "ChangeJournal"]

LIMIT = 10_000
"""Entries (UIDs with a MODSEQ, expunged UIDs) one journal keeps."""
_POINTS = 256  # known points kept (one per STATUS that found the view changed)

_FETCH = re.compile(rb"\d+ FETCH \((.*)\)", re.IGNORECASE | re.DOTALL)
_ITEM = re.compile(rb"\s*(?:UID (\d+)|MODSEQ \((\d+)\)|FLAGS \(([^()]*)\))", re.IGNORECASE)

Flags = tuple[str, ...]


@dataclass
class _Expunged:
    """UIDs told by one ``VANISHED``: expunged above ``after``, at or below ``by`` (once
    the view reached a known HIGHESTMODSEQ after it)."""

    uids: list[tuple[int, int]]
    after: int
    by: int | None = None


def _items(body: bytes) -> tuple[int | None, int | None, Flags | None] | None:
    """(UID, MODSEQ, FLAGS) of a FETCH made only of those items (None for one left out);
    None when it holds others."""
    uid = modseq = None
    flags: Flags | None = None
    pos, end = 0, len(body)
    while pos < end:
        m = _ITEM.match(body, pos)
        if m is None or m.end() == pos:
            return None if body[pos:].strip() else (uid, modseq, flags)
        if m.group(1) is not None:
            uid = int(m.group(1))
        elif m.group(2) is not None:
            modseq = int(m.group(2))
        else:
            flags = tuple(m.group(3).decode("utf-8", "replace").split())
        pos = m.end()
    return uid, modseq, flags


class ChangeJournal:
    """The changes one session was told in ``folder`` (UIDVALIDITY ``uidvalidity``) since
    its SELECT at HIGHESTMODSEQ ``modseq``; QRESYNC enabled (expunges told by UID)."""

    def __init__(self, folder: str, uidvalidity: int, modseq: int, uidnext: int) -> None:
        self.folder = folder
        self.uidvalidity = uidvalidity
        # the known points (HIGHESTMODSEQ, UIDNEXT), oldest first, both rising
        self._points: list[tuple[int, int]] = [(modseq, uidnext)]
        self.broken = False
        # UID → (the highest MODSEQ told for it, its FLAGS then if they were told)
        self._told: dict[int, tuple[int, Flags | None]] = {}
        self._expunged: list[_Expunged] = []
        self._size = 0

    @property
    def base(self) -> int:
        """The oldest known point's HIGHESTMODSEQ: states at or above it can be answered."""
        return self._points[0][0]

    @property
    def view(self) -> int:
        """The latest known point's HIGHESTMODSEQ: the view is known to have been there."""
        return self._points[-1][0]

    # -- what the session is told ---------------------------------------------------------
    def hear(self, lines: Sequence[Line], *, fetch_command: bool) -> None:
        """Record one reply's untagged responses. ``fetch_command``: the reply of a FETCH,
        whose own data lines (FLAGS without MODSEQ) tell no change (Dovecot reports the
        change itself again at the end of the command, with MODSEQ)."""
        for line in lines:
            if type(line) is not bytes or self.broken:
                continue  # literal data
            first = line[:1]
            if first.isdigit():
                head = line[:24].upper()
                if b" FETCH " in head:
                    self._fetch(line, fetch_command)
                elif line.rstrip().upper().endswith(b" EXPUNGE"):
                    self.broken = True  # by sequence number: not with QRESYNC enabled
            elif first in (b"V", b"v") and line[:9].upper() == b"VANISHED ":
                rest = line[9:].strip()
                if rest[:1] == b"(":
                    continue  # (EARLIER): the answer to a question, not news
                try:
                    uids = parse_sequence_set(rest.decode("ascii"))
                except (ValueError, UnicodeDecodeError):
                    self.broken = True
                    continue
                self._expunged.append(_Expunged(uids, self.view))
                self._grow(sum(hi - lo + 1 for lo, hi in uids))
            elif first in (b"O", b"o") and b"[NOMODSEQ]" in line.upper():
                self.broken = True
            elif first in (b" ", b")") and b"MODSEQ" in line.upper():
                self.broken = True  # the rest of a FETCH after a literal: not read here

    def _fetch(self, line: bytes, fetch_command: bool) -> None:
        m = _FETCH.fullmatch(line)
        found = _items(m.group(1)) if m is not None else None
        if found is None:  # other items: data asked for, unless it speaks of a MODSEQ
            if b"MODSEQ" in line.upper() or not fetch_command:
                self.broken = True
            return
        uid, modseq, flags = found
        if modseq is None:
            if flags is not None and not fetch_command:
                self.broken = True  # a flag change told without its MODSEQ
            return
        if uid is None:
            self.broken = True
            return
        known = self._told.get(uid)
        if known is None:
            self._grow(1)
        elif known[0] > modseq or (known[0] == modseq and flags is None):
            return  # older news, or the same without its flags
        self._told[uid] = (modseq, flags)

    def _grow(self, n: int) -> None:
        self._size += n
        if self._size > 2 * LIMIT:
            self.broken = True  # told this much between two known points: give up

    def lost_untagged(self) -> None:
        """A response arrived outside any command and was dropped: not all was heard."""
        self.broken = True

    def seen(self, modseq: int, uidnext: int) -> None:
        """The view is at HIGHESTMODSEQ ``modseq`` and UIDNEXT ``uidnext`` (a STATUS after a
        full sync whose reply reported nothing)."""
        if modseq < self.view or uidnext < self._points[-1][1]:
            return
        if self._points[-1][0] == modseq:
            self._points[-1] = (modseq, uidnext)
        else:
            self._points.append((modseq, uidnext))
        if len(self._points) > _POINTS:  # the oldest go; states before them, too
            del self._points[: len(self._points) - _POINTS]
        for expunged in self._expunged:
            if expunged.by is None:
                expunged.by = modseq
        if self._size > LIMIT:  # start again from here, keeping only what is above it
            self._told = {u: told for u, told in self._told.items() if told[0] > modseq}
            self._expunged = []
            self._size = len(self._told)
            self._points = [(modseq, uidnext)]

    # -- what it answers ----------------------------------------------------------------------
    def usable(self, folder: str, uidvalidity: int | None, modseq: int, uidnext: int) -> bool:
        """Whether it can answer for a state of ``folder`` at MODSEQ ``modseq`` and UIDNEXT
        ``uidnext``: the latest known point at or below ``modseq`` had every message of
        the state in the view."""
        if self.broken or folder != self.folder or uidvalidity != self.uidvalidity:
            return False
        for point_modseq, point_uidnext in reversed(self._points):
            if point_modseq <= modseq:
                return point_uidnext >= uidnext
        return False  # older than the oldest point (the SELECT's, or where it started again)

    def changed_since(self, modseq: int) -> dict[int, tuple[int, Flags | None]]:
        """UID → (MODSEQ, FLAGS or None when not told) of the UIDs told with a MODSEQ
        above ``modseq``: their flags changed since (or they arrived since)."""
        return {uid: told for uid, told in self._told.items() if told[0] > modseq}

    def expunged_since(self, modseq: int) -> set[int] | None:
        """UIDs expunged at a MODSEQ above ``modseq``; None when one expunge cannot be
        placed on either side of it."""
        out: set[int] = set()
        for expunged in self._expunged:
            if expunged.after >= modseq:
                for lo, hi in expunged.uids:
                    out.update(range(lo, hi + 1))
            elif expunged.by is None or expunged.by > modseq:
                return None
        return out
