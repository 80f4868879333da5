"""FastAPI dependencies and the checks they are made of: settings, gateway key, mailbox
credentials, provider, protocol."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Annotated, Any, Literal

from anyio import CancelScope
from fastapi import Depends, Query, Request

from service.config import Provider, Settings
from service.errors import AuthFailed, AuthRequired, Forbidden, ValidationFailed
from service.protocols.base import Credentials


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _optional_header(name: str, title: str, description: str) -> dict[str, Any]:
    """An optional string header as FastAPI documents a ``Header()`` parameter."""
    schema = {"anyOf": [{"type": "string"}, {"type": "null"}], "description": description,
              "title": title}  # fmt: skip
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": schema}  # fmt: skip


CONTEXT_HEADERS = [
    _optional_header(
        "x-api-key",
        "X-Api-Key",
        "Gateway access key; required only when keys are configured.",
    ),
    _optional_header(
        "x-mail-provider", "X-Mail-Provider", "A provider named in the providers file."
    ),
]
"""The headers the mail context reads from the request itself (not as FastAPI
parameters, which cost per request): added to every /v1 operation's document."""


def check_api_key(settings: Settings, x_api_key: str | None) -> None:
    """403 unless the key's SHA-256 is configured (constant-time compare)."""
    if not settings.api_key_hashes:
        return
    digest = hashlib.sha256((x_api_key or "").encode()).hexdigest()
    ok = False
    for allowed in settings.api_key_hashes:
        ok |= hmac.compare_digest(digest, allowed)
    if not ok or not x_api_key:
        raise Forbidden("A valid X-API-Key header is required.")


def get_credentials(request: Request) -> Credentials:
    """Mailbox credentials of this request; 401 auth-required when absent or unreadable.

    Read from the headers directly (documented as OpenAPI security schemes, so that
    the interactive docs can send them): ``Authorization: Basic`` or ``Bearer`` with
    ``X-Mail-User``.
    """
    authorization = request.headers.get("authorization")
    x_mail_user = request.headers.get("x-mail-user")
    if not authorization:
        raise AuthRequired("Send mailbox credentials: Authorization: Basic or Bearer.")
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise AuthRequired(
                "The Basic credentials are not valid base64 of user:password."
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep or not user or not password:
            raise AuthRequired("The Basic credentials must be user:password, both non-empty.")
        if len(user) > 512 or len(password) > 1024:
            raise AuthRequired("The Basic credentials are too long.")
        _check_printable(user)
        _check_printable(password)
        return Credentials(user=user, secret=password, kind="basic")
    if scheme.lower() == "bearer":
        if not value or not x_mail_user:
            raise AuthRequired("Bearer credentials need a token and the X-Mail-User header.")
        if len(x_mail_user) > 512 or len(value) > 16384:
            raise AuthRequired("The Bearer credentials are too long.")
        _check_printable(x_mail_user)
        _check_printable(value)
        return Credentials(user=x_mail_user.strip(), secret=value, kind="xoauth2")
    raise AuthRequired("Unsupported Authorization scheme: use Basic or Bearer.")


def _check_printable(value: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise AuthRequired("Credentials must not contain control characters.")


def guarded_login(request: Request, provider: Provider, creds: Credentials) -> Credentials:
    """The credentials, guarded: a login they make answers 429 without reaching the
    mail server when it is over the limits (see :mod:`service.state.limiter`); a
    refused login (AuthFailed leaving the route or its response) is counted.

    The settling runs on the request's exit stack, the one FastAPI closes after the
    response (where it closes a dependency with ``yield``): one callback, without the
    generator, context manager and task-group wrappers that such a dependency costs
    on every request."""
    limiter = request.app.state.state.limiter
    client = request.client.host if request.client else ""
    attempt = limiter.attempt(provider.name, creds, client)

    async def settle(
        exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        try:
            if isinstance(exc, AuthFailed):
                with CancelScope(shield=True):  # counted even while the request is cancelled
                    await limiter.login_refused(attempt)
        finally:
            limiter.finished(attempt)
        return False

    request_exit_stack(request).push_async_exit(settle)
    return replace(creds, guard=attempt)


def request_exit_stack(request: Request) -> AsyncExitStack:
    """The exit stack FastAPI opens around each request's endpoint and response
    (``fastapi.routing.request_response``), closed once the response was sent."""
    stack = request.scope.get("fastapi_inner_astack")
    if not isinstance(stack, AsyncExitStack):  # pragma: no cover - a FastAPI change
        raise RuntimeError("FastAPI no longer puts the request's exit stack in the scope.")
    return stack


def get_provider(settings: Settings, x_mail_provider: str | None) -> Provider:
    """The provider named by X-Mail-Provider (``default`` without it); 422 if unknown."""
    name = x_mail_provider or "default"
    provider = settings.providers.get(name)
    if provider is None:
        raise ValidationFailed(f"Unknown provider {name!r} in X-Mail-Provider.")
    return provider


async def get_protocol(
    settings: SettingsDep,
    protocol: Annotated[
        Literal["imap", "pop3"] | None,
        Query(description="Reading protocol; default from MAILGATE_DEFAULT_PROTOCOL."),
    ] = None,
) -> Literal["imap", "pop3"]:
    return protocol or settings.default_protocol


ProtocolDep = Annotated[Literal["imap", "pop3"], Depends(get_protocol)]
