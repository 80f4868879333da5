"""Request and response shapes of POST /v1/send."""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from service.models.common import Address

_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 ftext, bounded
# Headers the draft sets from its own fields; callers use those fields instead.
_RESERVED = {
    "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition", "sender", "resent-bcc",
}  # fmt: skip


def _no_crlf(value: str, what: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{what} must not contain CR, LF or NUL")
    return value


class AttachmentIn(BaseModel):
    """An attachment given inline in JSON (base64)."""

    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(default=None, max_length=255)
    content_type: str = Field(default="application/octet-stream", max_length=255)
    content_base64: str
    content_id: str | None = Field(default=None, max_length=255)
    inline: StrictBool = Field(
        default=False, description="`true` or `false` (a JSON boolean, not a string)."
    )

    @field_validator("filename", "content_type", "content_id")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return None if value is None else _no_crlf(value, "attachment fields")

    @field_validator("content_type")
    @classmethod
    def _mime_type(cls, value: str) -> str:
        main, sep, sub = value.partition(";")[0].strip().partition("/")
        if not sep or not main or not sub or main.lower() == "multipart":
            raise ValueError("content_type must be a non-multipart type/subtype")
        return value

    def decoded(self) -> bytes:
        try:
            return base64.b64decode(self.content_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("content_base64 is not valid base64") from exc


class Draft(BaseModel):
    """A message to compose and send. At least one recipient in `to`, `cc` or `bcc`
    (else 422); each address entry is exactly one mailbox."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Address | None = Field(
        default=None, alias="from", description="Defaults to the authenticated user."
    )
    to: list[Address] = Field(default_factory=list, max_length=500)
    cc: list[Address] = Field(default_factory=list, max_length=500)
    bcc: list[Address] = Field(default_factory=list, max_length=500)
    reply_to: list[Address] = Field(default_factory=list, max_length=50)
    subject: str | None = Field(default=None, max_length=2000)
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, max_length=100)
    in_reply_to: str | None = Field(default=None, max_length=998)
    references: list[str] = Field(default_factory=list, max_length=200)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=200)

    @field_validator("subject", "in_reply_to")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        return None if value is None else _no_crlf(value, "header values")

    @field_validator("references")
    @classmethod
    def _refs(cls, value: list[str]) -> list[str]:
        for ref in value:
            _no_crlf(ref, "references")
            if not ref.strip() or " " in ref.strip():
                raise ValueError("each reference is one message id")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in _RESERVED:
                raise ValueError(f"header {name!r} is set from the draft's own fields")
            _no_crlf(val, f"header {name}")
        return value

    @model_validator(mode="after")
    def _recipients(self) -> Draft:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("at least one recipient (to, cc or bcc) is required")
        return self


class SendResult(BaseModel):
    """What the SMTP server accepted."""

    message_id: str | None = Field(
        description="The Message-ID header, with angle brackets (null: a raw message had none)."
    )
    accepted: list[str]
    rejected: dict[str, str] = Field(description="address → the server's reply")
    saved_to: str | None = Field(
        default=None,
        description="Folder the copy was appended to (save_to_sent=true): the \\Sent "
        "special-use folder, else one named Sent (Sent Items, Sent Messages, Sent Mail), else "
        "a new `Sent` created where the server keeps the user's folders (Cyrus: `INBOX.Sent`).",
    )
