"""GET /v1/folders: folders with special-use roles and optional counts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from service.api.deps import ProtocolDep
from service.api.readers import ContextDep
from service.models.message import FolderList
from service.models.problem import problem_responses

router = APIRouter(tags=["folders"])


@router.get(
    "/folders",
    operation_id="listFolders",
    response_model=FolderList,
    summary="Folders and their roles",
    description=(
        "IMAP: LIST with special-use roles (`\\Sent` → sent, …), counts by STATUS when "
        "`counts=true`. POP3: one folder, INBOX (counts from STAT; unseen is null)."
    ),
    responses=problem_responses(401, 403, 422, 502, 503, 504),
)
async def list_folders(
    ctx: ContextDep,
    protocol: ProtocolDep,
    counts: Annotated[bool, Query(description="Add messages and unseen per folder.")] = False,
) -> Response:
    reader = ctx.reader(protocol)
    folders = FolderList(items=await reader.folders(counts=counts))
    # messages/unseen appear only with counts=true (unseen stays null on POP3).
    exclude = None if counts else {"items": {"__all__": {"messages", "unseen"}}}
    return Response(folders.model_dump_json(exclude=exclude), media_type="application/json")
