"""Sync endpoints: GET /v1/changes (what changed since a state) and GET /v1/events (live)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from starlette.responses import JSONResponse

from service.api.deps import ProtocolDep
from service.api.problems import PROBLEM_TYPE_BASE
from service.api.readers import ContextDep
from service.api.responses import CommitAfterSendResponse
from service.errors import CannotCalculateChanges, MailGatewayError
from service.models.message import FOLDER_PATTERN
from service.models.problem import problem_responses
from service.models.sync import Changes
from service.sync.fanout import Ending, Hub, Mark, Subscription
from service.sync.source import Change
from service.sync.state import decode_state

router = APIRouter(tags=["sync"])

FolderQuery = Annotated[
    str,
    Query(
        description="IMAP folder by its full name, as `GET /v1/folders` gives it "
        "(servers that keep the user's folders under INBOX, such as Cyrus, name them "
        "`INBOX.Archive`); POP3 has only INBOX. No control characters (422).",
        min_length=1,
        max_length=1000,
        pattern=FOLDER_PATTERN,
    ),
]
StateQuery = Annotated[
    str,
    Query(
        min_length=3,
        max_length=4096,
        description="A `state` from a listing, a folder, a previous `new_state` or an event id.",
    ),
]

CHANGES_DESCRIPTION = """\
What changed in one folder since `since`, in the listing's summary shape (RFC 8620 §5.2,
for mail): `created` (arrived, appended or moved in; newest first, current flags),
`updated` (flags set or cleared: `{id, flags, seen, flagged}`), `destroyed` (ids expunged
or moved out). A message created and changed since the state appears once, in `created`;
one created and destroyed since is left out.

At most `limit` entries per answer: while `has_more` is true, `new_state` is an
intermediate state; call again with `since=new_state` until it is false.

**Never a wrong answer.** When the server cannot say exactly what changed, the answer is
410 `cannot-calculate-changes` and the client lists the folder again:

| server | arrivals, flags | expunges, moves out |
| --- | --- | --- |
| IMAP, QRESYNC | as told to a session (see Cost), else CHANGEDSINCE | as told, else VANISHED |
| IMAP, CONDSTORE | UID FETCH CHANGEDSINCE | UIDs below UIDNEXT counted: none → exact, else 410 |
| IMAP, neither | UIDNEXT; flags digest same → exact, else 410 | same digest |
| POP3 | messages after an unchanged UIDL prefix | any deletion → 410 |

**Cost.** With QRESYNC, a gateway session that keeps the folder selected is told each
change as it happens (RFC 7162: a `FETCH` with `MODSEQ`, `VANISHED`). For a state at or
after that session's SELECT, the answer comes from what it was told plus one `UID FETCH`
of the UIDs it names: its cost follows the changes, not the folder. Any other state (older
than the session, or an expunge it cannot place before or after the state) is answered by
`CHANGEDSINCE`, which Dovecot computes by looking at every message's MODSEQ. Both give
the same answer; `mailgate_imap_changes_total{source}` counts which did.

UIDVALIDITY changed: 410. A malformed state, or one of another folder, protocol or mailbox
(provider and user, the user's case aside): 422 `validation-failed`. A state names its
mailbox by a plain digest (any replica checks it with no shared key); a state made before
states named their mailbox (format 1) answers 410: list again, once.

**The client loop**: `GET /v1/messages` (keep `state`) → `GET /v1/changes?since=state`
(apply, keep `new_state`, repeat while `has_more`) → `GET /v1/events` with
`Last-Event-ID: new_state` (or `?since=`) to hear of changes as they happen; after a 410,
list again.
"""


@router.get(
    "/changes",
    operation_id="getChanges",
    response_model=Changes,
    response_model_by_alias=True,
    summary="What changed since a state",
    description=CHANGES_DESCRIPTION,
    responses={
        **problem_responses(401, 403, 404, 409, 410, 422, 429, 502, 503, 504),
        200: {"description": "The changes since `since`"},
    },
)
async def get_changes(
    ctx: ContextDep,
    protocol: ProtocolDep,
    since: StateQuery,
    folder: FolderQuery = "INBOX",
    limit: Annotated[int, Query(ge=1, le=500, description="Most entries per answer.")] = 100,
) -> JSONResponse:
    page = await ctx.tracker(protocol).changes(folder, since, limit)
    body = page.model().model_dump(mode="json", by_alias=True)
    other = "uidl" if protocol == "imap" else "uid"
    for item in body["created"]:
        item.pop(other, None)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


EVENTS_DESCRIPTION = """\
A `text/event-stream` (Server-Sent Events) of the folder's changes as they happen: the
same objects as `/changes`, one event each.

```
: mailgate events
retry: 2000

id: i2eyJiIjpbMTQsMTIsMzQsbnVsbF0sImYiOiJJTkJPWCIsIm0iOiJxOFNFWVFEZkVlUVhqcWJxIiwidiI6MTd9

id: i2eyJiIjpbMTUsMTMsMzYsbnVsbF0sImYiOiJJTkJPWCIsIm0iOiJxOFNFWVFEZkVlUVhqcWJxIiwidiI6MTd9
event: created
data: {"id": "iMTc6MTQ6SU5CT1g", "folder": "INBOX", "uid": 14, "subject": "Hello", ...}

id: i2eyJiIjpbMTUsMTMsMzcsbnVsbF0sImYiOiJJTkJPWCIsIm0iOiJxOFNFWVFEZkVlUVhqcWJxIiwidiI6MTd9
event: updated
data: {"id": "iMTc6NDpJTkJPWA", "flags": ["\\\\Seen"], "seen": true, "flagged": false}

id: i2eyJiIjpbMTUsMTIsMzgsbnVsbF0sImYiOiJJTkJPWCIsIm0iOiJxOFNFWVFEZkVlUVhqcWJxIiwidiI6MTd9
event: destroyed
data: "iMTc6MjpJTkJPWA"

: ping
```

- Every event's `id:` is the state once it is applied: a browser's `EventSource`
  reconnects with `Last-Event-ID` and the stream first replays exactly what changed
  since (as `/changes` would answer), then goes live. `since=STATE` does the same for
  the first connection (EventSource cannot set headers); `Last-Event-ID` wins.
- Without either, the stream starts with an `id:`-only event: the current state
  (no data, so no `message` event fires, but `lastEventId` is set).
- `event: cannot-calculate-changes` (data: a problem object) ends the stream when the
  server cannot tell what changed since the state (also when the folder was deleted
  or re-created meanwhile): list again, reconnect with the new state. `event: error`
  (a problem object) ends it when the mail server failed.
- `: ping` comments at least every 30 s (`MAILGATE_EVENTS_HEARTBEAT_SECONDS`) keep
  proxies from closing a quiet stream.
- IMAP: IDLE (RFC 2177) where offered, else polling every
  `MAILGATE_EVENTS_POLL_SECONDS`; POP3: polling (UIDL). All streams of one mailbox,
  folder and credentials in one gateway process share one IMAP session, counted with
  the read sessions in the mailbox's connection budget. Event streams may hold at most
  half of that budget (the rest stays for reads): past it, 429 with `Retry-After`; where
  the budget is one session per mailbox and worker, 422 `not-supported` (use
  `/changes`).
- A client that stops reading is dropped (`MAILGATE_EVENTS_BUFFER` events waiting, or
  `MAILGATE_STALL_TIMEOUT`), never buffered without bound (the events that fit are
  sent first: a replay longer than the buffer comes over several connections); the
  stream also ends when the gateway shuts down. Either way: reconnect with the last
  event id.

**The client loop**: `GET /v1/messages` (keep `state`) → `GET /v1/changes?since=state`
while `has_more` → `GET /v1/events?since=new_state`; on `cannot-calculate-changes`,
list again.
"""


def _problem(exc: MailGatewayError, path: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + exc.code,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": path,
        "code": exc.code,
    }
    if exc.upstream is not None:
        body["upstream"] = {"protocol": exc.upstream.protocol, "reply": exc.upstream.reply}
    return body


def _sse(item: Change | Mark) -> bytes:
    if isinstance(item, Mark):
        return f"id: {item.state}\n\n".encode()
    data = json.dumps(item.data(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {item.state}\nevent: {item.kind}\ndata: {data}\n\n".encode()


def _ending(ending: Ending, path: str) -> bytes:
    if ending.reason in ("cannot-calculate-changes", "error") and ending.problem is not None:
        data = json.dumps(_problem(ending.problem, path), separators=(",", ":"))
        return f"event: {ending.reason}\ndata: {data}\n\n".encode()
    if ending.reason == "dropped":
        return b": dropped: this client read too slowly; reconnect with Last-Event-ID\n\n"
    return b": the gateway is shutting down; reconnect with Last-Event-ID\n\n"


async def _events(sub: Subscription, heartbeat: float, path: str) -> AsyncIterator[bytes]:
    yield b": mailgate events\nretry: 2000\n\n"
    while True:
        got = await sub.next(heartbeat)
        if got is None:
            yield b": ping\n\n"
        elif isinstance(got, Ending):
            yield _ending(got, path)
            return
        else:
            yield b"".join(_sse(item) for item in got)


@router.get(
    "/events",
    operation_id="streamEvents",
    summary="Live changes (Server-Sent Events)",
    description=EVENTS_DESCRIPTION,
    response_class=CommitAfterSendResponse,
    responses={
        **problem_responses(401, 403, 404, 409, 422, 429, 502, 503, 504),
        200: {
            "description": "An endless `text/event-stream`; see the description for its events",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def stream_events(
    ctx: ContextDep,
    protocol: ProtocolDep,
    folder: FolderQuery = "INBOX",
    since: Annotated[
        str | None,
        Query(min_length=3, max_length=4096, description="Replay the changes since this state."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=4096,
            description="Sent by EventSource on reconnect: replay from there (wins over since).",
        ),
    ] = None,
) -> CommitAfterSendResponse:
    feed = ctx.tracker(protocol).feed(folder)
    start = last_event_id or since
    if start is not None:
        # 422 before streaming; a state the gateway can no longer read (an older version's)
        # is told in the stream, as event cannot-calculate-changes
        with contextlib.suppress(CannotCalculateChanges):
            decode_state(start, protocol=protocol, folder=feed.folder, mailbox=feed.mailbox)
    hub: Hub = ctx.request.app.state.event_hub
    sub = await hub.subscribe(lambda: feed, feed.key, start)

    async def finish(ok: bool) -> None:
        sub.leave()

    return CommitAfterSendResponse(
        _events(sub, ctx.settings.events_heartbeat_seconds, ctx.request.url.path),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        on_finish=finish,
        stall_timeout=ctx.settings.stall_timeout,
    )
