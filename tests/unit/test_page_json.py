"""PageEncoder: the bytes pydantic writes for a page, with each summary's JSON kept."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.pagejson import PageEncoder
from service.models.message import MessagePage, MessageSummary


def _summary(n: int, **more: Any) -> MessageSummary:
    uid = n
    fields: dict[str, Any] = {
        "id": f"i{n}",
        "folder": "INBOX",
        "uid": uid,
        "subject": f'Grüße {uid} "quoted" \\ \u2028',
        "from": [{"name": "Zoë", "address": "z@example.test"}],
        "to": [],
        "flags": ["\\Seen"],
        "seen": True,
        "size": 1234,
        **more,
    }
    return MessageSummary.model_construct(None, **fields)


PAGES = [
    MessagePage(items=[_summary(u) for u in (9, 8, 7)], next_cursor="c1", total=40),
    MessagePage(items=[], next_cursor=None),
    MessagePage(items=[_summary(3, uid=None, uidl="abc", flags=[], seen=None)], total=1),
]


@pytest.mark.parametrize("leave_out", ["uidl", "uid"])
@pytest.mark.parametrize("with_total", [True, False])
@pytest.mark.parametrize("page", PAGES)
def test_the_bytes_are_pydantics(page: MessagePage, leave_out: str, with_total: bool) -> None:
    exclude: dict[str, Any] = {"items": {"__all__": {leave_out}}}
    if not with_total:
        exclude["total"] = True
    want = page.model_dump_json(by_alias=True, exclude=exclude).encode()
    encoder = PageEncoder(100)
    assert encoder.encode(page, leave_out=leave_out, with_total=with_total) == want
    assert encoder.encode(page, leave_out=leave_out, with_total=with_total) == want  # kept


def test_a_summary_with_new_flags_is_a_new_object_and_encoded_anew() -> None:
    encoder = PageEncoder(100)
    first = _summary(5)
    page = MessagePage(items=[first])
    before = encoder.encode(page, leave_out="uidl", with_total=False)
    changed = first.model_copy(update={"flags": [], "seen": False})
    after = encoder.encode(MessagePage(items=[changed]), leave_out="uidl", with_total=False)
    assert b'"seen":true' in before and b'"seen":false' in after


def test_it_keeps_at_most_its_entries_and_only_when_asked() -> None:
    encoder = PageEncoder(2)
    page = MessagePage(items=[_summary(u) for u in range(5)])
    encoder.encode(page, leave_out="uidl", with_total=False, remember=False)
    assert len(encoder) == 0
    encoder.encode(page, leave_out="uidl", with_total=False)
    assert len(encoder) == 2
