"""MIME budgets, timed against a real gateway on IMAP and POP3 (issue 8's goals):

- the parsed fetch of a 1.5 MB message of 30,000 one-byte parts (goal: within 2 s);
- one attachment download of it, from the middle (goal: within 0.5 s; the message is
  not parsed again: IMAP fetches the part by its section, POP3 stops after the part);
- a message nested 1,000 levels deep: its subject, from, date and message_id kept, and
  the defect that says where the depth budget cut it.

Each figure is the best of a few runs (the first one warms the server's caches up).
Usage: ``python bench/mime_budgets.py [parts] [depth]``.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time

import httpx
from common import ROOT, fresh_address, gateway, seed, stack

PARTS = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
DEPTH = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
RUNS = 3


def many_parts(n: int) -> bytes:
    script = ROOT / "tests" / "data" / "cases" / "many-parts.py"
    return subprocess.run([sys.executable, str(script), str(n)], check=True,
                          stdout=subprocess.PIPE).stdout  # fmt: skip


def nested(depth: int) -> bytes:
    out = [
        b"From: Deep Sender <deep@other.test>\r\nTo: alice@example.test\r\n"
        b"Subject: nested %d deep\r\nMessage-ID: <deep-%d@other.test>\r\n"
        b"Date: Mon, 30 Nov 2026 11:00:00 +0000\r\nMIME-Version: 1.0\r\n" % (depth, depth)
    ]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="=_%05d_="\r\n\r\n--=_%05d_=\r\n'
                   % (i, i))  # fmt: skip
    out.append(b"Content-Type: text/plain\r\n\r\ninnermost text\r\n")
    out += [b"--=_%05d_=--\r\n" % i for i in reversed(range(depth))]
    return b"".join(out)


def best(http: httpx.Client, url: str, **params: str) -> tuple[float, httpx.Response]:
    times = []
    r = None
    for _ in range(RUNS):
        start = time.monotonic()
        r = http.get(url, params=params)
        times.append(time.monotonic() - start)
        assert r.status_code == 200, r.text[:300]
    assert r is not None
    return min(times), r


def main() -> None:
    env = stack()
    user = fresh_address("mime")
    many = many_parts(PARTS)
    seed(env, user, 1, body=many)
    token = base64.b64encode(f"{user}:{env['MAILSTACK_PASSWORD']}".encode()).decode()
    deep_user = fresh_address("deep")
    seed(env, deep_user, 1, body=nested(DEPTH))
    deep_token = base64.b64encode(f"{deep_user}:{env['MAILSTACK_PASSWORD']}".encode()).decode()
    print(f"message of {PARTS} parts: {len(many) / 1e6:.2f} MB; best of {RUNS} runs")
    with gateway(env) as (base, _):
        for proto in ("imap", "pop3"):
            with httpx.Client(base_url=base, timeout=120,
                              headers={"Authorization": f"Basic {token}"}) as http:  # fmt: skip
                r = http.get("/v1/messages", params={"protocol": proto})
                msg_id = r.json()["items"][0]["id"]
                took, r = best(http, f"/v1/messages/{msg_id}")
                body = r.json()
                middle = body["attachments"][len(body["attachments"]) // 2]
                print(
                    f"{proto}: fetch {took:.2f} s (goal 2 s): {len(body['attachments'])} "
                    f"attachments, defects {body['defects']}"
                )
                took, r = best(http, f"/v1/messages/{msg_id}/attachments/{middle['id']}")
                assert len(r.content) == middle["size"]
                print(
                    f"{proto}: attachment {middle['id']} {took:.3f} s (goal 0.5 s), "
                    f"{len(r.content)} bytes"
                )
            deep_auth = {"Authorization": f"Basic {deep_token}"}
            with httpx.Client(base_url=base, timeout=120, headers=deep_auth) as http:
                r = http.get("/v1/messages", params={"protocol": proto})
                msg_id = r.json()["items"][0]["id"]
                took, r = best(http, f"/v1/messages/{msg_id}")
                body = r.json()
                kept = {k: body[k] for k in ("subject", "from", "date", "message_id")}
                depth_defects = [d for d in body["defects"] if d.startswith("MimeDepth")]
                print(f"{proto}: depth {DEPTH} fetch {took:.2f} s: {kept}; {depth_defects}")


if __name__ == "__main__":
    main()
