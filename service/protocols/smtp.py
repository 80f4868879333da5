"""SMTP adapter: sends one message with aiosmtplib under an overall deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from service.config import ServerUrl
from service.errors import (
    AuthFailed,
    MailGatewayError,
    RecipientRejected,
    TooLarge,
    Upstream,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    scrub,
)
from service.observability.mail import mail_command
from service.protocols.base import Credentials, SendOutcome
from service.protocols.pool import SessionPool

log = logging.getLogger("mailgate")


class SmtpSession:
    """One connected, authenticated SMTP connection, reusable for the same credentials."""

    def __init__(self, client: aiosmtplib.SMTP, host: str, port: int) -> None:
        self.client = client
        self.server = (host, port)  # for spans
        self.sent = 0  # messages sent on this connection
        self.broken = False

    @property
    def usable(self) -> bool:
        return self.client.is_connected and not self.broken

    async def ping(self) -> bool:
        try:
            with _command("NOOP", *self.server):
                async with asyncio.timeout(5):
                    return (await self.client.noop()).code == 250
        except (SMTPException, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await _quit_quietly(self.client)

    def abort(self) -> None:
        self.broken = True
        if self.client.is_connected:
            self.client.close()


class SmtpSender:
    """Sends over a pooled, authenticated SMTP connection (MAIL/RCPT/DATA per message).

    Connections are reused for the same provider, user and secret (TLS and AUTH cost
    most of a send). A reused connection is checked with NOOP first, before any
    byte of the message goes out, so a connection the server closed meanwhile is
    replaced without any risk of sending twice. Any error discards the connection.
    """

    def __init__(
        self,
        server: ServerUrl,
        creds: Credentials,
        ssl_context: ssl.SSLContext,
        *,
        connect_timeout: float,
        command_timeout: float,
        deadline: float,
        pool: SessionPool[SmtpSession] | None = None,
        pool_key: str = "",
    ) -> None:
        self._server = server
        self._creds = creds
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._deadline = deadline
        self._pool = pool
        self._key = pool_key

    async def _connect(self) -> SmtpSession:
        client = aiosmtplib.SMTP(
            hostname=self._server.host,
            port=self._server.port,
            use_tls=self._server.security == "implicit",
            # smtp:// requires STARTTLS (aiosmtplib fails if it is not offered);
            # smtp+plain:// never upgrades.
            start_tls=self._server.security == "starttls",
            tls_context=self._ssl,
            timeout=self._command_timeout,
        )
        host, port = self._server.host, self._server.port
        try:
            with _command("CONNECT", host, port):  # greeting, EHLO, STARTTLS, EHLO
                await client.connect(timeout=self._connect_timeout)
                if client.is_ehlo_or_helo_needed:
                    await client.ehlo()
            if not client.supports_extension("auth"):
                # A relay that offers no AUTH (a test server, a trusted smart
                # host): its own policy decides; the credentials are not sent.
                log.debug("SMTP server offers no AUTH; sending without it")
            else:
                await self._creds.guard.before_login()
                with _command("AUTH", host, port):
                    if self._creds.kind == "xoauth2":
                        await client.auth_xoauth2(self._creds.user, self._creds.secret)
                    else:
                        await client.login(self._creds.user, self._creds.secret)
                await self._creds.guard.login_accepted()
        except BaseException:
            if client.is_connected:
                client.close()
            raise
        return SmtpSession(client, host, port)

    async def _session(self) -> SmtpSession:
        """A live session: a reused one that answers NOOP, else a new one."""
        if self._pool is None:
            return await self._connect()
        while True:  # each dead one is discarded: at most the pool's sessions for this key
            session = await self._pool.acquire(self._key, self._connect)
            if not session.sent or await session.ping():
                return session
            self._pool.release(session, healthy=False)

    async def send(self, message: bytes, *, mail_from: str, rcpt_to: list[str]) -> SendOutcome:
        options = ["SMTPUTF8"] if not (mail_from + "".join(rcpt_to)).isascii() else []
        session: SmtpSession | None = None
        ok = False
        try:
            async with asyncio.timeout(self._deadline):
                session = await self._session()
                with _command("SEND", *session.server):  # MAIL FROM, RCPT TO..., DATA
                    errors, _ = await session.client.sendmail(
                        mail_from, rcpt_to, message, mail_options=options
                    )
            session.sent += 1
            ok = True
        except MailGatewayError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        finally:
            if session is not None:
                if self._pool is not None:
                    self._pool.release(session, healthy=ok)
                elif ok:
                    await session.close()
                else:
                    session.abort()  # after an error or timeout: no QUIT to a stuck server
        rejected = {addr: scrub(f"{r.code} {r.message}") for addr, r in errors.items()}
        accepted = [a for a in rcpt_to if a not in rejected]
        return SendOutcome(accepted=accepted, rejected=rejected)

    def _translate(self, exc: BaseException) -> MailGatewayError:
        """Map aiosmtplib and socket errors to the gateway's tree, once."""
        secrets = (self._creds.secret,)

        def up(reply: str) -> Upstream:
            return Upstream("smtp", scrub(reply, secrets))

        if isinstance(exc, SMTPRecipientsRefused):
            rejected = {r.recipient: scrub(f"{r.code} {r.message}") for r in exc.recipients}
            first = up(next(iter(rejected.values()), ""))
            if exc.recipients and all(400 <= r.code < 500 for r in exc.recipients):
                return UpstreamUnavailable(
                    "The SMTP server refused every recipient for now; try again later.",
                    upstream=first,
                    extra={"rejected": rejected},
                )
            return RecipientRejected(
                "The SMTP server refused every recipient.",
                upstream=first,
                extra={"rejected": rejected},
            )
        if isinstance(exc, SMTPResponseException) and exc.code in (530, 535):
            # 530: the relay wants AUTH it never offered; 535: credentials refused.
            return AuthFailed("The SMTP server refused to send without valid credentials.")
        if isinstance(exc, SMTPAuthenticationError):
            if 400 <= exc.code < 500:
                return UpstreamUnavailable(
                    "The SMTP server could not check the credentials now.",
                    upstream=up(f"{exc.code} {exc.message}"),
                )
            return AuthFailed("The SMTP server refused the credentials.")
        if isinstance(exc, SMTPSenderRefused | SMTPDataError) and exc.code == 552:
            return TooLarge(
                "The SMTP server refused the message size.",
                upstream=up(f"{exc.code} {exc.message}"),
            )
        if isinstance(exc, SMTPResponseException):
            reply = up(f"{exc.code} {exc.message}")
            if 400 <= exc.code < 500:
                return UpstreamUnavailable("The SMTP server failed temporarily.", upstream=reply)
            return UpstreamError("The SMTP server refused the request.", upstream=reply)
        if isinstance(exc, TimeoutError | SMTPTimeoutError):
            return UpstreamTimeout("The SMTP server did not answer in time.")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return UpstreamError("The SMTP server's TLS certificate could not be verified.")
        if isinstance(exc, SMTPServerDisconnected):
            return UpstreamError("The SMTP server closed the connection.")
        if isinstance(exc, SMTPConnectError | OSError):
            return UpstreamUnavailable("Cannot connect to the SMTP server.")
        if isinstance(exc, SMTPException):
            # e.g. AUTH or STARTTLS not offered: a configuration/protocol problem.
            return UpstreamError("SMTP failed: " + scrub(str(exc), secrets))
        return UpstreamError("SMTP failed unexpectedly.")


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        with _command("QUIT", client.hostname, client.port):
            async with asyncio.timeout(2):
                await client.quit()
    except (SMTPException, OSError, TimeoutError):
        client.close()


@contextlib.contextmanager
def _command(name: str, host: str | None, port: int | None) -> Iterator[None]:
    """Observe one SMTP step; a 4xx/5xx reply counts as ``refused``."""
    with mail_command("smtp", name, host, port) as call:
        try:
            yield
        except SMTPResponseException:
            call.refused()
            raise
