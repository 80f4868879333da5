"""The problem+json examples of the OpenAPI document: one per status (the code a caller
meets most), another where an operation meets another code; ``instance`` is the
operation's path with the example ids."""

from __future__ import annotations

from typing import Any

from service.api.openapi_examples import ID, REQUEST_ID, Examples, one
from service.api.problems import PROBLEM_TYPE_BASE


def _problem(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


_UPSTREAM_REFUSED = {"protocol": "imap", "reply": "[AUTHENTICATIONFAILED] Authentication failed."}

# One problem per status; `instance` and `request_id` are added
# per operation by ``problem_example``.
PROBLEMS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Malformed id", _problem(400, "invalid-id", "Invalid id",
          "The message id is malformed.")),
    401: ("Credentials refused", _problem(401, "auth-failed", "Mailbox credentials refused",
          "The IMAP server refused the credentials.", upstream=_UPSTREAM_REFUSED)),
    403: ("No gateway key", _problem(403, "forbidden", "Forbidden",
          "A valid X-API-Key header is required.")),
    404: ("No such message", _problem(404, "not-found", "Not found", "No such message.")),
    409: ("POP3 maildrop locked", _problem(409, "conflict", "Mailbox in use",
          "The maildrop is locked by another POP3 session.",
          upstream={"protocol": "pop3", "reply": "[IN-USE] Mailbox is locked by another POP3 "
                    "session"})),
    410: ("Stale id", _problem(410, "stale-id", "Stale id",
          "The message id is stale (the folder's UIDVALIDITY changed).")),
    413: ("Over the limit", _problem(413, "too-large", "Too large",
          "The message is over the limit of 26214400 bytes.")),
    415: ("Body type refused", _problem(415, "unsupported-media-type", "Unsupported media type",
          "Send application/json, multipart/form-data or message/rfc822.")),
    416: ("Range past the end", _problem(416, "range-not-satisfiable", "Range not satisfiable",
          "The range starts past the end (1686 bytes).")),
    422: ("A query parameter out of range", _problem(422, "validation-failed",
          "Validation failed", "query.limit: Input should be less than or equal to 200",
          errors=[{"loc": ["query", "limit"], "msg": "Input should be less than or equal to 200",
                   "type": "less_than_equal"}])),
    429: ("Too many logins", _problem(429, "rate-limited", "Too many requests",
          "Too many login attempts for this mailbox; try again later.")),
    502: ("Server refused", _problem(502, "upstream-error", "Mail server error",
          "The IMAP server refused STARTTLS.",
          upstream={"protocol": "imap", "reply": "BAD TLS support isn't enabled."})),
    503: ("Server unreachable", _problem(503, "upstream-unavailable", "Mail server unavailable",
          "The IMAP server cannot be reached.")),
    504: ("Server too slow", _problem(504, "upstream-timeout", "Mail server timeout",
          "The IMAP server did not answer FETCH in time.")),
}  # fmt: skip

# Where another code is what a caller of that operation meets: {(path, method, status): ...}
PROBLEM_OVERRIDES: dict[tuple[str, str, int], tuple[str, dict[str, Any]]] = {
    ("/v1/changes", "get", 410): (
        "Cannot tell what changed: list again",
        _problem(410, "cannot-calculate-changes", "Cannot calculate changes",
                 "The folder's UIDVALIDITY changed: list it again."),
    ),
    ("/v1/messages/{id}", "patch", 422): (
        "POP3 has no flags",
        _problem(422, "not-supported", "Not supported by this protocol",
                 "POP3 has no flags or folders."),
    ),
    ("/v1/send", "post", 422): (
        "A recipient that is no address",
        _problem(422, "validation-failed", "Validation failed",
                 "to.0: Value error, not a valid email address (address): An email address "
                 "must have an @-sign.",
                 errors=[{"loc": ["to", "0"], "msg": "Value error, not a valid email address "
                          "(address): An email address must have an @-sign.",
                          "type": "value_error"}]),
    ),
    **{
        (path, method, 415): (
            "A body that is not JSON",
            _problem(415, "unsupported-media-type", "Unsupported media type",
                     "Send the body as application/json."),
        )
        for path, method in (("/v1/messages/{id}", "patch"), ("/v1/messages/delete", "post"))
    },
    ("/readyz", "get", 503): (
        "A server's port unreachable",
        _problem(503, "upstream-unavailable", "Mail server unavailable",
                 "A configured mail server cannot be reached.",
                 checks={"default.smtp": "ok", "default.imap": "unreachable",
                         "default.pop3": "ok"}),
    ),
}  # fmt: skip

_PATH_EXAMPLES = {"{id}": ID, "{attachment_id}": "2"}


def problem_example(path: str, method: str, status: int) -> Examples | None:
    """The problem+json example of this operation's ``status`` answer, or None."""
    found = PROBLEM_OVERRIDES.get((path, method, status)) or PROBLEMS.get(status)
    if found is None:
        return None
    summary, body = found
    instance = path
    for template, value in _PATH_EXAMPLES.items():
        instance = instance.replace(template, value)
    return one(summary, {**body, "instance": instance, "request_id": REQUEST_ID})
