"""One error tree for the whole gateway; the API renders each class as problem+json.

::

    MailGatewayError                      500 internal (never shows internals)
    ├── BadRequest                        400 bad-request
    │   └── InvalidId                     400 invalid-id
    ├── AuthRequired                      401 auth-required
    ├── AuthFailed                        401 auth-failed
    ├── Forbidden                         403 forbidden
    ├── NotFound                          404 not-found
    ├── Conflict                          409 conflict
    │   └── MailboxInUse                  409 conflict (Retry-After)
    ├── StaleId                           410 stale-id
    ├── CannotCalculateChanges            410 cannot-calculate-changes
    ├── TooLarge                          413 too-large
    ├── UnsupportedMediaType              415 unsupported-media-type
    ├── RangeNotSatisfiable               416 range-not-satisfiable
    ├── ValidationFailed                  422 validation-failed
    ├── NotSupported                      422 not-supported
    ├── RecipientRejected                 422 recipient-rejected
    ├── RateLimited                       429 rate-limited (Retry-After)
    └── UpstreamFailure                   (the mail server's side)
        ├── UpstreamError                 502 upstream-error
        ├── UpstreamUnavailable           503 upstream-unavailable (Retry-After)
        │   └── state.StoreUnavailable    503: the shared state store (Redis) is down
        └── UpstreamTimeout               504 upstream-timeout

Protocol adapters raise these (``raise X(...) from exc``); nothing else crosses
from ``service/protocols`` into ``service/api``. Messages must never contain a
password, token or other secret: callers pass ``upstream`` replies through
:func:`scrub` first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Upstream:
    """What the mail server said, secrets removed."""

    protocol: str
    reply: str


_SECRET_PATTERNS = [
    # Protocol lines that carry credentials: a SASL initial response after
    # AUTH/AUTHENTICATE <MECHANISM>, the password of an IMAP "tag LOGIN user pass"
    # or a POP3 "PASS", and bearer tokens. Ordinary words after them stay.
    re.compile(r"(\bAUTH(?:ENTICATE)?\s+[A-Z0-9_-]+\s+)[A-Za-z0-9+/=]{4,}"),
    re.compile(r"(?im)(^\s*\S+\s+LOGIN\s+\S+\s+)\S+"),
    re.compile(r"(?im)(^\s*PASS\s+)\S+"),
    re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=-]+"),
]


def scrub(text: str, secrets: tuple[str, ...] = (), limit: int = 500) -> str:
    """Remove credentials and known secret values from a server reply or message."""
    out = text
    for secret in secrets:
        if secret and len(secret) >= 3:
            out = out.replace(secret, "***")
    for pat in _SECRET_PATTERNS:
        out = pat.sub(lambda m: m.group(1) + "***", out)
    out = out.replace("\r", " ").replace("\n", " ").strip()
    if len(out) > limit:
        out = out[:limit] + "…"
    return out


class MailGatewayError(Exception):
    """Root of every error the gateway renders; subclasses fix status and code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        upstream: Upstream | None = None,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.upstream = upstream
        self.retry_after = retry_after
        self.extra = extra or {}
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        """HTTP headers this error adds to its response."""
        if self.retry_after is not None:
            return {"Retry-After": str(self.retry_after)}
        return {}


class BadRequest(MailGatewayError):
    status, code, title = 400, "bad-request", "Bad request"


class InvalidId(BadRequest):
    code, title = "invalid-id", "Invalid id"


class AuthRequired(MailGatewayError):
    status, code, title = 401, "auth-required", "Mailbox credentials required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="mailgate", charset="UTF-8"'}


class AuthFailed(AuthRequired):
    code, title = "auth-failed", "Mailbox credentials refused"


class Forbidden(MailGatewayError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(MailGatewayError):
    status, code, title = 404, "not-found", "Not found"


class Conflict(MailGatewayError):
    status, code, title = 409, "conflict", "Conflict"


class MailboxInUse(Conflict):
    title = "Mailbox in use"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("retry_after", 2)
        super().__init__(detail, **kw)


class StaleId(MailGatewayError):
    status, code, title = 410, "stale-id", "Stale id"


class CannotCalculateChanges(MailGatewayError):
    """The server cannot tell exactly what changed since a sync state (RFC 8620 §5.2's
    ``cannotCalculateChanges``): the client lists the folder again."""

    status, code, title = 410, "cannot-calculate-changes", "Cannot calculate changes"


class TooLarge(MailGatewayError):
    status, code, title = 413, "too-large", "Too large"


class UnsupportedMediaType(MailGatewayError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class RangeNotSatisfiable(MailGatewayError):
    status, code, title = 416, "range-not-satisfiable", "Range not satisfiable"

    def __init__(self, detail: str | None = None, *, size: int | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"} if self.size is not None else {}


class ValidationFailed(MailGatewayError):
    status, code, title = 422, "validation-failed", "Validation failed"


class NotSupported(MailGatewayError):
    status, code, title = 422, "not-supported", "Not supported by this protocol"


class RecipientRejected(MailGatewayError):
    status, code, title = 422, "recipient-rejected", "All recipients rejected"


class RateLimited(MailGatewayError):
    status, code, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("retry_after", 5)
        super().__init__(detail, **kw)


class UpstreamFailure(MailGatewayError):
    """The mail server failed; the subclass says how."""


class UpstreamError(UpstreamFailure):
    status, code, title = 502, "upstream-error", "Mail server error"


class UpstreamUnavailable(UpstreamFailure):
    status, code, title = 503, "upstream-unavailable", "Mail server unavailable"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("retry_after", 5)
        super().__init__(detail, **kw)


class UpstreamTimeout(UpstreamFailure):
    status, code, title = 504, "upstream-timeout", "Mail server timeout"


ALL_ERRORS: tuple[type[MailGatewayError], ...] = (
    BadRequest,
    InvalidId,
    AuthRequired,
    AuthFailed,
    Forbidden,
    NotFound,
    Conflict,
    StaleId,
    CannotCalculateChanges,
    TooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    ValidationFailed,
    NotSupported,
    RecipientRejected,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
    UpstreamTimeout,
)
