"""Listing pages of an IMAP folder, newest first, at a cost that grows with the page and
not with the folder.

A SEARCH costs the server time in proportion to the folder (Dovecot 2.3, measured:
``UID SEARCH ALL`` or ``UID 1:n`` 15 ms at 100,000 messages, 0.3 ms at 100), while a
FETCH of a range of message sequence numbers costs the same at any size. So an
unfiltered page is read by sequence numbers (RFC 3501 2.3.1.2):

- The session knows the selected folder's message count (``EXISTS``, kept current
  from every reply by :class:`~service.protocols.imap.session.ImapSession`), so the
  newest page is ``FETCH n-limit:n (UID FLAGS)``: the ``limit + 1`` highest
  numbers are the ``limit + 1`` highest UIDs, the extra one telling whether a next
  page exists.
- A cursor carries the UIDVALIDITY, the last UID shown and that message's sequence
  number when it was shown. Within one view of a folder, UIDs grow with sequence
  numbers; so if the message now at that number has a UID at or above the cursor's,
  every older message sits below it, and the next page is one FETCH of a window
  just under it, keeping UIDs below the cursor's. Messages that arrived meanwhile
  get higher UIDs and numbers at the end; expunges only lower numbers, which the
  window's slack (and, after many expunges, windows further down) absorbs. A
  number that fails the check (a cursor made in another view, or forged) is
  replaced by the exact one from ``SEARCH RETURN (MAX) UID 1:uid-1`` (RFC 4731):
  still correct, at the cost of one search.
- Non-UID FETCH is used on purpose: the server may not send EXPUNGE during it
  (RFC 3501 7.4.1), so the numbers hold while it runs.

Filtered listings need the server to decide which messages match: ``UID SEARCH``
(with ``UID 1:uid-1`` after a cursor), then a FETCH of the page's UIDs.

Summaries of immutable messages (same UIDVALIDITY and UID) come from the
:class:`~service.protocols.summary_cache.SummaryCache`; only the uncached ones are
fetched with their header fields, the others take the flags the window brought.
When the page's newest message is not cached (a first listing, or a page not read
before), the window itself asks for the header fields, so that the page costs one
FETCH.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from typing import TypeGuard

from service.errors import StaleId, ValidationFailed
from service.ids import ImapRef, decode_cursor, encode_cursor
from service.mime import needs_declared_charset, summary_fields
from service.models.message import MessagePage, MessageSummary
from service.protocols.base import ListQuery
from service.protocols.imap.changes import current_state
from service.protocols.imap.session import ImapSession
from service.protocols.imap.structure import declared_charset
from service.protocols.imap.wire import FetchItem, Word, astring, format_uid_set
from service.protocols.summary_cache import SummaryCache

__all__ = [
    "SUMMARY_ITEMS",
    "PageRequest",
    "filters_hash",
    "read_page",
    "search_criteria",
    "summaries",
    "summary_of",
    "visible_flags",
]

SUMMARY_ITEMS = (
    "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS "
    "(MESSAGE-ID SUBJECT FROM TO CC DATE CONTENT-TYPE CONTENT-DISPOSITION)])"
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HIDDEN_FLAGS = {"\\recent"}  # per-session, changes between calls: not shown

SLACK = 8  # extra numbers in a cursor page's window: expunges below the cursor it absorbs
WINDOWS = 3  # windows tried under a cursor before the rest is found by one SEARCH


# --------------------------------------------------------------------------- pure helpers


def imap_date(d: date) -> str:
    """``date(2024, 2, 1)`` → ``1-Feb-2024`` (RFC 3501 date)."""
    return f"{d.day}-{_MONTHS[d.month - 1]}-{d.year}"


def search_criteria(query: ListQuery) -> list[Word]:
    """The SEARCH keys of a listing's filters (no UID restriction, no CHARSET).

    Strings go out quoted, or as UTF-8 literals when not ASCII, so no filter
    value can inject IMAP syntax; NUL, CR and LF are refused (422).
    """
    out: list[Word] = []
    if query.unseen is not None:
        out.append("UNSEEN" if query.unseen else "SEEN")
    if query.flagged is not None:
        out.append("FLAGGED" if query.flagged else "UNFLAGGED")
    if query.since is not None:
        out += ["SINCE", imap_date(query.since)]
    if query.before is not None:
        out += ["BEFORE", imap_date(query.before)]
    for key, value in (
        ("FROM", query.from_),
        ("TO", query.to),
        ("SUBJECT", query.subject),
        ("TEXT", query.text),
    ):
        if value is None:
            continue
        if any(c in value for c in "\0\r\n"):
            raise ValidationFailed(f"The {key.lower()} filter must not contain NUL, CR or LF.")
        out += [key, astring(value)]
    return out


def filters_hash(query: ListQuery) -> str:
    """A short hash of the filters, bound into cursors."""
    filters = {
        "unseen": query.unseen,
        "flagged": query.flagged,
        "since": query.since.isoformat() if query.since else None,
        "before": query.before.isoformat() if query.before else None,
        "from": query.from_,
        "to": query.to,
        "subject": query.subject,
        "text": query.text,
    }
    raw = json.dumps(filters, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:12]


def visible_flags(flags: list[str] | None) -> list[str]:
    """The flags a caller sees: ``\\Recent`` is per session and left out."""
    return [f for f in flags or [] if f.lower() not in _HIDDEN_FLAGS]


def summary_of(
    folder: str, uidvalidity: int, item: FetchItem, assumed: str | None = None
) -> MessageSummary:
    """A listing line from one FETCH of :data:`SUMMARY_ITEMS`; ``assumed``: the charset
    the message declares, for raw 8-bit header bytes (:func:`summary_fields`)."""
    fields = summary_fields(item.section("BODY[HEADER") or b"", assumed=assumed)
    flags = visible_flags(item.flags)
    return MessageSummary.model_construct(
        None,
        **{
            "id": ImapRef(folder, uidvalidity, item.uid).encode(),
            "folder": folder,
            "uid": item.uid,
            "message_id": fields.get("message_id"),
            "subject": fields.get("subject"),
            "from": fields.get("from") or [],
            "to": fields.get("to") or [],
            "cc": fields.get("cc") or [],
            "date": fields.get("date"),
            "size": item.size,
            "flags": flags,
            "seen": "\\Seen" in flags,
            "has_attachments": bool(fields.get("has_attachments")),
        },
    )


@dataclass(frozen=True)
class Position:
    """Where a cursor points: below UID ``uid`` of UIDVALIDITY ``uidvalidity``; ``seq``
    is that message's sequence number when the cursor was made (a hint, checked)."""

    uidvalidity: int
    uid: int
    seq: int | None


def _is_int(value: object, low: int, high: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


@dataclass(frozen=True)
class PageRequest:
    """One listing call, checked before any session is used: folder, filters, limit and
    the cursor's position (ValidationFailed, 422, for a cursor of another listing or
    malformed)."""

    folder: str
    criteria: list[Word]
    qhash: str
    limit: int
    count: bool
    position: Position | None

    @classmethod
    def of(cls, folder: str, query: ListQuery) -> PageRequest:
        qhash = filters_hash(query)
        position = None
        if query.cursor:
            data = decode_cursor(query.cursor)
            v, u, s = data.get("v"), data.get("u"), data.get("s")
            if not (_is_int(v, 1, 2**32) and _is_int(u, 1, 2**32)):
                raise ValidationFailed("The cursor is malformed.")
            if s is not None and not _is_int(s, 1, 2**32):
                raise ValidationFailed("The cursor is malformed.")
            if data.get("f") != folder or data.get("q") != qhash:
                raise ValidationFailed(
                    "The cursor belongs to another listing (folder or filters differ)."
                )
            position = Position(v, u, s)
        limit = max(1, min(query.limit, 200))
        return cls(folder, search_criteria(query), qhash, limit, query.count, position)

    def cursor(self, uidvalidity: int, last: int, seq: int | None) -> str:
        """The opaque cursor for the page that ends with UID ``last`` (number ``seq``)."""
        data: dict[str, object] = {"f": self.folder, "v": uidvalidity, "u": last, "q": self.qhash}
        if seq is not None:
            data["s"] = seq
        return encode_cursor(data)


# --------------------------------------------------------------------------- on a session


async def read_page(
    session: ImapSession, req: PageRequest, cache: SummaryCache | None, cache_key: str
) -> MessagePage:
    """One page of ``req.folder`` on ``session``, with the folder's sync state: SELECT (or
    the pooled session's cheap re-sync), then FETCHes whose size follows the page (see
    the module docstring).

    Raises StaleId (410) when the cursor's UIDVALIDITY is not the folder's, NotFound
    (404) for a missing folder, and the session's upstream errors.
    """
    pos = req.position
    # SELECT (or the pooled session's re-sync) and the folder's sync state; later pages
    # leave out the digest that a server without CONDSTORE would need a scan for
    current = await current_state(session, req.folder, digest=pos is None)
    uidvalidity = current.uidvalidity
    if pos is not None and pos.uidvalidity != uidvalidity:
        raise StaleId("The folder changed (UIDVALIDITY); start the listing again.")
    want = req.limit + 1
    total: int | None = None
    # Only what the state knows (UIDs below its UIDNEXT): a message that arrived after
    # the state was taken may be visible by now (Dovecot brings the view up to date at
    # the end of each command, e.g. the flags FETCH of a state without CONDSTORE);
    # listed, and then expunged before the next /changes, it would stay in the client's
    # copy forever ("created and destroyed since the state" is left out). /changes
    # reports it as created instead.
    known_below = current.base.uidnext
    if req.criteria or session.exists is None:
        uids = await _search_highest(
            session, req.criteria, pos.uid if pos else None, want, known_below
        )
        known: dict[int, FetchItem] = {}
        if req.count:
            total = (await session.uid_search(req.criteria or ["ALL"], count=True)).count
    else:
        # The page's newest message not cached (a first listing, or a page not read
        # before): the window brings the header fields too, and the page costs one FETCH.
        newest = (pos.uid if pos is not None else current.base.uidnext) - 1
        cold = cache is None or not cache.holds((cache_key, req.folder, uidvalidity, newest))
        known = await _highest_by_number(
            session, pos, want, SUMMARY_ITEMS if cold else "(UID FLAGS)"
        )
        known = {uid: item for uid, item in known.items() if uid < known_below}
        uids = list(known)
        if req.count:
            total = session.exists
    page, more = uids[: req.limit], len(uids) > req.limit
    items = await summaries(session, req.folder, uidvalidity, page, known, cache, cache_key)
    cursor = None
    if more:
        last = known.get(page[-1])
        cursor = req.cursor(uidvalidity, page[-1], last.seq if last is not None else None)
    return MessagePage(items=items, next_cursor=cursor, total=total, state=current.encode())


async def _search_highest(
    session: ImapSession,
    criteria: list[Word],
    below: int | None,
    want: int,
    known_below: int | None = None,
) -> list[int]:
    """Up to ``want`` UIDs matching ``criteria`` (below UID ``below``, the cursor's, and
    below ``known_below``, the state's UIDNEXT), highest first."""
    if below is None:
        found = await session.uid_search(criteria or ["ALL"])
    elif below > 1:
        found = await session.uid_search(["UID", f"1:{below - 1}", *criteria])
    else:
        return []  # nothing below UID 1
    return found.highest(want, below=known_below)


async def _highest_by_number(
    session: ImapSession, pos: Position | None, want: int, items: str = "(UID FLAGS)"
) -> dict[int, FetchItem]:
    """Up to ``want`` messages below the cursor (all, without one), highest UID first, as
    ``{uid: item}`` with their flags and sequence numbers, by windows of numbers."""
    exists = session.exists or 0
    bound = pos.uid if pos is not None else None
    if pos is None:
        top, span = exists, want
    elif pos.seq is not None and pos.seq <= exists:
        top, span = pos.seq, want + 1 + SLACK  # the cursor's own number is checked too
    elif pos.seq is not None:
        top, span = exists, want + SLACK  # the folder shrank below the hint: from the top
    else:
        top, span = await _number_below(session, pos.uid), want + SLACK
    found: dict[int, FetchItem] = {}
    for attempt in range(WINDOWS):
        if top < 1:
            return found
        low = max(1, top - span + 1)
        fetched = await session.fetch_numbers(f"{low}:{top}", items)
        # by number, highest first (an unsolicited FETCH of another number is left out)
        window = sorted(
            (i for i in fetched.values() if i.seq is not None and low <= i.seq <= top),
            key=lambda i: i.seq or 0,
            reverse=True,
        )
        if attempt == 0 and pos is not None and pos.seq == top and bound is not None:
            if not window or window[0].seq != top or window[0].uid < bound:
                # The hint is not from this view: older messages may sit above it.
                return await _from_exact_number(session, pos, want, items)
        for item in window:
            if (bound is None or item.uid < bound) and len(found) < want:
                found[item.uid] = item
        if len(found) >= want or low == 1:
            return found
        top, span = low - 1, span * 4
    # Very many expunges under the cursor: the rest by one search.
    lowest = min(found) if found else bound
    rest = await _search_highest(session, [], lowest, want - len(found))
    for uid in rest:
        found[uid] = FetchItem(uid)
    return found


async def _from_exact_number(
    session: ImapSession, pos: Position, want: int, items: str
) -> dict[int, FetchItem]:
    exact = Position(pos.uidvalidity, pos.uid, None)
    return await _highest_by_number(session, exact, want, items)


async def _number_below(session: ImapSession, uid: int) -> int:
    """The sequence number of the highest message with a UID below ``uid`` (0: none),
    by ``SEARCH RETURN (MAX) UID 1:uid-1`` (costs a search of the folder)."""
    if uid <= 1:
        return 0
    return await session.search_max_number(["UID", f"1:{uid - 1}"])


async def summaries(
    session: ImapSession,
    folder: str,
    uidvalidity: int,
    page: list[int],
    known: dict[int, FetchItem],
    cache: SummaryCache | None,
    cache_key: str,
) -> list[MessageSummary]:
    """The page's summaries: from the cache (with the flags the window brought), from
    the window's own header fields, and the rest by one UID FETCH. Raw 8-bit header
    bytes of a multipart are read in the charset one of its parts declares, as the fetch
    reads them: for just those messages (rare) one more FETCH of BODYSTRUCTURE."""
    if not page:
        return []
    cached: dict[int, MessageSummary] = {}
    if cache is not None:
        for uid in page:
            if (hit := cache.get((cache_key, folder, uidvalidity, uid))) is not None:
                cached[uid] = hit
    # header fields in hand: the window's (it asked for them when nothing was cached)
    fresh = {uid: known[uid] for uid in page
             if uid not in cached and uid in known and known[uid].size is not None}  # fmt: skip
    missing = [uid for uid in page if uid not in cached and uid not in fresh]
    no_flags = [uid for uid in cached if known.get(uid, _NO_ITEM).flags is None]
    fetched: dict[int, FetchItem] = {}
    if missing:
        fetched = await session.uid_fetch(format_uid_set(missing + no_flags), SUMMARY_ITEMS)
        fresh.update((uid, fetched[uid]) for uid in missing if uid in fetched)
    elif no_flags:
        fetched = await session.uid_fetch(format_uid_set(no_flags), "(UID FLAGS)")
    odd = [u for u, i in fresh.items() if needs_declared_charset(i.section("BODY[HEADER") or b"")]
    assumed: dict[int, str | None] = {}
    if odd:
        shapes = await session.uid_fetch(format_uid_set(odd), "(UID BODYSTRUCTURE)")
        assumed = {u: declared_charset(i.structure) for u, i in shapes.items()}
    out: list[MessageSummary] = []
    for uid in page:
        if uid in fresh:
            summary = summary_of(folder, uidvalidity, fresh[uid], assumed.get(uid))
            if cache is not None:
                cache.put((cache_key, folder, uidvalidity, uid), summary)
            out.append(summary)
            continue
        if uid not in cached:
            continue  # expunged meanwhile
        item = fetched.get(uid) or known.get(uid)
        if item is None or item.flags is None:
            continue  # its flags were asked for and it is gone
        shown = visible_flags(item.flags)
        summary = cached[uid]
        if summary.flags != shown:  # cached summaries are shared: replaced, never changed
            summary = summary.model_copy(update={"flags": shown, "seen": "\\Seen" in shown})
            if cache is not None:
                cache.put((cache_key, folder, uidvalidity, uid), summary)
        out.append(summary)
    return out


_NO_ITEM = FetchItem(0)
