"""A test mailbox with an independent stdlib IMAP/POP3 view of its real state."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import poplib
import ssl
import time

Stored = tuple[int, bytes, str]


class Mailbox:
    """One test mailbox, with an independent stdlib IMAP/POP3 view of its real state."""

    def __init__(self, address: str, password: str) -> None:
        self.address = address
        self.password = password

    @property
    def auth(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.address}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def imap(self, stack: dict[str, str]) -> imaplib.IMAP4_SSL:
        ctx = ssl.create_default_context(cafile=stack["MAILSTACK_CA_FILE"])
        conn = imaplib.IMAP4_SSL("localhost", int(stack["MAILSTACK_IMAPS_PORT"]), ssl_context=ctx)
        conn.login(self.address, self.password)
        return conn

    def pop3(self, stack: dict[str, str]) -> poplib.POP3_SSL:
        ctx = ssl.create_default_context(cafile=stack["MAILSTACK_CA_FILE"])
        conn = poplib.POP3_SSL("localhost", int(stack["MAILSTACK_POP3S_PORT"]), context=ctx)
        conn.user(self.address)
        conn.pass_(self.password)
        return conn

    def append(self, stack: dict[str, str], raw: bytes, folder: str = "INBOX",
               flags: str = "") -> None:  # fmt: skip
        conn = self.imap(stack)
        try:
            typ, _ = conn.append(folder, flags or None, None, raw)
            assert typ == "OK"
        finally:
            conn.logout()

    def messages(
        self, stack: dict[str, str], folder: str = "INBOX"
    ) -> list[tuple[int, bytes, str]]:
        """(uid, raw bytes, flags) of every message, oldest first, read without side effects."""
        conn = self.imap(stack)
        try:
            typ, _ = conn.select(f'"{folder}"', readonly=True)
            assert typ == "OK"
            typ, data = conn.uid("SEARCH", None, "ALL")
            uids = [int(u) for u in data[0].split()] if data and data[0] else []
            out = []
            for uid in uids:
                typ, got = conn.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[])")
                assert typ == "OK"
                found = [part for part in got if isinstance(part, tuple)]
                if not found:  # expunged by another session since the SEARCH
                    continue
                head = found[0][0].decode()
                flags = head[head.find("FLAGS (") + 7 :].split(")")[0]
                out.append((uid, found[0][1], flags))
            return out
        finally:
            conn.logout()

    def wait_for(self, stack: dict[str, str], count: int = 1, timeout: float = 10.0,
                 folder: str = "INBOX") -> list[tuple[int, bytes, str]]:  # fmt: skip
        """Wait until the mailbox holds ``count`` messages (delivery is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages(stack, folder)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    async def after_removal(self, stack: dict[str, str], count: int, within: float = 5.0,
                            folder: str = "INBOX") -> list[tuple[int, bytes, str]]:  # fmt: skip
        """The messages once the mailbox holds ``count`` or fewer (mode=remove commits
        after the peer acknowledged the answer, a moment after the client has it); what
        is there after ``within`` seconds otherwise. Async: a live gateway in this event loop
        must go on running meanwhile."""
        deadline = time.monotonic() + within
        while True:
            got = await asyncio.to_thread(self.messages, stack, folder)
            if len(got) <= count or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)
