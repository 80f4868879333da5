"""Schemathesis hooks for the fuzz run: every error must be application/problem+json."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is RFC 9457 problem+json with the contract's members."""
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    if not ctype.startswith("application/problem+json"):
        raise AssertionError(f"{response.status_code} answered with {ctype!r}, not problem+json")
    body = response.json()
    missing = {"type", "title", "status", "detail", "code"} - set(body)
    if missing or body["status"] != response.status_code:
        raise AssertionError(f"not a complete problem document: {body!r}")
    return True


@schemathesis.serializer("message/rfc822")
def rfc822(ctx: Any, value: Any) -> bytes:
    """Raw messages go as their bytes (generated strings are encoded as UTF-8)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")
