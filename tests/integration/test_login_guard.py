"""The mail context's login guard, through the real app and Dovecot: a refused login
leaving the route is told to the limiter, and every request is settled once it is over."""

from __future__ import annotations

import httpx
import pytest
from mailboxes import Mailbox

from service.config import Settings
from service.main import create_app
from service.state.limiter import LoginAttempt, LoginLimiter

pytestmark = pytest.mark.mailstack


class Spy:
    """Records what the app's limiter is told, and still tells it."""

    def __init__(self, limiter: LoginLimiter) -> None:
        self.refused: list[LoginAttempt] = []
        self.finished: list[LoginAttempt] = []
        refused, finished = limiter.login_refused, limiter.finished

        async def login_refused(attempt: LoginAttempt) -> None:
            self.refused.append(attempt)
            await refused(attempt)

        def on_finished(attempt: LoginAttempt) -> None:
            self.finished.append(attempt)
            finished(attempt)

        limiter.login_refused = login_refused  # type: ignore[method-assign]
        limiter.finished = on_finished  # type: ignore[method-assign]


async def test_refused_login_is_counted_and_every_request_settled(
    settings: Settings, mailbox: Mailbox
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        spy = Spy(app.state.state.limiter)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            wrong = Mailbox(mailbox.address, "wrong-password").auth
            r = await client.get("/v1/messages", headers=wrong)
            assert r.status_code == 401 and r.json()["code"] == "auth-failed"
            assert len(spy.refused) == 1 and spy.finished == spy.refused

            r = await client.get("/v1/messages", headers=mailbox.auth)
            assert r.status_code == 200, r.text
            r = await client.get("/v1/folders", headers=mailbox.auth)
            assert r.status_code == 200, r.text
            assert len(spy.refused) == 1 and len(spy.finished) == 3
            # hashes are made only for the logins: the reused session's request made none
            assert all("secret" not in vars(a) for a in spy.finished[2:])
