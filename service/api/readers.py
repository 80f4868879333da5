"""One request's mail context: settings, provider and credentials, and the adapters
built from them (SMTP sender, IMAP or POP3 reader)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from service.api.deps import (
    check_api_key,
    get_credentials,
    get_provider,
    guarded_login,
)
from service.config import Provider, Settings
from service.errors import NotSupported
from service.protocols.base import Credentials, MailboxReader, MessageSender
from service.protocols.imap.reader import ImapReader, imap_reader
from service.protocols.pop3.reader import Pop3Reader
from service.protocols.smtp import SmtpSender
from service.sync.source import ChangeTracker


@dataclass(frozen=True)
class MailContext:
    """What every mail route needs; the adapters it makes hold no state of their own."""

    request: Request
    settings: Settings
    provider: Provider
    creds: Credentials

    def sender(self) -> MessageSender:
        server = self.provider.smtp
        if server is None:
            raise NotSupported(f"Provider {self.provider.name!r} has no SMTP server.")
        return SmtpSender(
            server,
            self.creds,
            self.settings.ssl_context(self.provider, "smtp"),
            connect_timeout=self.settings.connect_timeout,
            command_timeout=self.settings.command_timeout,
            deadline=self.settings.send_timeout,
            pool=self.request.app.state.smtp_pool,
            pool_key=self.creds.pool_key(self.provider.name, "smtp"),
        )

    def reader(self, protocol: Literal["imap", "pop3"]) -> MailboxReader:
        return self._reader(protocol)

    def tracker(self, protocol: Literal["imap", "pop3"]) -> ChangeTracker:
        """The same adapter as :meth:`reader`, seen through the sync interface."""
        return self._reader(protocol)

    def _reader(self, protocol: Literal["imap", "pop3"]) -> ImapReader | Pop3Reader:
        if protocol == "imap":
            if self.provider.imap is None:
                raise NotSupported(f"Provider {self.provider.name!r} has no IMAP server.")
            state = self.request.app.state
            return imap_reader(
                self.settings, self.provider, self.creds, state.imap_pool, state.summary_cache
            )
        if self.provider.pop3 is None:
            raise NotSupported(f"Provider {self.provider.name!r} has no POP3 server.")
        return Pop3Reader(
            self.settings, self.provider, self.creds, self.request.app.state.pop3_pool
        )


async def get_context(request: Request) -> MailContext:
    """The one dependency of every /v1 route: gateway key (403), provider (422), mailbox
    credentials (401), then the credentials guarded by the login limits (429; a refused
    login is counted when AuthFailed leaves the route). One plain dependency reading its
    headers itself, not a tree of dependencies and parameters: FastAPI's cost is per
    dependency and parameter (the headers are documented by ``CONTEXT_HEADERS``)."""
    settings: Settings = request.app.state.settings
    headers = request.headers
    check_api_key(settings, headers.get("x-api-key"))
    provider = get_provider(settings, headers.get("x-mail-provider"))
    creds = get_credentials(request)
    return MailContext(request, settings, provider, guarded_login(request, provider, creds))


ContextDep = Annotated[MailContext, Depends(get_context)]
