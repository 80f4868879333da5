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
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field errors (validation-failed)."
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these error statuses."""
    return {
        s: {"model": Problem, "content": {"application/problem+json": {}}, "description": desc}
        for s in statuses
        for desc in [_DESCRIPTIONS.get(s, "Error")]
    }


_DESCRIPTIONS = {
    400: "Malformed request, id or cursor",
    401: "Mailbox credentials missing or refused",
    403: "Gateway access key missing or wrong",
    404: "No such message, folder or attachment",
    409: "Idempotency key reused with another body, or mailbox in use",
    410: "The id's UIDVALIDITY no longer matches (stale-id)",
    413: "Over the configured size limit",
    415: "Body type not accepted",
    416: "Range not satisfiable",
    422: "Invalid fields, not supported by the protocol, or all recipients rejected",
    429: "Rate limited",
    502: "The mail server broke the protocol or refused",
    503: "The mail server cannot be reached (Retry-After)",
    504: "The mail server did not answer in time",
}
