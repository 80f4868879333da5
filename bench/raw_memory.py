"""A 50 MB message through /raw over IMAP and POP3: byte-exact, and the gateway's peak
RSS growth against the message size. Also the time against a direct stdlib client.

Peak RSS is the gateway process's VmHWM from /proc (a high-water mark), read after a
small warm-up request and again after the big download.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import poplib
import ssl
import sys
import time

import httpx
from common import fresh_address, gateway, seed, stack

SIZE = int(sys.argv[1]) if len(sys.argv) > 1 else 50 * 1024 * 1024


def big_message(size: int) -> bytes:
    head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: big\r\n\r\n"
    line = os.urandom(38).hex().encode() + b"\r\n"
    return head + line * (size // len(line))


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def direct_seconds(env: dict[str, str], user: str, proto: str) -> float:
    ctx = ssl.create_default_context(cafile=env["MAILSTACK_CA_FILE"])
    start = time.monotonic()
    if proto == "imap":
        conn = imaplib.IMAP4_SSL("localhost", int(env["MAILSTACK_IMAPS_PORT"]), ssl_context=ctx)
        conn.login(user, env["MAILSTACK_PASSWORD"])
        conn.select("INBOX", readonly=True)
        conn.uid("FETCH", "1:*", "(BODY.PEEK[])")
        conn.logout()
    else:
        pop = poplib.POP3_SSL("localhost", int(env["MAILSTACK_POP3S_PORT"]), context=ctx)
        pop.user(user)
        pop.pass_(env["MAILSTACK_PASSWORD"])
        pop.retr(1)
        pop.quit()
    return time.monotonic() - start


def main() -> None:
    env = stack()
    user = fresh_address("big")
    raw = big_message(SIZE)
    want = hashlib.sha256(raw).hexdigest()
    seed(env, user, 1, body=raw)
    del raw
    token = base64.b64encode(f"{user}:{env['MAILSTACK_PASSWORD']}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    print(f"message: {SIZE / 1e6:.1f} MB")
    for proto in ("imap", "pop3"):
        with gateway(env) as (base, pid), httpx.Client(base_url=base, headers=headers,
                                                         timeout=120) as http:  # fmt: skip
            r = http.get("/v1/messages", params={"protocol": proto})
            assert r.status_code == 200, r.text
            msg_id = r.json()["items"][0]["id"]
            before = vm_hwm_kib(pid)
            h = hashlib.sha256()
            n = 0
            start = time.monotonic()
            with http.stream("GET", f"/v1/messages/{msg_id}/raw") as resp:
                assert resp.status_code == 200
                for chunk in resp.iter_raw():
                    h.update(chunk)
                    n += len(chunk)
            took = time.monotonic() - start
            after = vm_hwm_kib(pid)
        exact = h.hexdigest() == want
        direct = direct_seconds(env, user, proto)
        growth_mb = (after - before) / 1024
        print(
            f"{proto}: {n / 1e6:.1f} MB byte-exact={exact} in {took:.2f}s "
            f"(direct stdlib client {direct:.2f}s, ratio {took / direct:.2f}); "
            f"gateway peak RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB, "
            f"growth {growth_mb:.1f} MiB = {100 * growth_mb * 1048576 / SIZE:.1f}% of the message"
        )
        assert exact


if __name__ == "__main__":
    main()
