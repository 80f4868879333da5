"""IMAP sync: a folder's state and the changes since a state (RFC 7162 CONDSTORE/QRESYNC).

Three ways to tell what changed since a state, chosen by what the server offers
and what the state holds; each answers exactly or raises CannotCalculateChanges
(410), never a wrong answer:

- **QRESYNC** (and the state has a MODSEQ): first what the session was told since
  its SELECT (:mod:`service.protocols.imap.journal`), when that covers the state: the
  flags told with a MODSEQ above the state's, the expunges told after it, and one
  ``UID FETCH`` of the range of arrivals: a cost that follows the changes.
  Otherwise ``UID FETCH 1:n (UID FLAGS) (CHANGEDSINCE m VANISHED)`` (RFC 7162
  §3.2.6) names every message changed since the state (new ones: UID at or above
  the state's UIDNEXT; the others: flags) and, in ``VANISHED (EARLIER)``, every UID
  expunged since; Dovecot looks at every message's MODSEQ for it.
- **CONDSTORE only**: the same FETCH without VANISHED gives arrivals and flag
  changes; expunges are found by counting the UIDs below the state's UIDNEXT
  (``UID SEARCH RETURN (COUNT)``): the same count as the state recorded means
  none was expunged (no UID below UIDNEXT can appear); a lower count cannot say
  which, so 410.
- **Neither** (the state holds a digest of every UID and its flags below its
  UIDNEXT): one ``UID FETCH 1:n (UID FLAGS)``; an unchanged digest means only
  arrivals, which are listed; anything else is 410. This costs a FETCH of every
  message's flags, so on such servers a listing's state costs it too.

The folder's state comes from the session's view (:func:`snapshot`: a NOOP and a
STATUS on a warm session; not a new SELECT, which on a big Maildir costs Dovecot a
rescan). A UIDVALIDITY other than the state's is 410. Answers are paged newest first by
UID: at most ``limit`` entries; the intermediate state then records the mark
reached (``target``) and the UID below which changes are still due (``below``),
so the next call looks only below it and ends at that mark (see
:mod:`service.sync.state`). Pure protocol work on a session the caller holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.errors import CannotCalculateChanges
from service.ids import ImapRef
from service.models.message import MessageSummary
from service.models.sync import FlagUpdate
from service.observability.metrics import IMAP_CHANGES
from service.protocols.imap.session import ImapSession, SelectData
from service.protocols.imap.wire import utf7_encode
from service.sync.source import Change, ChangePage
from service.sync.state import ImapMark, ImapState, flags_digest

__all__ = [
    "changes_since",
    "current_state",
    "has_modseq",
    "mark_from_status",
    "snapshot",
    "status_items",
]

_UNTOLD_FLAGS = 8  # changes told without their flags that the journal path fetches itself
Summaries = Callable[[ImapSession, str, int, list[int]], Awaitable[list[MessageSummary]]]
STATUS_ITEMS = ("UIDNEXT", "UIDVALIDITY", "MESSAGES")
_RECENT = "\\recent"


def _visible(flags: list[str] | None) -> list[str]:
    return [f for f in flags or [] if f.lower() != _RECENT]


def has_modseq(session: ImapSession) -> bool:
    """The server offers CONDSTORE (QRESYNC implies it, RFC 7162 §3.2.3)."""
    return bool({"CONDSTORE", "QRESYNC"} & session.capabilities)


def status_items(session: ImapSession) -> tuple[str, ...]:
    """The STATUS items a folder's state needs on this server."""
    return (*STATUS_ITEMS, "HIGHESTMODSEQ") if has_modseq(session) else STATUS_ITEMS


def mark_from_status(session: ImapSession, counters: dict[str, int]) -> tuple[int, ImapMark] | None:
    """(UIDVALIDITY, mark) from one STATUS reply; None when the server left an item out.

    Without MODSEQ the mark has no flags digest (STATUS cannot give one): changes
    since it answer 410 unless the server has CONDSTORE by then. Listings give
    states with a digest."""
    uidvalidity = counters.get("UIDVALIDITY")
    uidnext = counters.get("UIDNEXT")
    messages = counters.get("MESSAGES")
    if not uidvalidity or not uidnext or messages is None or messages >= uidnext:
        return None
    modseq = counters.get("HIGHESTMODSEQ") if has_modseq(session) else None
    return uidvalidity, ImapMark(uidnext, messages, modseq or None)


async def _flags_below(session: ImapSession, uidnext: int) -> dict[int, list[str]]:
    """Every message's flags below ``uidnext``: one UID FETCH (UID FLAGS)."""
    if uidnext <= 1:
        return {}
    items = await session.uid_fetch(f"1:{uidnext - 1}", "(UID FLAGS)")
    return {uid: _visible(item.flags) for uid, item in items.items() if uid < uidnext}


async def _uidnext(session: ImapSession, data: SelectData) -> int:
    """UIDNEXT as reported, else the highest UID + 1 (every UID at or above it is still
    new to a state that records it)."""
    if data.uidnext is not None:
        return data.uidnext
    found = await session.uid_search(["ALL"])
    top = found.highest(1)
    return top[0] + 1 if top else 1


async def snapshot(session: ImapSession, folder: str) -> SelectData:
    """Select ``folder`` (a warm session only NOOPs) and describe its view at this moment:
    the real SELECT's data, or after a NOOP one ``STATUS (UIDNEXT MESSAGES UIDVALIDITY
    [HIGHESTMODSEQ])`` of it (Dovecot answers from the session's view, so it matches what
    the next commands see; other servers may answer an older moment, which only makes
    the state older: safe). A STATUS that leaves an item out: a real SELECT. With
    CONDSTORE, the STATUS is left out while the session's view has not changed since the
    last one (:attr:`ImapSession.view_mark`): a warm page then costs the NOOP and its
    FETCH."""
    await session.select(folder)
    if session.select_data is not None:
        return session.select_data
    if has_modseq(session) and (kept := session.view_mark) is not None:
        return kept  # nothing reported since that STATUS (or SELECT): the view is its
    seen = session.changes_reported
    counters = await session.status(utf7_encode(folder), status_items(session))
    found = mark_from_status(session, counters)
    if found is not None:
        uidvalidity, mark = found
        data = SelectData(uidvalidity, mark.uidnext, mark.exists, mark.modseq)
        if uidvalidity == session.uidvalidity and session.changes_reported == seen:
            session.keep_mark(data)  # and not when the STATUS reply reported a change
        return data
    await session.select(folder, fresh=True)
    assert session.select_data is not None  # noqa: S101 - set by a real SELECT
    return session.select_data


async def current_state(
    session: ImapSession, folder: str, *, mailbox: str, digest: bool = True
) -> ImapState:
    """The state of ``folder`` of ``mailbox`` (:func:`~service.sync.state.mailbox_tag`)
    now (:func:`snapshot`). Without MODSEQ, one FETCH of every message's flags adds the
    digest (its cost grows with the folder); ``digest=False`` leaves it out, and the
    state then answers 410 (a listing's later pages: the first page has one)."""
    data = await snapshot(session, folder)
    uidnext = await _uidnext(session, data)
    if has_modseq(session) and data.highestmodseq is not None:
        mark = ImapMark(uidnext, data.exists, data.highestmodseq)
    elif not digest:
        mark = ImapMark(uidnext, data.exists)
    else:
        flags = await _flags_below(session, uidnext)
        mark = ImapMark(uidnext, len(flags), None, flags_digest(flags))
    return ImapState(folder, data.uidvalidity, mark, mailbox=mailbox)


@dataclass(frozen=True)
class _Found:
    """Changes of the UIDs below ``below``: UID → flags (created or updated), destroyed."""

    changed: dict[int, list[str]]
    destroyed: set[int]


async def _by_modseq(
    session: ImapSession, base: ImapMark, below: int, target: ImapMark, *, vanished: bool
) -> _Found:
    """``UID FETCH 1:below-1 (UID FLAGS) (CHANGEDSINCE m [VANISHED])`` after the snapshot:
    a flag change made between the two (MODSEQ above the target's) is left to the next
    round, so that no event runs ahead of its id; without ``vanished`` (no QRESYNC) the
    UIDs below the old UIDNEXT are counted instead, and fewer than the state recorded
    means expunges the server cannot name: 410."""
    if not vanished and base.uidnext > 1:
        found = await session.uid_search(["UID", f"1:{base.uidnext - 1}"], count=True)
        if found.count != base.exists:
            raise CannotCalculateChanges(
                "Messages were expunged since this state and the server (no QRESYNC) cannot "
                "say which: list the folder again."
            )
    if below <= 1 or base.modseq is None:
        return _Found({}, set())
    items, expunged = await session.uid_fetch_changed(
        f"1:{below - 1}", base.modseq, vanished=vanished
    )
    later = target.modseq if target.modseq is not None else 0
    changed = {
        u: _visible(i.flags)
        for u, i in items.items()
        if u < below and not (u < base.uidnext and i.modseq is not None and i.modseq > later)
    }
    gone = {u for u in expunged if u < min(below, base.uidnext) and u not in items}
    return _Found(changed, gone)


async def _by_journal(
    session: ImapSession, folder: str, base: ImapMark, below: int, target: ImapMark
) -> _Found | None:
    """What :func:`_by_modseq` finds, from what the session was told since its SELECT
    (:mod:`service.protocols.imap.journal`): flags as told with their MODSEQ, and one
    ``UID FETCH a:b (UID FLAGS)`` of the range of arrivals (contiguous, at the end: the
    server looks at those messages only; a set of scattered UIDs would cost the span
    between them on Dovecot). A flag change told without its flags (the session's own
    ``STORE .SILENT``) is fetched by its UID. None when the journal cannot answer for
    this state (it started after it, it broke, an expunge cannot be placed before or
    after it, or the state holds messages the session's view never held)."""
    if base.modseq is None or target.modseq is None:
        return None
    journal = session.journal_for(folder, base.modseq, base.uidnext)
    if journal is None or journal.view < target.modseq:
        # (the second: a target the journal has not been told all the way to; every
        # path today takes the target right after a full sync, where the two agree)
        return None
    expunged = journal.expunged_since(base.modseq)
    if expunged is None:
        return None
    older = min(below, base.uidnext)
    changed: dict[int, list[str]] = {}
    unknown: list[int] = []
    for uid, (modseq, flags) in journal.changed_since(base.modseq).items():
        if uid >= older or uid in expunged or modseq > target.modseq:
            continue  # an arrival, gone, or changed again after the target: the next round's
        if flags is None:
            unknown.append(uid)
        else:
            changed[uid] = _visible(list(flags))
    if len(unknown) > _UNTOLD_FLAGS:
        return None  # many of the session's own silent STOREs: one CHANGEDSINCE is cheaper
    for uid in unknown:  # rare: one command each (a set would cost its span)
        items = await session.uid_fetch(str(uid), "(UID FLAGS MODSEQ)")
        item = items.get(uid)
        if item is None:
            continue  # expunged meanwhile: told, and the next round's
        if item.modseq is None:
            return None  # the server left MODSEQ out: let CHANGEDSINCE say
        if base.modseq < item.modseq <= target.modseq:
            changed[uid] = _visible(item.flags)
    if below > base.uidnext:  # arrivals: UIDs at or above the state's UIDNEXT
        for uid, item in (
            await session.uid_fetch(f"{base.uidnext}:{below - 1}", "(UID FLAGS)")
        ).items():
            if base.uidnext <= uid < below:
                changed[uid] = _visible(item.flags)
    return _Found(changed, {u for u in expunged if u < older})


def _check_digest(base: ImapMark, flags: dict[int, list[str]]) -> None:
    older = {u: f for u, f in flags.items() if u < base.uidnext}
    if len(older) != base.exists or flags_digest(older) != base.digest:
        raise CannotCalculateChanges(
            "Flags changed or messages were expunged since this state, and the server "
            "(no CONDSTORE) cannot say which: list the folder again."
        )


async def changes_since(
    session: ImapSession, state: ImapState, limit: int, summaries: Summaries
) -> ChangePage:
    """The changes since ``state`` in its folder, at most ``limit`` entries, newest first.

    Raises CannotCalculateChanges (410) when the server cannot tell exactly,
    NotFound when the folder is gone, and the session's upstream errors.
    """
    folder, base = state.folder, state.base
    qresync = "QRESYNC" in session.capabilities and base.modseq is not None
    if qresync:
        qresync = "QRESYNC" in await session.enable("QRESYNC")
    data = await snapshot(session, folder)
    uidvalidity = data.uidvalidity
    if uidvalidity != state.uidvalidity:
        raise CannotCalculateChanges("The folder's UIDVALIDITY changed: list it again.")
    uidnext = await _uidnext(session, data)
    modseq = data.highestmodseq if has_modseq(session) else None
    target = state.target
    if base.modseq is not None and modseq is not None:
        if modseq < base.modseq or uidnext < base.uidnext:
            raise CannotCalculateChanges("The server's MODSEQ went back: list the folder again.")
        if target is None:
            target = ImapMark(uidnext, data.exists, modseq)
        below = state.below if state.below is not None else target.uidnext
        found = await _by_journal(session, folder, base, below, target) if qresync else None
        IMAP_CHANGES.labels("server" if found is None else "journal").inc()
        if found is None:
            found = await _by_modseq(session, base, below, target, vanished=qresync)
    elif base.digest is not None:
        flags = await _flags_below(session, uidnext)
        _check_digest(base, flags)
        if target is None:
            target = ImapMark(uidnext, len(flags), None, flags_digest(flags))
        below = state.below if state.below is not None else target.uidnext
        found = _Found({u: f for u, f in flags.items() if base.uidnext <= u < below}, set())
    else:
        raise CannotCalculateChanges(
            "This state holds no MODSEQ and no flags digest (on a server without CONDSTORE, "
            "only the state of a listing's first page has one): list the folder again and "
            "keep the first page's state."
        )

    uids = sorted(set(found.changed) | found.destroyed, reverse=True)
    page, more = uids[:limit], len(uids) > limit
    created_uids = [u for u in page if u >= base.uidnext and u in found.changed]
    summaries_by_uid = (
        {s.uid: s for s in await summaries(session, folder, uidvalidity, created_uids)}
        if created_uids
        else {}
    )
    mailbox = state.mailbox
    final = ImapState(folder, uidvalidity, target, mailbox=mailbox)
    out: list[Change] = []
    for i, uid in enumerate(page):
        last = i == len(page) - 1 and not more
        reached = (
            final if last else ImapState(folder, uidvalidity, base, target, uid, mailbox=mailbox)
        ).encode()
        ref = ImapRef(folder, uidvalidity, uid).encode()
        if uid in found.destroyed:
            out.append(Change("destroyed", ref, reached))
        elif uid < base.uidnext:
            now = found.changed[uid]
            update = FlagUpdate(id=ref, flags=now, seen="\\Seen" in now, flagged="\\Flagged" in now)
            out.append(Change("updated", update, reached))
        elif uid in summaries_by_uid:  # else expunged since the FETCH: no event for it
            out.append(Change("created", summaries_by_uid[uid], reached))
    new_state = (
        ImapState(folder, uidvalidity, base, target, page[-1], mailbox=mailbox) if more else final
    )
    return ChangePage(state.encode(), new_state.encode(), more, out)
