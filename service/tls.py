"""Client TLS contexts that resume the previous session of the same server.

A full TLS handshake costs the client a certificate-chain verification and the
server a signature; resuming a session (TLS 1.3 tickets, RFC 8446 2.2; TLS 1.2
tickets or session ids, RFC 5077) skips both. asyncio and uvloop create each
connection's ``SSLObject`` through :meth:`ssl.SSLContext.wrap_bio` and offer no
way to pass a session, so :class:`ResumingContext` does it there: every new
client connection to a server name is offered the session of the latest
connection to that name (harvested lazily: a TLS 1.3 ticket arrives after the
handshake, with the server's first data). A server that declines (Dovecot with
one login process per connection, its default, cannot decrypt another process's
tickets) simply does a full handshake; nothing else changes, and the certificate
was verified when the session was first made.

Use one context per service (e.g. per protocol): a session is offered by server
name only, and a server listening on several ports may keep separate sessions.
"""

from __future__ import annotations

import ssl
from typing import Any


class ResumingContext(ssl.SSLContext):
    """An :class:`ssl.SSLContext` for clients that offers each server name the session
    of its latest connection."""

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        self._latest: dict[str, ssl.SSLObject] = {}
        self._sessions: dict[str, ssl.SSLSession] = {}

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = server_hostname.decode() if isinstance(server_hostname, bytes) else server_hostname
        if server_side or not name:
            return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if session is None:
            session = self.session_for(name)
        try:
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        except ValueError:  # a session the ssl module cannot copy: connect without it
            self._sessions.pop(name, None)
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname)
        self._latest[name] = obj
        return obj

    def session_for(self, name: str) -> ssl.SSLSession | None:
        """The session to offer ``name`` next: its latest connection's once that one holds
        a ticket (so its handshake is complete), else the one offered before."""
        latest = self._latest.get(name)
        try:
            found: Any = latest.session if latest is not None else None
        except (ValueError, ssl.SSLError):
            found = None
        if isinstance(found, ssl.SSLSession) and found.has_ticket:
            self._sessions[name] = found
        return self._sessions.get(name)


def client_context(cafile: str | None) -> ResumingContext:
    """A verifying client context (as :func:`ssl.create_default_context` makes one: the
    CA file, else the system store; host names checked), TLS 1.2 at least, resuming."""
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
