"""A model-based check of sync: a client that keeps a copy of its folders, against real Dovecot.

A :class:`Mutator` (another mail client: imaplib and smtplib on the full Dovecot
and Postfix) makes seeded random changes: arrivals over IMAP APPEND and over SMTP
submission → LMTP, ``\\Seen``/``\\Flagged`` set and cleared, UID EXPUNGE, MOVE
between the folders, a message that arrives and is expunged at once, and the
second folder deleted and created again. Meanwhile a :class:`Replica` (the
gateway's client: it lists once, then applies ``created``/``updated``/
``destroyed`` from ``/v1/changes`` with small limits) keeps its copy. Whenever
the mutator rests, the copy must equal what the server holds (ids and flags):
a missed or phantom change shows as a difference. A 410 makes the replica list
again (allowed: "when unsure, 410"); a 5xx that persists, a 404 for INBOX, or any
shape the contract forbids is a :class:`Fault`. Used by
``tests/integration/test_sync_model.py`` (short) and ``bench/sync_model.py`` (long).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import json
import poplib
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
from mailboxes import Mailbox
from mailstack_env import deliver, personal

from service.ids import ImapRef, Pop3Ref, decode_id

SECOND = "Work"  # the folder that is deleted and created again (personal(): INBOX.Work on Cyrus)

Copy = dict[str, frozenset[str]]


def visible(flags: list[str] | tuple[str, ...]) -> frozenset[str]:
    return frozenset(f for f in flags if f.lower() != "\\recent")


class Fault(AssertionError):
    """The gateway broke its contract (the message says how)."""


@dataclass
class Mutator:
    """Another mail client (the standard library, on the full Dovecot), seeded."""

    box: Mailbox
    stack: dict[str, str]
    rng: random.Random
    folders: tuple[str, ...] = ("INBOX", SECOND)
    recreate: bool = True
    smtp: bool = True
    log: list[str] = field(default_factory=list)
    conn: imaplib.IMAP4_SSL | None = None

    def _imap(self) -> imaplib.IMAP4_SSL:
        if self.conn is None:
            self.conn = self.box.imap(self.stack)
        return self.conn

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.logout()
            except (imaplib.IMAP4.error, OSError):
                pass  # Dovecot drops a session whose selected folder was re-created

    def _select(self, folder: str) -> bool:
        typ, _ = self._imap().select(f'"{folder}"')
        return typ == "OK"

    def uids(self, folder: str) -> list[int]:
        if not self._select(folder):
            return []
        typ, data = self._imap().uid("SEARCH", None, "ALL")
        assert typ == "OK"
        return [int(u) for u in data[0].split()] if data and data[0] else []

    def _raw(self, tag: str) -> tuple[bytes, str]:
        mid = f"<{tag}-{uuid.uuid4().hex[:12]}@example.test>"
        raw = (
            f"From: Model <model@example.test>\r\nTo: {self.box.address}\r\n"
            f"Subject: {tag}\r\nMessage-ID: {mid}\r\n\r\nbody {tag}\r\n"
        ).encode()
        return raw, mid

    def append(self, folder: str, flags: str = "") -> int:
        """APPEND one message; its UID (0 when the folder is being re-created)."""
        raw, _ = self._raw(f"append-{folder}")
        typ, data = self._imap().append(f'"{folder}"', flags or None, None, raw)
        if typ != "OK":
            return 0
        text = data[0].decode() if data and data[0] else ""
        found = re.search(r"APPENDUID \d+ (\d+)", text)
        return int(found.group(1)) if found else 0

    def send(self) -> int:
        """One message over SMTP submission → LMTP (on Cyrus: LMTP); waits until it is in
        INBOX; its UID."""
        raw, mid = self._raw("smtp")
        deliver(self.stack, "model@example.test", self.box.address, raw, self.box.password)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._select("INBOX")
            typ, data = self._imap().uid("SEARCH", None, "HEADER", "Message-ID", mid)
            if typ == "OK" and data and data[0]:
                return int(data[0].split()[-1])
            time.sleep(0.02)
        raise AssertionError("an SMTP arrival was not delivered within 30 s")

    def store(self, folder: str, uid: int, op: str, flag: str) -> None:
        self._select(folder)
        self._imap().uid("STORE", str(uid), op, f"({flag})")

    def expunge(self, folder: str, uid: int) -> None:
        self._select(folder)
        self._imap().uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
        self._imap().uid("EXPUNGE", str(uid))

    def move(self, folder: str, uid: int, to: str) -> None:
        self._select(folder)
        self._imap().uid("MOVE", str(uid), f'"{to}"')

    def recreate_second(self) -> None:
        conn = self._imap()
        conn.select("INBOX")
        second = self.folders[1]
        conn.delete(f'"{second}"')
        conn.create(f'"{second}"')

    def step(self) -> str:
        """One random change; what it was. Dovecot ends a session whose selected folder
        another session deleted ("IMAP session state is inconsistent"): the change may
        then be half made (the server says what is true), and the next step logs in again."""
        try:
            return self._step()
        except (imaplib.IMAP4.abort, OSError):
            self.close()
            self.log.append("aborted -")
            return "aborted"

    def _step(self) -> str:
        rng = self.rng
        folder = rng.choice(self.folders)
        uids = self.uids(folder)
        ops = ["append", "append", "flag", "flag", "flag", "expunge", "arrive-delete"]
        if self.smtp:
            ops += ["smtp", "smtp-delete"]
        if len(self.folders) > 1:
            ops += ["move"]
        if self.recreate and len(self.folders) > 1:
            ops += ["recreate"]
        op = rng.choice(ops)
        if op in ("flag", "expunge", "move") and not uids:
            op = "append"
        if op.startswith("smtp"):
            folder = "INBOX"
        if op == "append":
            self.append(folder, rng.choice(["", "", "\\Seen", "\\Flagged", "\\Seen \\Flagged"]))
        elif op == "smtp":
            self.send()
        elif op == "smtp-delete":
            self.expunge("INBOX", self.send())
        elif op == "arrive-delete":
            uid = self.append(folder)
            if uid:
                self.expunge(folder, uid)
        elif op == "flag":
            flag = rng.choice(["\\Seen", "\\Flagged"])
            self.store(folder, rng.choice(uids), rng.choice(["+FLAGS", "-FLAGS"]), flag)
        elif op == "expunge":
            self.expunge(folder, rng.choice(uids))
        elif op == "move":
            to = next(f for f in self.folders if f != folder)
            self.move(folder, rng.choice(uids), to)
        elif op == "recreate":
            self.recreate_second()
        self.log.append(f"{op} {folder}")
        return op


def imap_truth(box: Mailbox, stack: dict[str, str], folder: str) -> Copy | None:
    """What the full Dovecot holds now: id → flags; None when the folder is gone."""
    conn = box.imap(stack)
    try:
        typ, data = conn.select(f'"{folder}"', readonly=True)
        if typ != "OK":
            return None
        typ, data = conn.response("UIDVALIDITY")
        uidvalidity = int(data[0])
        typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
        out: Copy = {}
        for line in data or []:
            if not isinstance(line, bytes) or b"UID " not in line:
                continue
            text = line.decode()
            uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
            flags = text.split("FLAGS (")[1].split(")")[0].split()
            out[ImapRef(folder, uidvalidity, uid).encode()] = visible(flags)
        return out
    finally:
        conn.logout()


def pop3_truth(box: Mailbox, stack: dict[str, str]) -> Copy:
    """What the POP3 maildrop holds now: id → no flags."""
    conn: poplib.POP3_SSL = box.pop3(stack)
    try:
        _, lines, _ = conn.uidl()
        return {Pop3Ref(line.split()[1].decode()).encode(): frozenset() for line in lines}
    finally:
        conn.quit()


def truth(box: Mailbox, stack: dict[str, str], protocol: str, folder: str) -> Copy | None:
    return imap_truth(box, stack, folder) if protocol == "imap" else pop3_truth(box, stack)


def _uids(ids: Any) -> list[int | str]:
    """Ids as UIDs (IMAP) or UIDL prefixes (POP3), for a readable trace."""
    out: list[int | str] = []
    for i in ids:
        ref = decode_id(i)
        out.append(ref.uid if isinstance(ref, ImapRef) else ref.uidl[:8])
    return out


def _st(token: str) -> str:
    """A state token's JSON, for a readable trace (tokens are opaque to clients)."""
    payload = token[2:] + "=" * (-len(token[2:]) % 4)
    try:
        return json.dumps(json.loads(base64.urlsafe_b64decode(payload)), separators=(",", ":"))
    except ValueError:
        return token


@dataclass
class Replica:
    """A client that keeps a copy of one folder and follows it with /v1/changes."""

    http: httpx.AsyncClient
    box: Mailbox
    protocol: str
    folder: str
    rng: random.Random
    copy: Copy | None = None
    state: str | None = None
    stats: Counter[str] = field(default_factory=Counter)
    trace: list[str] = field(default_factory=list)

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"protocol": self.protocol, "folder": self.folder, **more}

    def _may_be_gone(self) -> bool:
        return self.protocol == "imap" and self.folder != "INBOX"

    async def _get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        """GET; a 503 (the server's own trouble, e.g. Dovecot's SERVERBUG while a folder is
        re-created) is retried as a client would, a few times: one that persists is a
        fault, as is any other 5xx."""
        for _ in range(5):
            r = await self.http.get(path, params=params, headers=self.box.auth)
            if r.status_code != 503:
                break
            if "Retry-After" not in r.headers:
                raise Fault(f"503 without Retry-After: {r.text}")
            self.stats["503"] += 1
            self.trace.append(f"503 {r.json().get('detail')} {r.json().get('upstream')}")
            await asyncio.sleep(0.2)
        if r.status_code >= 500:
            raise Fault(f"{path} answered {r.status_code}: {r.text}")
        if r.status_code == 404 and not self._may_be_gone():
            raise Fault(f"{path} of {self.folder} answered 404: {r.text}")
        return r

    async def relist(self) -> None:
        """List the whole folder (pages of 7) and keep the first page's state."""
        self.stats["lists"] += 1
        copy: Copy = {}
        state = cursor = None
        while True:
            params = self._params(limit=7, **({"cursor": cursor} if cursor else {}))
            r = await self._get("/v1/messages", params)
            if r.status_code == 404:
                self.trace.append("list: 404, the folder is gone")
                self.copy = self.state = None
                return
            if r.status_code == 410 and cursor is not None:  # re-created meanwhile
                copy, state, cursor = {}, None, None
                continue
            if r.status_code != 200:
                raise Fault(f"a listing answered {r.status_code}: {r.text}")
            body = r.json()
            if state is None:
                state = body["state"]
            listed = _uids(i["id"] for i in body["items"])
            self.trace.append(f"list {listed} state {_st(body['state'])}")
            for item in body["items"]:
                copy[item["id"]] = visible(item["flags"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        self.copy, self.state = copy, state

    async def sync(self, *, limit: int | None = None) -> bool:
        """Follow /changes until has_more is false; False when it answered 410 or 404 (then
        the folder is listed again)."""
        if self.state is None:
            await self.relist()
            return False
        while True:
            lim = limit or self.rng.choice([1, 1, 2, 3, 5, 100])
            since = self.state
            r = await self._get("/v1/changes", self._params(since=since, limit=lim))
            if r.status_code == 410:
                self.trace.append("410 " + r.json().get("detail", ""))
                if r.json().get("code") != "cannot-calculate-changes":
                    raise Fault(f"410 with another code: {r.text}")
                self.stats["410"] += 1
                await self.relist()
                return False
            if r.status_code == 404:  # the folder is gone (deleted meanwhile)
                self.stats["404"] += 1
                await self.relist()
                return False
            if r.status_code != 200:
                raise Fault(f"/changes answered {r.status_code}: {r.text}")
            self.stats["changes"] += 1
            body = r.json()
            self.trace.append(
                f"changes {_st(since)} -> {_st(body['new_state'])} "
                f"c{_uids(c['id'] for c in body['created'])} "
                f"u{_uids(c['id'] for c in body['updated'])} d{_uids(body['destroyed'])}"
            )
            self.apply(body, since, lim)
            self.state = body["new_state"]
            if not body["has_more"]:
                return True

    def apply(self, body: dict[str, Any], since: str, limit: int) -> None:
        """Apply one answer of /changes to the copy, checking its shape."""
        assert self.copy is not None
        if body["old_state"] != since:
            raise Fault("old_state is not the since asked for")
        created, updated, destroyed = body["created"], body["updated"], body["destroyed"]
        if len(created) + len(updated) + len(destroyed) > limit:
            raise Fault(f"more than limit={limit} entries")
        ids = [c["id"] for c in created] + [u["id"] for u in updated] + list(destroyed)
        if len(ids) != len(set(ids)):
            raise Fault(f"an id twice in one answer: {body}")
        if self.protocol == "imap":
            uids = [c["uid"] for c in created]
            if uids != sorted(uids, reverse=True):
                raise Fault(f"created is not newest first: {uids}")
        for c in created:
            if c["folder"] != self.folder:
                raise Fault(f"created in another folder: {c}")
            self.stats["created"] += 1
            self.copy[c["id"]] = visible(c["flags"])
        for u in updated:
            self.stats["updated"] += 1
            flags = u["flags"]
            if u["seen"] != ("\\Seen" in flags) or u["flagged"] != ("\\Flagged" in flags):
                raise Fault(f"seen/flagged disagree with flags: {u}")
            if u["id"] in self.copy:
                self.copy[u["id"]] = visible(flags)
            else:
                self.stats["update-of-unknown"] += 1
        for d in destroyed:
            self.stats["destroyed"] += 1
            decode_id(d)
            self.copy.pop(d, None)


def compare(copy: Copy | None, server: Copy | None, context: str) -> None:
    """A client's copy equals what the server holds (ids; flags on IMAP)."""
    if server is None or copy is None:
        if server != copy and not (server is None and copy == {}):
            raise Fault(f"{context}: folder presence differs (copy {copy!r}, server {server!r})")
        return
    missing = sorted(set(server) - set(copy))
    phantom = sorted(set(copy) - set(server))
    flags = {i: (copy[i], server[i]) for i in set(copy) & set(server) if copy[i] != server[i]}
    if missing or phantom or flags:

        def show(i: str) -> str:
            ref = decode_id(i)
            return f"uid {ref.uid}" if isinstance(ref, ImapRef) else f"uidl {ref.uidl}"

        differ = {show(i): (sorted(a), sorted(b)) for i, (a, b) in flags.items()}
        raise Fault(
            f"{context}: missed {[show(i) for i in missing]}, phantom "
            f"{[show(i) for i in phantom]}, flags (copy, server) {differ}"
        )


def prepare(box: Mailbox, stack: dict[str, str], folders: tuple[str, ...]) -> None:
    conn = box.imap(stack)
    try:
        for folder in folders:
            if folder != "INBOX":
                conn.create(f'"{folder}"')
    finally:
        conn.logout()


async def run_changes_model(
    http: httpx.AsyncClient,
    box: Mailbox,
    stack: dict[str, str],
    *,
    protocol: str,
    seed: int,
    rounds: int,
    steps: int,
    folders: tuple[str, ...] | None = None,
    smtp: bool = True,
) -> Counter[str]:
    """Rounds of ``steps`` random changes, made while the replicas follow /changes;
    after each round (the mutator at rest) every replica must equal the server."""
    rng = random.Random(seed)
    if protocol == "pop3":
        folders = ("INBOX",)
    elif folders is None:
        folders = ("INBOX", personal(stack, SECOND))
    mutator = Mutator(box, stack, random.Random(rng.random()), folders, smtp=smtp,
                      recreate=protocol == "imap")  # fmt: skip
    prepare(box, stack, folders)
    for _ in range(3):
        await asyncio.to_thread(mutator.append, "INBOX")
    replicas = [Replica(http, box, protocol, f, random.Random(rng.random())) for f in folders]
    for rep in replicas:
        await rep.relist()
    try:
        for round_ in range(rounds):
            pauses = [rng.random() * 0.01 for _ in range(steps)]

            def mutate(pauses: list[float]) -> None:
                for pause in pauses:
                    mutator.step()
                    time.sleep(pause)

            work = asyncio.create_task(asyncio.to_thread(mutate, pauses))
            while not work.done():  # follow while the other client works
                for rep in replicas:
                    await rep.sync()
                await asyncio.sleep(0)
            await work
            for rep in replicas:
                await rep.sync()
                now = await asyncio.to_thread(truth, box, stack, protocol, rep.folder)
                context = "\n".join(rep.trace[-30:])
                context += f"\nseed {seed} round {round_} {rep.folder}: {mutator.log[-steps:]}"
                compare(rep.copy, now, context)
    finally:
        mutator.close()
    total: Counter[str] = Counter()
    for rep in replicas:
        total.update({f"{rep.folder}:{k}": v for k, v in rep.stats.items()})
    total.update(Counter(op.split()[0] for op in mutator.log))
    return total


@dataclass
class EventReplica:
    """A client that keeps a copy of one folder by /v1/events, as a browser's EventSource
    does: it reconnects with ``Last-Event-ID`` whenever a stream ends (the gateway shut
    down, dropped it, or the client itself went away), and lists again after
    ``cannot-calculate-changes``. It also leaves at random, and stops reading for a while."""

    box: Mailbox
    protocol: str
    folder: str
    rng: random.Random
    url: str = ""
    copy: Copy | None = None
    last_id: str | None = None
    stats: Counter[str] = field(default_factory=Counter)
    trace: list[str] = field(default_factory=list)
    fault: Fault | None = None

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"protocol": self.protocol, "folder": self.folder, **more}

    async def relist(self, http: httpx.AsyncClient) -> None:
        rep = Replica(http, self.box, self.protocol, self.folder, self.rng)
        await rep.relist()
        self.stats["lists"] += 1
        self.trace.extend(rep.trace)
        self.copy, self.last_id = rep.copy, rep.state

    async def run(self) -> None:
        """Follow the folder until cancelled; a fault is kept in :attr:`fault`."""
        try:
            while True:
                try:
                    async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
                        if self.last_id is None:
                            await self.relist(http)
                        if self.last_id is None:  # the folder is gone
                            await asyncio.sleep(0.1)
                            continue
                        await self._connection(http)
                except (httpx.TransportError, httpx.StreamError):
                    self.stats["transport-errors"] += 1
                    await asyncio.sleep(0.05)  # the gateway restarts: connect again
        except Fault as exc:
            self.fault = exc

    async def _connection(self, http: httpx.AsyncClient) -> None:
        assert self.last_id is not None
        self.stats["connections"] += 1
        headers = {**self.box.auth, "Last-Event-ID": self.last_id}
        async with http.stream("GET", "/v1/events", params=self._params(), headers=headers) as r:
            if r.status_code in (404, 503) or (r.status_code == 429):
                self.stats[f"{r.status_code}"] += 1
                await r.aread()
                if r.status_code == 404 and self.folder == "INBOX":
                    raise Fault(f"/events of INBOX answered 404: {r.text}")
                if r.status_code == 404:
                    self.last_id = None
                await asyncio.sleep(0.1)
                return
            if r.status_code != 200:
                raise Fault(f"/events answered {r.status_code}: {(await r.aread())!r}")
            fields: dict[str, str] = {}
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    if "dropped" in line or "shutting down" in line:
                        self.stats[line.split(":")[1].strip()] += 1
                    continue
                if line:
                    key, _, value = line.partition(":")
                    fields[key] = value[1:] if value.startswith(" ") else value
                    continue
                if not fields:
                    continue
                event, fields = fields, {}
                if not self._dispatch(event):
                    return
                roll = self.rng.random()
                if roll < 0.08:  # the client goes away; EventSource comes back
                    self.stats["left"] += 1
                    return
                if roll < 0.12:  # it stops reading for a while
                    self.stats["paused"] += 1
                    await asyncio.sleep(self.rng.random() * 0.5)
            self.stats["ended"] += 1

    def _dispatch(self, event: dict[str, str]) -> bool:
        """Apply one event as EventSource would see it; False when the stream must end."""
        kind = event.get("event")
        data = json.loads(event["data"]) if "data" in event else None
        if kind == "cannot-calculate-changes":
            self.stats["410"] += 1
            self.trace.append(f"event 410 {data}")
            self.last_id = None
            return False
        if kind == "error":  # the mail server failed (Dovecot drops a session whose
            # selected folder was re-created): EventSource reconnects with its last id
            if data.get("status") != 503:
                raise Fault(f"event: error {data}")
            self.stats["error-503"] += 1
            self.trace.append(f"event error {data.get('upstream')}")
            return False
        assert self.copy is not None
        if kind == "created":
            if data["folder"] != self.folder:
                raise Fault(f"created in another folder: {data}")
            self.copy[data["id"]] = visible(data["flags"])
        elif kind == "updated":
            flags = data["flags"]
            if data["seen"] != ("\\Seen" in flags) or data["flagged"] != ("\\Flagged" in flags):
                raise Fault(f"seen/flagged disagree with flags: {data}")
            if data["id"] in self.copy:
                self.copy[data["id"]] = visible(flags)
        elif kind == "destroyed":
            decode_id(data)
            self.copy.pop(data, None)
        elif kind is not None:
            raise Fault(f"unknown event {kind!r}")
        if kind is not None:
            self.stats[kind] += 1
            self.trace.append(
                f"event {kind} {_uids([data if kind == 'destroyed' else data['id']])}"
            )
        if "id" in event:  # EventSource keeps the last id, of id-only events too
            self.last_id = event["id"]
        return True


async def settled(
    replica: EventReplica,
    box: Mailbox,
    stack: dict[str, str],
    context: str,
    within: float = 60.0,
) -> None:
    """Once nothing is left to tell since the replica's last event id (/changes says so),
    its copy must equal the server. ``within``: how long it may take to get there."""
    deadline = time.monotonic() + within
    while True:
        if replica.fault is not None:
            raise replica.fault
        last, copy = replica.last_id, dict(replica.copy or {})
        r = httpx.Response(599)
        if last is not None:
            async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
                r = await http.get("/v1/changes", headers=box.auth,
                                   params=replica._params(since=last, limit=500))  # fmt: skip
            if r.status_code >= 500 and r.status_code != 503:
                raise Fault(f"/changes answered {r.status_code}: {r.text}")
            body = r.json() if r.status_code == 200 else {}
            quiet = body and not (body["created"] or body["updated"] or body["destroyed"])
            if quiet and replica.last_id == last:
                now = await asyncio.to_thread(truth, box, stack, replica.protocol, replica.folder)
                compare(copy, now, "\n".join(replica.trace[-30:]) + "\n" + context)
                return
        if time.monotonic() > deadline:
            trace = "\n".join(replica.trace[-20:])
            raise Fault(
                f"{trace}\n{context}: the event stream did not catch up in {within} s: "
                f"{replica.stats}; /changes since its last id: {r.status_code} {r.text}"
            )
        await asyncio.sleep(0.1)


async def run_events_model(
    gateway: Callable[[], AbstractAsyncContextManager[str]],
    box: Mailbox,
    stack: dict[str, str],
    *,
    protocol: str,
    seed: int,
    rounds: int,
    steps: int,
    restarts: bool = True,
) -> Counter[str]:
    """Rounds of ``steps`` random changes while three EventSource-like clients follow
    INBOX (two of them) and the second folder; the gateway (``gateway()`` yields its URL)
    is shut down and started again at random moments. After each round every client's
    copy must equal the server once its stream has caught up."""
    rng = random.Random(seed)
    folders = ("INBOX",) if protocol == "pop3" else ("INBOX", personal(stack, SECOND))
    mutator = Mutator(box, stack, random.Random(rng.random()), folders,
                      recreate=protocol == "imap")  # fmt: skip
    prepare(box, stack, folders)
    for _ in range(3):
        await asyncio.to_thread(mutator.append, "INBOX")
    replicas = [
        EventReplica(box, protocol, f, random.Random(rng.random())) for f in (*folders, "INBOX")
    ]
    running = contextlib.AsyncExitStack()
    url = await running.enter_async_context(gateway())
    for rep in replicas:
        rep.url = url
    tasks = [asyncio.create_task(rep.run()) for rep in replicas]
    try:
        for round_ in range(rounds):
            pauses = [rng.random() * 0.02 for _ in range(steps)]

            def mutate(pauses: list[float]) -> None:
                for pause in pauses:
                    mutator.step()
                    time.sleep(pause)

            work = asyncio.create_task(asyncio.to_thread(mutate, pauses))
            if restarts and rng.random() < 0.5:  # the gateway shuts down mid-round
                await asyncio.sleep(rng.random() * 0.3)
                await running.aclose()
                running = contextlib.AsyncExitStack()
                url = await running.enter_async_context(gateway())
                for rep in replicas:
                    rep.url = url
            await work
            for rep in replicas:
                context = f"seed {seed} round {round_} {rep.folder}: {mutator.log[-steps:]}"
                await settled(rep, box, stack, context)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await running.aclose()
        mutator.close()
    total: Counter[str] = Counter()
    for rep in replicas:
        total.update({f"{rep.folder}:{k}": v for k, v in rep.stats.items()})
    return total
