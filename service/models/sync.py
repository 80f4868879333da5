"""Response shapes of sync: the changes since a state (RFC 8620 §5.2's /changes, for mail)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.models.message import MessageSummary


class FlagUpdate(BaseModel):
    """A message whose flags changed: its id and its current flags."""

    id: str
    flags: list[str] = Field(description="Current flags (\\Recent left out).")
    seen: bool
    flagged: bool


class Changes(BaseModel):
    """What changed in one folder between two states."""

    old_state: str = Field(description="The `since` asked for.")
    new_state: str = Field(
        description="The state after these changes; with `has_more`, an intermediate one: "
        "call again with `since=new_state`."
    )
    has_more: bool = Field(description="More changes follow: call again with new_state.")
    created: list[MessageSummary] = Field(
        description="New in the folder (arrived, appended, moved in), newest first, with "
        "current flags. A message created and changed since the state appears here only."
    )
    updated: list[FlagUpdate] = Field(description="Flags set or cleared (IMAP only).")
    destroyed: list[str] = Field(
        description="Ids gone from the folder (expunged, moved out). A message created and "
        "destroyed since the state is left out."
    )
