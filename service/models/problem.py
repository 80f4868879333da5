"""The RFC 9457 problem document every error answers with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class UpstreamReply(BaseModel):
    protocol: str = Field(examples=["smtp"])
    reply: str = Field(description="What the mail server said, secrets removed.")


class Problem(BaseModel):
    """application/problem+json"""

    type: str = Field(examples=["https://mailgate.dev/problems/not-found"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str = Field(examples=["not-found"])
    upstream: UpstreamReply | None = None
    request_id: str | None = Field(
        default=None,
        description="The request's id, as in the X-Request-ID response header and the logs.",
        examples=["4f0c2a8e9b7d4e61a2c3d4e5f6a7b8c9"],
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field errors (validation-failed)."
    )


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {"description": 'Basic realm="mailgate"', "schema": {"type": "string"}}
    },
    409: _RETRY_AFTER,
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these error statuses (application/problem+json;
    the Problem schema is added to the components by the app)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 401, 403, 429}):
        entry: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {"application/problem+json": {"schema": PROBLEM_REF}},
        }
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


_DESCRIPTIONS = {
    400: "Malformed request, id or cursor",
    401: "Mailbox credentials missing or refused",
    403: "Gateway access key missing or wrong",
    404: "No such message, folder or attachment",
    409: "Idempotency key reused with another body; POP3 maildrop in use (Retry-After); "
    "IMAP without UIDPLUS while other messages are flagged \\Deleted",
    410: "The id's UIDVALIDITY no longer matches (stale-id); the changes since a state "
    "cannot be told exactly (cannot-calculate-changes): list again",
    413: "Over the configured size limit",
    415: "Body type not accepted",
    416: "Range not satisfiable",
    422: "Invalid fields, not supported by the protocol, or all recipients rejected",
    429: "Too many refused logins for this mailbox (Retry-After)",
    502: "The mail server broke the protocol or refused",
    503: "The mail server cannot be reached (Retry-After)",
    504: "The mail server did not answer in time",
}
