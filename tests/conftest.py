"""Shared fixtures: the real mail stack, gateway settings, an HTTP client on the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from mailboxes import Mailbox
from mailstack_env import ensure_mailstack, fresh_address, mail_server

from service.config import Settings
from service.main import create_app
from service.serving import new_event_loop, uvicorn_options


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    """Every async test runs on the event loop `mailgate serve` uses (uvloop)."""
    return {"uvloop": new_event_loop}


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    """Against Cyrus (MAILSTACK_SERVER=cyrus) skip the tests of Dovecot-specific facts
    (marker ``dovecot(reason)``); against Dovecot skip the Cyrus-only ones (``cyrus``)."""
    server = mail_server()
    for item in items:
        mark = item.get_closest_marker("dovecot")
        if server == "cyrus" and mark is not None:
            reason = mark.args[0] if mark.args else "asserts a Dovecot-specific fact"
            item.add_marker(pytest.mark.skip(reason=f"Dovecot only: {reason}"))
        if server != "cyrus" and item.get_closest_marker("cyrus") is not None:
            item.add_marker(pytest.mark.skip(reason="Cyrus only (make test-cyrus)"))


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """The running Dovecot + Postfix (started once per run); its env file as a dict,
    with ``MAILSTACK_SERVER`` (dovecot or cyrus: the IMAP and POP3 ports' server)."""
    return ensure_mailstack()


def make_settings(stack: dict[str, str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_url": f"smtp://localhost:{stack['MAILSTACK_SUBMISSION_PORT']}",
        "imap_url": f"imaps://localhost:{stack['MAILSTACK_IMAPS_PORT']}",
        "pop3_url": f"pop3s://localhost:{stack['MAILSTACK_POP3S_PORT']}",
        "ca_file": stack["MAILSTACK_CA_FILE"],
        "command_timeout": 10.0,
        "connect_timeout": 5.0,
        "warm_up": False,  # start-up warm-up has its own test; apps start faster without
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(stack: dict[str, str]) -> Settings:
    return make_settings(stack)


@pytest.fixture
def make_client(
    stack: dict[str, str], make_live_gateway: Callable[..., Any]
) -> Iterator[Callable[..., Any]]:
    """Factory: an httpx client on a fresh app built with settings overrides; in process
    (ASGI), or with ``live=True`` over TCP to a real uvicorn (what mode=remove needs: it
    must see the socket to know what the peer acknowledged)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def factory(live: bool = False, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        if live:
            async with (
                make_live_gateway(**overrides) as base,
                httpx.AsyncClient(base_url=base, timeout=60) as client,
            ):
                yield client
            return
        app = create_app(make_settings(stack, **overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gateway", timeout=60
            ) as client:
                yield client

    yield factory


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


@pytest.fixture
async def live_client(make_client: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a real uvicorn on a free loopback port (for mode=remove)."""
    async with make_client(live=True) as c:
        yield c


@pytest.fixture
def password(stack: dict[str, str]) -> str:
    return stack["MAILSTACK_PASSWORD"]


@pytest.fixture
def mailbox(password: str) -> Mailbox:
    """A fresh, empty mailbox of the test domain."""
    return Mailbox(fresh_address(), password)


@pytest.fixture
def other_mailbox(password: str) -> Mailbox:
    return Mailbox(fresh_address("o"), password)


@pytest.fixture
def make_live_gateway(stack: dict[str, str]) -> Callable[..., Any]:
    """Factory: a real uvicorn server on a free loopback port (for disconnect tests), with
    the HTTP protocol and event loop of `mailgate serve` (the test loop is uvloop too)."""
    import asyncio
    import socket
    from contextlib import asynccontextmanager

    import uvicorn

    @asynccontextmanager
    async def factory(
        *, timeout_graceful_shutdown: float | None = None, **overrides: Any
    ) -> AsyncIterator[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(make_settings(stack, **overrides))
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="on", **uvicorn_options(),
                                timeout_graceful_shutdown=timeout_graceful_shutdown)  # fmt: skip
        assert type(asyncio.get_running_loop()).__module__.startswith(uvicorn_options()["loop"])
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        assert config.http_protocol_class is uvicorn_options()["http"]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task

    return factory
