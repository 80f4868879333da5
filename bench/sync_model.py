"""The sync model test (tests/syncmodel.py) for longer: many seeds, more changes per round.

For each variant (the full Dovecot with QRESYNC, one with CONDSTORE only, one with
neither, and POP3) and each seed, a client follows INBOX and a second folder with
/v1/changes while another client makes random changes; after every round the
client's copy must equal the server's. Prints the counts per variant (changes
applied, 410s, lists; how many IMAP answers came from a session's change journal and how
many from the server's CHANGEDSINCE) and every fault with its seed, so it can be replayed.

Usage: bench/sync_model.py [seeds] [rounds] [steps]   (defaults 20 6 15)
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import httpx
from common import stack
from prometheus_client import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mailboxes import Mailbox  # noqa: E402
from mailstack_env import fresh_address  # noqa: E402
from syncmodel import Fault, run_changes_model  # noqa: E402

from service.config import Settings  # noqa: E402
from service.main import create_app  # noqa: E402

SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 6
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 15
PORTS = {
    "qresync": "MAILSTACK_IMAPS_PORT",
    "condstore": "MAILSTACK_CONDSTORE_IMAPS_PORT",
    "basic": "MAILSTACK_BASIC_IMAPS_PORT",
    "pop3": "MAILSTACK_IMAPS_PORT",
}


async def main() -> int:
    env = stack()
    faults = 0
    for variant, port in PORTS.items():
        settings = Settings(
            smtp_url=f"smtp://localhost:{env['MAILSTACK_SUBMISSION_PORT']}",
            imap_url=f"imaps://localhost:{env[port]}",
            pop3_url=f"pop3s://localhost:{env['MAILSTACK_POP3S_PORT']}",
            ca_file=env["MAILSTACK_CA_FILE"],
        )
        app = create_app(settings)
        total: Counter[str] = Counter()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                for seed in range(SEEDS):
                    box = Mailbox(fresh_address("model"), env["MAILSTACK_PASSWORD"])
                    protocol = "pop3" if variant == "pop3" else "imap"
                    try:
                        total += await run_changes_model(
                            http, box, env, protocol=protocol, seed=seed,
                            rounds=ROUNDS, steps=STEPS,
                        )  # fmt: skip
                    except Fault as exc:
                        faults += 1
                        print(f"FAULT {variant} seed {seed}: {exc}", flush=True)
        shown = {k: v for k, v in sorted(total.items()) if ":" in k}
        print(f"{variant}: {SEEDS} seeds x {ROUNDS} rounds x {STEPS} changes: {shown}", flush=True)
        sources = {s: REGISTRY.get_sample_value("mailgate_imap_changes_total", {"source": s})
                   for s in ("journal", "server")}  # fmt: skip
        print(f"  IMAP change computations so far, by source: {sources}", flush=True)
    print(f"faults: {faults}")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
