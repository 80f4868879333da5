"""Reading endpoints: list, fetch (parsed, raw, attachment), delete, patch."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel

from service import mime
from service.api.pagejson import PageEncoder
from service.api.peer import can_confirm_delivery
from service.api.query import QueryModel
from service.api.readers import ContextDep, MailContext
from service.api.responses import CommitAfterSendResponse, one_chunk, parse_range
from service.config import Settings
from service.errors import (
    ALL_ERRORS,
    InvalidId,
    MailGatewayError,
    NotFound,
    NotSupported,
    UpstreamFailure,
    ValidationFailed,
)
from service.ids import ImapRef, MessageRef, Pop3Ref, decode_id
from service.models.message import (
    DeleteRequest,
    DeleteResult,
    DeleteResults,
    ListParams,
    MessagePage,
    MessagePatch,
    ParsedMessage,
)
from service.models.problem import problem_responses
from service.protocols.base import ListQuery, OpenedMessage

router = APIRouter(tags=["messages"])
T = TypeVar("T")

Protocol = Literal["imap", "pop3"]
Mode = Literal["keep", "remove"]

ProtocolQuery = Annotated[
    Protocol | None,
    Query(
        description="imap or pop3. Default: the protocol the id was made by "
        "(for lists: MAILGATE_DEFAULT_PROTOCOL)."
    ),
]
ModeQuery = Annotated[
    Mode | None,
    Query(
        description=(
            "keep: no side effect on the server (IMAP reads with BODY.PEEK, POP3 with TOP, "
            "never DELE). remove: the message is deleted on the mail server (IMAP \\Deleted "
            "+ UID EXPUNGE of that UID alone; POP3 DELE + QUIT) only when all of these hold: "
            "every byte of the answer was handed to the connection; the kernel reports that "
            "the peer's TCP acknowledged every one of them (Linux SIOCOUTQ and tcp_info); no "
            "disconnect, reset or error was seen at any point; and the connection was not "
            "reset within MAILGATE_REMOVE_LINGER_SECONDS (0.5 s) after that, which catches a "
            "client that hangs up before reading what its kernel received. Anything else "
            "(an error, a client that leaves or stalls past MAILGATE_STALL_TIMEOUT) leaves "
            "the message, and the gateway logs why. The removal is committed a moment after "
            "the answer is complete, not before the client has it. **Peer** means the TCP "
            "peer of the gateway: behind a reverse proxy or load balancer that is the proxy, "
            "which acknowledges bytes it buffered, not the end client. A TCP acknowledgement "
            "is not an application receipt: a client that needs one (its database committed "
            "the message) should fetch with keep and then DELETE. Where the HTTP server in "
            "use cannot tell what the peer acknowledged (not TCP on Linux, TLS terminated in "
            "the gateway itself, an in-process client), remove answers 422 not-supported. "
            "remove with a Range header is 422 validation-failed on every read (parsed, "
            "raw, attachment), whether or not it honours Range: resume with keep, then "
            "DELETE. Default: MAILGATE_DEFAULT_MODE."
        )
    ),
]
MarkSeenQuery = Annotated[
    bool,
    Query(description="keep mode: set \\Seen once the response was written (IMAP only)."),
]
IdPath = Annotated[
    str,
    Path(
        description="Opaque message id from a listing (anything else is 400 invalid-id).",
        json_schema_extra={"pattern": "^[ip][A-Za-z0-9_-]{2,2048}$"},
    ),
]


class ReadParams(BaseModel):
    """The query of the fetches (parsed, raw, attachment): one model, validated in one
    pass by :class:`~service.api.query.QueryModel`."""

    protocol: ProtocolQuery = None
    mode: ModeQuery = None
    mark_seen: MarkSeenQuery = False


_READ_QUERY = QueryModel(ReadParams)

_ERRS = (400, 401, 403, 404, 409, 410, 422, 429, 502, 503, 504)
_MODE_HEADER = {
    "X-Mail-Mode": {
        "description": "keep: the server's copy stays; remove: it is deleted once this "
        "response has been fully written",
        "schema": {"type": "string", "enum": ["keep", "remove"]},
    }
}


_THREAD_ABOVE = 256 * 1024


async def _cpu(func: Callable[..., T], raw: bytes, *args: Any, **kwargs: Any) -> T:
    """Parse small messages inline; large ones in a thread so the loop keeps serving."""
    if len(raw) < _THREAD_ABOVE:
        return func(raw, *args, **kwargs)
    return await asyncio.to_thread(func, raw, *args, **kwargs)


def _protocol_for(ref: MessageRef, asked: Protocol | None) -> Protocol:
    own: Protocol = "imap" if isinstance(ref, ImapRef) else "pop3"
    if asked is not None and asked != own:
        raise InvalidId(f"This id belongs to {own}, not {asked}.")
    return own


def _mode_headers(mode: Mode) -> dict[str, str]:
    return {"X-Mail-Mode": mode, "Cache-Control": "no-store"}


async def _open(ctx: MailContext, msg_id: str, protocol: Protocol | None, mode: Mode,
                prefetch: Literal["body", "stream", "structure"] = "body",
                ) -> tuple[OpenedMessage, Protocol]:  # fmt: skip
    if mode == "remove" and "range" in ctx.request.headers:
        # On every read, not only /raw (the one that honours Range): a partial or resumed
        # download must never be the one that deletes the message.
        raise ValidationFailed("mode=remove cannot be combined with Range: use keep, then DELETE.")
    ref = decode_id(msg_id)
    proto = _protocol_for(ref, protocol)
    if mode == "remove" and not can_confirm_delivery(ctx.request.scope):
        raise NotSupported(
            "mode=remove needs to know that the peer received every byte, and the HTTP "
            "server in use cannot tell (no TCP socket on Linux, or TLS terminated in the "
            "gateway): use mode=keep, then DELETE."
        )
    reader = ctx.reader(proto)
    return await reader.open(ref, prefetch=prefetch), proto


@asynccontextmanager
async def _answering(msg: OpenedMessage, mode: Mode) -> AsyncIterator[None]:
    """Until the response object exists, any error releases the message's session
    (kept when the mail server was not at fault); in remove mode, first make sure the
    removal can be done, so that ``removed: true`` is never promised in vain."""
    try:
        if mode == "remove":
            await msg.prepare_remove()
        yield
    except BaseException as exc:
        server_fine = isinstance(exc, MailGatewayError) and not isinstance(exc, UpstreamFailure)
        await msg.release(healthy=server_fine)
        raise


_PART_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")


def _media_type(content_type: str) -> str:
    """An attachment's type if it is a plain ASCII type/subtype, else octet-stream."""
    return content_type if _TOKEN.match(content_type) else "application/octet-stream"


def _commit_response(
    msg: OpenedMessage,
    chunks: AsyncIterator[bytes],
    *,
    mode: Mode,
    mark_seen: bool,
    protocol: Protocol,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    media_type: str,
    settings: Settings,
) -> CommitAfterSendResponse:
    async def complete() -> None:
        if mode == "remove":
            await msg.remove()
        elif mark_seen and protocol == "imap":
            await msg.mark_seen()

    async def finish(ok: bool) -> None:
        await msg.release(healthy=ok)

    commits = mode == "remove" or (mark_seen and protocol == "imap")
    return CommitAfterSendResponse(
        chunks,
        stall_timeout=settings.stall_timeout,
        confirm_delivery=mode == "remove",
        linger=settings.remove_linger_seconds,
        status_code=status_code,
        headers={**_mode_headers(mode), **(headers or {})},
        media_type=media_type,
        on_complete=complete if commits else None,
        on_finish=finish,
        watch_at_once=False,
    )


_LIST_QUERY = QueryModel(ListParams)


@router.get(
    "/messages",
    operation_id="listMessages",
    response_model=MessagePage,
    response_model_by_alias=True,
    summary="List message summaries, newest first",
    description=(
        "Newest first = arrival order (highest UID / highest POP3 message number). A page "
        "costs one SEARCH and one FETCH of that page (IMAP) or UIDL + LIST + TOP of the "
        "page (POP3). `next_cursor` is opaque; paging stays correct when messages arrive "
        "or are deleted between pages. Filters are IMAP SEARCH (since/before: the internal "
        "date). On POP3 the header filters (from, to, subject; since/before by the Date "
        "header) read each message's header until the page is full; unseen, flagged and text "
        "answer 422 not-supported (POP3 has no flags and no search). A cursor that can no "
        "longer be placed answers 410 stale-id (list again): IMAP when the folder's "
        "UIDVALIDITY changed, POP3 when the page and every message around it were deleted. "
        "Subjects and names are decoded by the same function as the parsed fetch, so both "
        "views agree; raw 8-bit header bytes of a multipart that are not UTF-8 are read in "
        "the charset its parts declare (IMAP: from BODYSTRUCTURE; POP3: looked for in the "
        "first 200 body lines)."
    ),
    responses=problem_responses(*_ERRS),
    openapi_extra={"parameters": _LIST_QUERY.parameters},
)
async def list_messages(
    ctx: ContextDep, params: Annotated[ListParams, Depends(_LIST_QUERY)]
) -> Response:
    for value in (params.from_, params.to, params.subject, params.text):
        if value is not None and any(ord(c) < 32 for c in value):
            raise ValidationFailed("Search strings must not contain control characters.")
    for day in (params.since, params.before):
        if day is not None and not 1970 <= day.year <= 9999:
            raise ValidationFailed("since and before must lie between 1970 and 9999.")
    query = ListQuery(
        limit=params.limit, cursor=params.cursor, unseen=params.unseen, flagged=params.flagged,
        since=params.since, before=params.before, from_=params.from_, to=params.to,
        subject=params.subject, text=params.text, count=params.count,
    )  # fmt: skip
    proto = params.protocol or ctx.settings.default_protocol
    reader = ctx.reader(proto)
    page = await reader.list_messages(params.folder, query)
    # JSON bytes from the models (pydantic-core; a cached summary's kept from its last
    # listing), without the other protocol's key, and `total` only when asked for.
    encoder: PageEncoder = ctx.request.app.state.page_encoder
    body = encoder.encode(
        page,
        leave_out="uidl" if proto == "imap" else "uid",
        with_total=params.count,
        remember=proto == "imap",
    )
    return Response(body, media_type="application/json")


@router.get(
    "/messages/{id}",
    operation_id="getMessage",
    openapi_extra={"parameters": _READ_QUERY.parameters},
    response_model=ParsedMessage,
    summary="Fetch one message parsed to JSON",
    description=(
        "Encoded words and charsets are decoded; a defective message is still returned with "
        "`defects`. Header fields are decoded as in the listing (one decoder): raw 8-bit "
        "bytes as UTF-8 when valid, else in the charset the message declares (its first "
        "Content-Type charset other than US-ASCII/UTF-8), else windows-1252, with a "
        "defect; line breaks from encoded words become spaces, and display names hold no "
        "control characters. Parts are cut from the server's bytes (an attachment's `size` "
        "is its decoded length). Parsing has budgets: MAILGATE_MIME_MAX_PARTS parts "
        "(default 10,000, Dovecot's own; the part at the limit holds the rest of the "
        "message) and MAILGATE_MIME_MAX_DEPTH nested multiparts (default 50; deeper is one "
        "part); past either, the headers are still read and a defect says so. Messages "
        "over MAILGATE_MAX_MESSAGE_BYTES answer 413 (use /raw). "
        "`removed: true` means the message is deleted once this response has been fully "
        "written (mode=remove)."
    ),
    responses={200: {"headers": _MODE_HEADER}, **problem_responses(413, *_ERRS)},
)
async def get_message(
    ctx: ContextDep, id: IdPath, params: Annotated[ReadParams, Depends(_READ_QUERY)]
) -> Response:
    protocol, mode, mark_seen = params.protocol, params.mode, params.mark_seen
    mode_ = mode or ctx.settings.default_mode
    msg, proto = await _open(ctx, id, protocol, mode_)
    async with _answering(msg, mode_):
        raw = await msg.read(ctx.settings.max_message_bytes)
        parsed = await _cpu(
            mime.parse_message, raw, id=id, folder=msg.folder, flags=msg.flags, size=msg.size,
            limits=ctx.settings.mime_limits,
        )  # fmt: skip
        parsed.removed = mode_ == "remove"
        body = parsed.model_dump_json(by_alias=True).encode()
        return _commit_response(
            msg, one_chunk(body), mode=mode_, mark_seen=mark_seen, protocol=proto,
            settings=ctx.settings, media_type="application/json",
            headers={"Content-Length": str(len(body))},  # known: not chunked, as all JSON
        )  # fmt: skip


# Read by get_raw from the request's headers (a FastAPI parameter costs per request),
# documented as FastAPI documents a Header() parameter.
_RANGE_HEADER = {
    "in": "header",
    "name": "range",
    "required": False,
    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Range"},
}


@router.get(
    "/messages/{id}/raw",
    operation_id="getRawMessage",
    openapi_extra={"parameters": [_RANGE_HEADER, *_READ_QUERY.parameters]},
    summary="The exact RFC 5322 bytes, streamed",
    description=(
        "Streamed in bounded chunks (IMAP partial fetches, POP3 RETR as it arrives), so a "
        "large message never sits whole in the gateway. `Range: bytes=a-b` answers 206 with "
        "Content-Range (one range; several ranges answer 200 whole); 416 when unsatisfiable. "
        "mode=remove with Range is refused (422): resume with keep, then DELETE."
    ),
    response_class=Response,
    responses={
        200: {
            "content": {"message/rfc822": {}},
            "description": "The message (Content-Length when the size is known exactly; "
            "otherwise chunked)",
            "headers": _MODE_HEADER,
        },
        206: {
            "content": {"message/rfc822": {}},
            "description": "The requested range",
            "headers": {
                "Content-Range": {"schema": {"type": "string"}, "description": "bytes a-b/size"}
            },
        },
        **problem_responses(416, *_ERRS),
    },
)
async def get_raw(
    ctx: ContextDep,
    id: IdPath,
    params: Annotated[ReadParams, Depends(_READ_QUERY)],
) -> Response:
    protocol, mode, mark_seen = params.protocol, params.mode, params.mark_seen
    range_ = ctx.request.headers.get("range")
    mode_ = mode or ctx.settings.default_mode
    msg, proto = await _open(ctx, id, protocol, mode_, prefetch="stream")
    async with _answering(msg, mode_):
        await msg.check_size()
        if range_ is not None and not msg.exact_size:
            # The server's size is an estimate: measure the message so that ranges
            # (and the resume-then-DELETE path they serve) are exact.
            msg.size = sum([len(piece) async for piece in msg.chunks()])
            msg.exact_size = True
        span = parse_range(range_, msg.size)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{_safe_ascii(id)[:80]}.eml"',
        }
        if span is not None:
            start, end = span
            headers["Content-Length"] = str(end - start)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{msg.size}"
            chunks = msg.chunks(start, end)
        else:
            if msg.exact_size:
                headers["Content-Length"] = str(msg.size)
            chunks = msg.chunks()  # an estimated size: streamed chunked, to the real end
        return _commit_response(
            msg, chunks, mode=mode_, mark_seen=mark_seen and span is None, protocol=proto,
            status_code=206 if span is not None else 200, headers=headers,
            settings=ctx.settings, media_type="message/rfc822",
        )  # fmt: skip


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def _safe_ascii(name: str) -> str:
    return _UNSAFE.sub("_", name).strip(" .") or "attachment"


def content_disposition(filename: str | None, kind: str | None = "attachment") -> str:
    """A Content-Disposition that no filename can break out of (RFC 6266)."""
    kind = "inline" if kind == "inline" else "attachment"
    name = (filename or "attachment").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip() or "attachment"
    fallback = _safe_ascii(name)[:150]
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name[:200], safe='')}"


@router.get(
    "/messages/{id}/attachments/{attachment_id}",
    operation_id="getAttachment",
    openapi_extra={"parameters": _READ_QUERY.parameters},
    summary="One attachment, decoded, streamed",
    description=(
        "`attachment_id` is the MIME part number (IMAP section) listed by the parsed fetch; "
        "the section of the text or HTML body works too. The bytes are the server's bytes "
        "of that part (IMAP `BODY[section]`: an attached `message/rfc822` comes whole and "
        "exact), decoded only by its Content-Transfer-Encoding (base64 made of several "
        "blocks is decoded whole), the same for any message size and on IMAP and POP3. "
        "Streamed (chunked): IMAP fetches the part alone by its section from the server's "
        "BODYSTRUCTURE, POP3 reads the message once and stops after the part, so no size "
        "limit applies. 404 for a section that is not a leaf part of the message (a "
        "multipart with parts, a part inside an attached message). A multipart nested "
        "deeper than MAILGATE_MIME_MAX_DEPTH is one part (its body, boundaries included)."
    ),
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "Decoded bytes, with the attachment's own content type",
            "headers": _MODE_HEADER,
        },
        **problem_responses(413, *_ERRS),
    },
)
async def get_attachment(
    ctx: ContextDep,
    id: IdPath,
    attachment_id: Annotated[
        str,
        Path(
            description="MIME part number (e.g. `2` or `1.2`); anything else is 400 invalid-id.",
            json_schema_extra={"pattern": _PART_PATTERN, "maxLength": 2000},
        ),
    ],
    params: Annotated[ReadParams, Depends(_READ_QUERY)],
) -> Response:
    protocol, mode, mark_seen = params.protocol, params.mode, params.mark_seen
    if len(attachment_id) > 2000 or not re.fullmatch(_PART_PATTERN, attachment_id):
        raise InvalidId("The attachment id is malformed: a MIME part number such as 2 or 1.2.")
    mode_ = mode or ctx.settings.default_mode
    msg, proto = await _open(ctx, id, protocol, mode_, prefetch="structure")
    async with _answering(msg, mode_):
        found = await msg.open_part(attachment_id)
        if found is None:
            raise NotFound(f"The message has no attachment or body part {attachment_id!r}.")
        info, pieces = found
        return _commit_response(
            msg, pieces, mode=mode_, mark_seen=mark_seen, protocol=proto,
            settings=ctx.settings, media_type=_media_type(info.content_type),
            headers={
                "Content-Disposition": content_disposition(info.filename, info.disposition),
                "X-Content-Type-Options": "nosniff",
            },
        )  # fmt: skip


_DETAILS = {
    "not-found": "No such message.",
    "stale-id": "The message id is stale (the folder's UIDVALIDITY changed).",
    "conflict": "The IMAP server has no UIDPLUS and other messages in this folder are "
    "flagged \\Deleted by another client; nothing was changed.",
    "not-supported": "The folder is read-only on the server; nothing was changed.",
}


def _raise_for(result: DeleteResult) -> None:
    for cls in ALL_ERRORS:
        if cls.status == result.status and cls.code == result.code:
            raise cls(_DETAILS.get(result.code or ""))
    raise NotFound()


@router.delete(
    "/messages/{id}",
    operation_id="deleteMessage",
    status_code=204,
    response_class=Response,
    summary="Delete one message",
    description=(
        "IMAP: \\Deleted + UID EXPUNGE of that UID alone (never a bare EXPUNGE). "
        "POP3: DELE, committed by QUIT."
    ),
    responses=problem_responses(*_ERRS),
)
async def delete_message(
    ctx: ContextDep,
    id: IdPath,
    protocol: ProtocolQuery = None,
) -> Response:
    ref = decode_id(id)
    proto = _protocol_for(ref, protocol)
    reader = ctx.reader(proto)
    [result] = await reader.delete([ref])
    if result.status != 204:
        _raise_for(result)
    return Response(status_code=204)


@router.post(
    "/messages/delete",
    operation_id="deleteMessages",
    response_model=DeleteResults,
    summary="Delete several messages (at most 200)",
    description=(
        "Answers 200 with each id's own status (204 deleted, 400 invalid-id, 404 not-found, "
        "409 conflict: an IMAP server without UIDPLUS while other messages of the folder are "
        "flagged \\Deleted by another client; 410 stale-id) and problem code. Credentials "
        "are checked with the server first, even when every id is malformed: refused "
        "credentials are 401, never 200 with per-id results. The protocol "
        "is the one the ids were made by. Without UIDPLUS, the gateway expunges only when "
        "no other message of the folder carries \\Deleted, so it never purges another "
        "client's flagged messages. A body over 1 MiB is 413; a body that is not "
        "application/json, 415."
    ),
    responses=problem_responses(413, 415, *_ERRS),
)
async def delete_many(
    ctx: ContextDep,
    body: DeleteRequest,
    protocol: ProtocolQuery = None,
) -> DeleteResults:
    results: dict[int, DeleteResult] = {}
    by_proto: dict[Protocol, list[tuple[int, MessageRef]]] = {"imap": [], "pop3": []}
    for i, raw_id in enumerate(body.ids):
        try:
            ref = decode_id(raw_id)
            by_proto[_protocol_for(ref, protocol)].append((i, ref))
        except InvalidId:
            results[i] = DeleteResult(id=raw_id, status=400, code="invalid-id")
    if not any(by_proto.values()):
        # Only malformed ids: still ask the server, so refused credentials are 401.
        await ctx.reader(protocol or ctx.settings.default_protocol).verify()
    for proto, items in by_proto.items():
        if not items:
            continue
        reader = ctx.reader(proto)
        done = await reader.delete([ref for _, ref in items])
        for (i, _), res in zip(items, done, strict=True):
            results[i] = DeleteResult(id=body.ids[i], status=res.status, code=res.code)
    return DeleteResults(results=[results[i] for i in range(len(body.ids))])


@router.patch(
    "/messages/{id}",
    operation_id="updateMessage",
    status_code=204,
    response_class=Response,
    summary="Set seen/flagged, or move to another folder (IMAP)",
    description=(
        "POP3 answers 422 not-supported. A move gives the message a new id in its new "
        "folder: the 204 of a move carries it as `Location: /v1/messages/{new id}` where "
        "the server names the new UID (IMAP UIDPLUS, RFC 4315 COPYUID; Dovecot, Gmail, "
        "Exchange do); without it, list that folder to get it. The old id then answers "
        "404. A body over 1 MiB is 413; a body that is not application/json, 415."
    ),
    responses={
        **problem_responses(413, 415, *_ERRS),
        204: {
            "description": "Done",
            "headers": {
                "Location": {
                    "description": "After a move: the message's new id, as its path "
                    "(`/v1/messages/{id}`, relative to the gateway's root); absent "
                    "without a move or where the server does not name the new UID.",
                    "schema": {"type": "string"},
                }
            },
        },
    },
)
async def patch_message(
    ctx: ContextDep,
    id: IdPath,
    patch: MessagePatch,
    protocol: ProtocolQuery = None,
) -> Response:
    ref = decode_id(id)
    proto = _protocol_for(ref, protocol)
    if isinstance(ref, Pop3Ref):
        raise NotSupported("POP3 has no flags or folders.")
    if patch.seen is None and patch.flagged is None and patch.folder is None:
        raise ValidationFailed("Give at least one of seen, flagged, folder.")
    reader = ctx.reader(proto)
    moved_to = await reader.patch(ref, patch)
    if moved_to is None:
        return Response(status_code=204)
    return Response(status_code=204, headers={"Location": f"/v1/messages/{moved_to}"})
