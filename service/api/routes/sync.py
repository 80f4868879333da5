"""Sync endpoints: GET /v1/changes (what changed since a state) and GET /v1/events (live)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse

from service.api.deps import ProtocolDep
from service.api.readers import ContextDep
from service.models.problem import problem_responses
from service.models.sync import Changes

router = APIRouter(tags=["sync"])

FolderQuery = Annotated[
    str, Query(description="IMAP folder; POP3 has only INBOX.", min_length=1, max_length=1000)
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
| IMAP, QRESYNC | UID FETCH CHANGEDSINCE | VANISHED (EARLIER) |
| IMAP, CONDSTORE | UID FETCH CHANGEDSINCE | UIDs below UIDNEXT counted: none → exact, else 410 |
| IMAP, neither | UIDNEXT; flags digest same → exact, else 410 | same digest |
| POP3 | messages after an unchanged UIDL prefix | any deletion → 410 |

UIDVALIDITY changed: 410. A malformed state, or one of another folder or protocol: 422
`validation-failed`.

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
        **problem_responses(401, 403, 404, 410, 422, 502, 503, 504),
        200: {
            "description": "The changes since `since`",
            "content": {
                "application/json": {
                    "example": {
                        "old_state": "i1eyJiIjpbMTIsMTEsMzAsbnVsbF0sImYiOiJJTkJPWCIsInYiOjE3fQ",
                        "new_state": "i1eyJiIjpbMTQsMTIsMzQsbnVsbF0sImYiOiJJTkJPWCIsInYiOjE3fQ",
                        "has_more": False,
                        "created": [
                            {
                                "id": "iMTc6MTM6SU5CT1g",
                                "folder": "INBOX",
                                "uid": 13,
                                "message_id": "<a1@example.test>",
                                "subject": "Hello",
                                "from": [{"name": "Alice", "address": "alice@example.test"}],
                                "to": [{"name": None, "address": "bob@example.test"}],
                                "cc": [],
                                "date": "2026-11-30T09:00:00+00:00",
                                "size": 1830,
                                "flags": [],
                                "seen": False,
                                "has_attachments": False,
                            }
                        ],
                        "updated": [
                            {
                                "id": "iMTc6NDpJTkJPWA",
                                "flags": ["\\Seen", "\\Flagged"],
                                "seen": True,
                                "flagged": True,
                            }
                        ],
                        "destroyed": ["iMTc6MjpJTkJPWA"],
                    }
                }
            },
        },
    },
)
async def get_changes(
    ctx: ContextDep,
    protocol: ProtocolDep,
    since: StateQuery,
    folder: FolderQuery = "INBOX",
    limit: Annotated[int, Query(ge=1, le=500, description="Most entries per answer.")] = 100,
) -> JSONResponse:
    changes = await ctx.tracker(protocol).changes(folder, since, limit)
    body = changes.model_dump(mode="json", by_alias=True)
    other = "uidl" if protocol == "imap" else "uid"
    for item in body["created"]:
        item.pop(other, None)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
