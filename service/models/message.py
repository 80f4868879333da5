"""Response shapes for reading mail: summaries, parsed messages, folders, deletes."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from typing_extensions import TypedDict

from service.models.common import Address

FolderRole = Literal["inbox", "sent", "drafts", "trash", "junk", "archive"]


FOLDER_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""A folder name as a request may give it: no control characters (no server has them in
a name, and NUL, CR or LF cannot travel in an IMAP quoted string): 422, not a 404."""


class Folder(BaseModel):
    """One folder (mailbox) and its special-use role."""

    name: str = Field(
        description="The full name, as the other endpoints take it: on servers that keep "
        "the user's folders under INBOX (Cyrus by default) `INBOX.Sent`, else `Sent`."
    )
    delimiter: str | None = None
    role: FolderRole | None = None
    messages: int | None = Field(default=None, description="Only with counts=true.")
    unseen: int | None = Field(default=None, description="Only with counts=true.")
    state: str | None = Field(
        default=None,
        description="Sync state of the folder now, for `GET /v1/changes?since=` (null for "
        "a folder that cannot be selected). On IMAP servers without CONDSTORE this state "
        "answers 410 cannot-calculate-changes: use the listing's `state` there.",
    )


class FolderList(BaseModel):
    items: list[Folder]


class AddressOut(TypedDict):
    """An address as listings show it (a plain object: listings are the hot path)."""

    name: str | None
    address: str


DATE_1970_9999 = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"


class ListParams(BaseModel):
    """The query of ``GET /v1/messages``: one model, so that FastAPI validates it in one
    pass rather than parameter by parameter."""

    protocol: Literal["imap", "pop3"] | None = Field(
        default=None,
        description="imap or pop3. Default: the protocol the id was made by "
        "(for lists: MAILGATE_DEFAULT_PROTOCOL).",
    )
    folder: str = Field(
        default="INBOX",
        min_length=1,
        max_length=1000,
        pattern=FOLDER_PATTERN,
        description="IMAP folder; POP3 has only INBOX. No control characters (422).",
    )
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=4096)
    unseen: bool | None = None
    flagged: bool | None = None
    since: date | None = Field(
        default=None,
        description="On or after this date (IMAP SINCE); years 1970-9999.",
        json_schema_extra={"pattern": DATE_1970_9999},
    )
    before: date | None = Field(
        default=None,
        description="Before this date (IMAP BEFORE); years 1970-9999.",
        json_schema_extra={"pattern": DATE_1970_9999},
    )
    from_: str | None = Field(default=None, alias="from", max_length=500)
    to: str | None = Field(default=None, max_length=500)
    subject: str | None = Field(default=None, max_length=500)
    text: str | None = Field(default=None, max_length=500)
    count: bool = Field(default=False, description="Also return `total` (one more count).")


class MessageSummary(BaseModel):
    """One line of a listing."""

    id: str = Field(description="Opaque, URL-safe, stable across calls and replicas.")
    folder: str
    uid: int | None = Field(default=None, description="IMAP UID (IMAP only).")
    uidl: str | None = Field(default=None, description="POP3 UIDL (POP3 only).")
    message_id: str | None = None
    subject: str | None = None
    from_: list[AddressOut] = Field(default_factory=list, alias="from")
    to: list[AddressOut] = Field(default_factory=list)
    cc: list[AddressOut] = Field(default_factory=list)
    date: str | None = Field(default=None, description="ISO 8601 from the Date header.")
    size: int | None = None
    flags: list[str] = Field(default_factory=list)
    seen: bool | None = Field(default=None, description="null on POP3: it has no flags.")
    has_attachments: bool | None = Field(
        default=None,
        description="From the BODYSTRUCTURE (IMAP); from the Content-Type header (POP3).",
    )

    model_config = {"populate_by_name": True}


class MessagePage(BaseModel):
    items: list[MessageSummary]
    next_cursor: str | None = None
    total: int | None = Field(default=None, description="Only with count=true.")
    state: str | None = Field(
        default=None,
        description="Sync state of the folder, taken before this page was read: "
        "`GET /v1/changes?since=state` answers what changed after it; keep the first page's. "
        "Opaque, URL-safe; any replica reads it. On IMAP servers without CONDSTORE, the first "
        "page's state also costs one FETCH of every message's FLAGS (a digest of them), and "
        "later pages' states answer 410 cannot-calculate-changes.",
    )


class Header(BaseModel):
    name: str
    value: str


class AttachmentInfo(BaseModel):
    id: str = Field(description="Stable within the message: the MIME part path, e.g. '2.1'.")
    filename: str | None = None
    content_type: str
    size: int = Field(description="Decoded size in bytes.")
    disposition: Literal["attachment", "inline"] | None = None
    content_id: str | None = None


class ParsedMessage(BaseModel):
    """A whole message parsed to JSON."""

    id: str
    folder: str
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    subject: str | None = None
    from_: list[Address] = Field(default_factory=list, alias="from")
    sender: Address | None = None
    reply_to: list[Address] = Field(default_factory=list)
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    date: str | None = None
    headers: list[Header] = Field(default_factory=list)
    text: str | None = None
    html: str | None = None
    attachments: list[AttachmentInfo] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    size: int | None = None
    removed: bool = Field(
        default=False,
        description="True: the message is deleted on the server once this response is "
        "fully written (mode=remove).",
    )
    defects: list[str] = Field(default_factory=list)

    model_config = {"populate_by_name": True}


class DeleteRequest(BaseModel):
    ids: list[Annotated[str, Field(max_length=2100, pattern=r"^[\x21-\x7e]+$")]] = Field(
        min_length=1, max_length=200, description="Message ids (at most 200)."
    )


class DeleteResult(BaseModel):
    id: str
    status: int
    code: str | None = None


class DeleteResults(BaseModel):
    results: list[DeleteResult]


class MessagePatch(BaseModel):
    """What to change; JSON booleans are ``true``/``false`` only (``"yes"``, ``1`` or
    ``"false"`` are 422, never read as a flag the caller may not have meant)."""

    model_config = ConfigDict(extra="forbid")

    seen: StrictBool | None = None
    flagged: StrictBool | None = None
    folder: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        pattern=FOLDER_PATTERN,
        description="Move the message to this folder (IMAP), named as `GET /v1/folders` "
        "names it (Cyrus: `INBOX.Archive`); one that does not exist is 404 `not-found`.",
    )
