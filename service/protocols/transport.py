"""Dropping a transport now, on every supported Python (one place for the work-around)."""

from __future__ import annotations

import asyncio
import contextlib


def abort_transport(transport: asyncio.WriteTransport | None) -> None:
    """Close ``transport`` at once, discarding buffered data; never raises.

    CPython 3.11.2 (Debian 12's Python) raises ``AttributeError`` from
    ``_SSLProtocolTransport.abort()`` once ``close()`` has run on a TLS transport
    (its SSL protocol is already detached; later 3.11 releases check for it). The
    graceful close that is then under way ends the connection by itself, bounded by
    the loop's SSL shutdown timeout, so there is nothing left to abort.
    """
    if transport is None:
        return
    with contextlib.suppress(AttributeError):
        transport.abort()
