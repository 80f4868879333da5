"""The change journal (service/protocols/imap/journal.py) fed with reply lines as the
session hands them over (without ``* ``; literal data as ``bytearray``). The lines are
Dovecot 2.3's, as recorded with QRESYNC enabled; what it does with them on a real
server is in tests/integration/test_sync_journal.py."""

from __future__ import annotations

import pytest

from service.protocols.imap import journal as journal_module
from service.protocols.imap.journal import ChangeJournal


def fresh(modseq: int = 6, uidnext: int = 6) -> ChangeJournal:
    return ChangeJournal("INBOX", 1796098389, modseq, uidnext)


def test_a_noop_reply_records_flag_changes_and_expunges_in_order() -> None:
    j = fresh()
    j.hear([b"1 FETCH (UID 1 MODSEQ (7) FLAGS (\\Seen \\Recent))", b"VANISHED 2,4:5",
            b"5 EXISTS", b"4 RECENT"], fetch_command=False)  # fmt: skip
    assert not j.broken
    assert j.changed_since(6) == {1: (7, ("\\Seen", "\\Recent"))}
    assert j.changed_since(7) == {}
    # told after the view was at 6: above 6; not yet placed above or below 7
    assert j.expunged_since(6) == {2, 4, 5}
    assert j.expunged_since(7) is None
    j.seen(10, 6)  # a STATUS of the folder, nothing else reported: the view is at 10
    assert j.expunged_since(7) is None  # expunged somewhere in 7..10
    assert j.expunged_since(10) == set()
    assert j.expunged_since(12) == set()


def test_an_expunge_is_placed_by_the_views_known_points() -> None:
    j = fresh(20)
    j.hear([b"VANISHED 3"], fetch_command=False)
    j.seen(25, 6)
    j.hear([b"VANISHED 9"], fetch_command=False)
    j.seen(30, 6)
    assert j.expunged_since(20) == {3, 9}
    assert j.expunged_since(25) == {9}
    assert j.expunged_since(30) == set()
    assert j.expunged_since(22) is None  # 3 may be before or after 22
    assert j.expunged_since(27) is None


def test_own_store_and_fetch_replies_count_with_their_modseq() -> None:
    j = fresh(10)
    # UID STORE ... +FLAGS.SILENT: MODSEQ without FLAGS; a FETCH of BODY[] sets \Seen
    j.hear([b"2 FETCH (UID 3 MODSEQ (11))"], fetch_command=False)
    j.hear([b"3 FETCH (UID 4 FLAGS (\\Seen) BODY[] {19}", bytearray(b"Subject: x\r\n\r\nhi\r\n"),
            b")", b"3 FETCH (UID 4 MODSEQ (12))"], fetch_command=True)  # fmt: skip
    # solicited data without MODSEQ (a listing) tells no change; the change comes after
    j.hear([b"4 FETCH (UID 5 FLAGS (\\Seen))", b"4 FETCH (UID 5 MODSEQ (13) FLAGS (\\Seen))"],
           fetch_command=True)  # fmt: skip
    assert not j.broken
    # a STORE .SILENT tells no flags: the answer fetches them
    assert j.changed_since(10) == {3: (11, None), 4: (12, None), 5: (13, ("\\Seen",))}
    # the highest MODSEQ told for a UID wins, whatever the order; at the same MODSEQ the
    # news with its flags
    j.hear([b"4 FETCH (UID 5 FLAGS () MODSEQ (12))", b"3 FETCH (UID 4 MODSEQ (12) FLAGS ())"],
           fetch_command=True)  # fmt: skip
    assert j.changed_since(11) == {4: (12, ()), 5: (13, ("\\Seen",))}
    j.hear([b"3 FETCH (UID 4 MODSEQ (12))"], fetch_command=False)
    assert j.changed_since(11)[4] == (12, ())


def test_other_replies_leave_it_alone() -> None:
    j = fresh()
    j.hear([
        b"STATUS INBOX (MESSAGES 112 UIDNEXT 173 UIDVALIDITY 1796090891 HIGHESTMODSEQ 374)",
        b"ESEARCH (TAG \"A1\") UID ALL 1:5",
        b"VANISHED (EARLIER) 7:9",  # the answer to a CHANGEDSINCE question, not news
        b"OK [HIGHESTMODSEQ 10] NOOP completed",
        b"1 FETCH (UID 1 FLAGS () ENVELOPE (NIL \"hello\" NIL NIL NIL NIL NIL NIL NIL NIL))",
    ], fetch_command=True)  # fmt: skip
    assert not j.broken
    assert j.changed_since(0) == {} and j.expunged_since(0) == set()


@pytest.mark.parametrize(
    ("lines", "fetch_command"),
    [
        ([b"3 EXPUNGE"], False),  # by sequence number: cannot be named
        ([b"1 FETCH (UID 5 FLAGS (\\Seen))"], False),  # a flag change without its MODSEQ
        ([b"1 FETCH (MODSEQ (9) FLAGS ())"], True),  # a MODSEQ without its UID
        ([b"OK [NOMODSEQ] Sorry, modsequences have not been enabled"], False),
        ([b"VANISHED 3:x"], False),
        ([b"1 FETCH (UID 1 BODY[] {2}", bytearray(b"hi"), b" MODSEQ (9))"], True),
        ([b"1 FETCH (UID 1 MODSEQ (9) RFC822.SIZE 4)"], True),  # MODSEQ among other items
        ([b"1 FETCH (UID 1 RFC822.SIZE 4)"], False),  # data nobody asked for
        # a subject that spells a MODSEQ item is taken for one: the server then answers
        ([b'1 FETCH (UID 1 ENVELOPE (NIL "MODSEQ (9)" NIL NIL NIL NIL NIL NIL NIL NIL))'], True),
    ],
)
def test_what_it_cannot_read_breaks_it(lines: list[bytes | bytearray], fetch_command: bool) -> None:
    j = fresh()
    j.hear(lines, fetch_command=fetch_command)
    assert j.broken
    assert not j.usable("INBOX", 1796098389, 6, 6)


def test_a_response_told_between_commands_breaks_it() -> None:
    j = fresh()
    j.lost_untagged()
    assert not j.usable("INBOX", 1796098389, 6, 6)


def test_usable_only_for_its_folder_uidvalidity_and_states_since_its_select() -> None:
    j = fresh(50, 6)
    assert j.usable("INBOX", 1796098389, 50, 6) and j.usable("INBOX", 1796098389, 80, 6)
    assert not j.usable("INBOX", 1796098389, 49, 6)
    assert not j.usable("Archive", 1796098389, 60, 6)
    assert not j.usable("INBOX", 1, 60, 6)


def test_usable_only_for_states_whose_messages_the_view_held() -> None:
    # A message the view never held is not told about: changed or expunged before the
    # session's next sync, it comes as a bare EXISTS. A state that holds such messages
    # (a UIDNEXT above the view's at a known point at or below its MODSEQ) is the server's.
    j = fresh(50, 10)
    assert j.usable("INBOX", 1796098389, 55, 10)
    assert not j.usable("INBOX", 1796098389, 55, 12)  # taken elsewhere: 10, 11 unseen here
    j.seen(60, 12)  # the view holds them now
    assert not j.usable("INBOX", 1796098389, 55, 12)  # the known point at or below 55: 10
    assert j.usable("INBOX", 1796098389, 60, 12) and j.usable("INBOX", 1796098389, 70, 12)
    assert not j.usable("INBOX", 1796098389, 70, 13)


def test_past_its_limit_it_starts_again_at_the_views_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(journal_module, "LIMIT", 3)
    j = fresh(10)
    for uid in range(1, 5):
        j.hear([f"{uid} FETCH (UID {uid} MODSEQ ({10 + uid}))".encode()], fetch_command=False)
    j.hear([b"VANISHED 20"], fetch_command=False)
    assert j.usable("INBOX", 1796098389, 10, 6)
    j.seen(14, 6)
    assert j.base == 14 and not j.broken
    assert not j.usable("INBOX", 1796098389, 13, 6)
    assert j.changed_since(14) == {} and j.expunged_since(14) == set()
    j.hear([b"5 FETCH (UID 5 MODSEQ (15))"], fetch_command=False)
    assert j.changed_since(14) == {5: (15, None)}
    # told more than twice its limit between two known points: it gives up
    j.hear([b"VANISHED 100:200"], fetch_command=False)
    assert j.broken


def test_a_view_point_never_goes_back() -> None:
    j = fresh(10)
    j.hear([b"VANISHED 4"], fetch_command=False)
    j.seen(8, 6)  # an older answer than the SELECT's: ignored
    assert j.view == 10 and j.expunged_since(11) is None


def test_it_keeps_a_bounded_number_of_known_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "_POINTS", 3)
    j = fresh(10, 5)
    for modseq in (11, 12, 13):
        j.seen(modseq, 5)
    # the oldest point (10) went, and with it the states before the next one
    assert j.base == 11
    assert not j.usable("INBOX", 1796098389, 10, 5) and j.usable("INBOX", 1796098389, 11, 5)
