"""Sending: 8 concurrent clients for a few seconds, through the gateway and directly
with aiosmtplib (one connection per message, STARTTLS + AUTH, as the gateway does).

Prints messages per second and the ratio. Loopback only, bounded in time.
Usage: bench/send_throughput.py [seconds]
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import sys

import aiosmtplib
import httpx
from common import fresh_address, gateway, rate, stack

CLIENTS = 8
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
MESSAGE = b"From: {f}\r\nTo: {t}\r\nSubject: bench\r\n\r\nhello\r\n"


async def direct(env: dict[str, str], user: str, rcpt: str) -> float:
    ctx = ssl.create_default_context(cafile=env["MAILSTACK_CA_FILE"])
    body = MESSAGE.replace(b"{f}", user.encode()).replace(b"{t}", rcpt.encode())

    async def once() -> None:
        await aiosmtplib.send(
            body, sender=user, recipients=[rcpt], hostname="localhost",
            port=int(env["MAILSTACK_SUBMISSION_PORT"]), start_tls=True, tls_context=ctx,
            username=user, password=env["MAILSTACK_PASSWORD"],
        )  # fmt: skip

    return await rate(CLIENTS, SECONDS, once)


async def through(base: str, user: str, password: str, rcpt: str) -> float:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    async with httpx.AsyncClient(base_url=base, timeout=30,
                                 headers={"Authorization": f"Basic {token}"}) as http:  # fmt: skip

        async def once() -> None:
            r = await http.post("/v1/send", json={"to": [rcpt], "subject": "bench",
                                                  "text": "hello"})  # fmt: skip
            assert r.status_code == 200, r.text

        return await rate(CLIENTS, SECONDS, once)


def main() -> None:
    env = stack()
    user, rcpt = fresh_address("sb"), fresh_address("sr")
    rate_direct = asyncio.run(direct(env, user, rcpt))
    with gateway(env) as (base, _):
        rate_gateway = asyncio.run(through(base, user, env["MAILSTACK_PASSWORD"], rcpt))
    print(f"direct aiosmtplib : {rate_direct:6.1f} messages/s")
    ratio = rate_gateway / rate_direct
    print(f"mailgate          : {rate_gateway:6.1f} messages/s (ratio {ratio:.2f})")


if __name__ == "__main__":
    main()
