"""mode=remove under the stalled-client case, repeated: a client with a tiny receive buffer
reads the status line and headers of a `?mode=remove` answer, waits 2 s, and closes. The
message must stay every time. Prints how many of the repetitions lost their message.

    .venv/bin/python bench/remove_mode_loss.py [repetitions per protocol, default 50]

Runs a real `mailgate serve` (uvicorn, TCP) against the test mail stack; the cases cycle
through parsed / raw / attachment answers of 4 KB, 300 KB and 10 MB, ten at a time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request

from common import fresh_address, gateway, stack
from mailboxes import Mailbox
from rawhttp import KINDS, SIZES, in_client_thread, leave_early, message, path_of


def _id_of(base: str, box: Mailbox, proto: str) -> str:
    url = f"{base}/v1/messages?protocol={proto}"
    req = urllib.request.Request(url, headers=box.auth)  # noqa: S310 - our own loopback
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
        return str(json.load(r)["items"][0]["id"])


async def run(reps: int) -> int:
    env = stack()
    lost_total = 0
    with gateway(env, fetch_chunk_bytes="65536") as (base, _):
        for proto in ("imap", "pop3"):
            cases = []
            for i in range(reps):
                kind = KINDS[i % len(KINDS)]
                size = list(SIZES)[(i // len(KINDS)) % len(SIZES)]
                box = Mailbox(fresh_address("loss"), env["MAILSTACK_PASSWORD"])
                raw = message(kind, SIZES[size])
                box.append(env, raw)
                cases.append((kind, size, box, raw))
            gate = asyncio.Semaphore(10)
            start = time.monotonic()

            async def one(
                kind: str,
                size: str,
                box: Mailbox,
                proto: str = proto,
                gate: asyncio.Semaphore = gate,
            ) -> None:
                async with gate:
                    msg_id = await in_client_thread(_id_of, base, box, proto)
                    await in_client_thread(leave_early, base, path_of(kind, msg_id), box.auth,
                                           "tiny-buffer-2s", SIZES[size])  # fmt: skip

            await asyncio.gather(*(one(k, s, b) for k, s, b, _ in cases))
            await asyncio.sleep(1.0)  # room for a (wrong) commit to land
            lost = [
                (kind, size)
                for kind, size, box, raw in cases
                if [m for _, m, _ in box.messages(env)] != [raw]
            ]
            lost_total += len(lost)
            print(f"{proto}: {reps} stalled clients (tiny receive buffer, 2 s, close), "
                  f"{len(lost)} messages lost {lost if lost else ''}"
                  f"({time.monotonic() - start:.0f} s)")  # fmt: skip
    return lost_total


if __name__ == "__main__":
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    sys.exit(1 if asyncio.run(run(reps)) else 0)
