"""Builds the protocol adapter a request needs from settings, provider and credentials."""

from __future__ import annotations

from typing import Literal

from fastapi import Request

from service.config import Provider, Settings
from service.errors import NotSupported
from service.protocols.base import Credentials, MailboxReader, MessageSender
from service.protocols.imap import imap_reader
from service.protocols.pop3 import Pop3Reader
from service.protocols.smtp import SmtpSender


def make_sender(
    request: Request, settings: Settings, provider: Provider, creds: Credentials
) -> MessageSender:
    server = provider.smtp
    if server is None:
        raise NotSupported(f"Provider {provider.name!r} has no SMTP server.")
    return SmtpSender(
        server,
        creds,
        settings.ssl_context(provider),
        connect_timeout=settings.connect_timeout,
        command_timeout=settings.command_timeout,
        deadline=settings.send_timeout,
    )


def make_reader(
    request: Request,
    settings: Settings,
    provider: Provider,
    creds: Credentials,
    protocol: Literal["imap", "pop3"],
) -> MailboxReader:
    if protocol == "imap":
        if provider.imap is None:
            raise NotSupported(f"Provider {provider.name!r} has no IMAP server.")
        return imap_reader(
            settings, provider, creds, request.app.state.imap_pool, request.app.state.summary_cache
        )
    if provider.pop3 is None:
        raise NotSupported(f"Provider {provider.name!r} has no POP3 server.")
    return Pop3Reader(settings, provider, creds)
