"""POST /v1/send: JSON draft, multipart/form-data or raw message/rfc822 → SMTP."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse
from starlette.types import Scope

from service import mime
from service.api.bodylimit import BodyTooLarge, media_type
from service.api.readers import ContextDep
from service.config import Settings
from service.errors import (
    BadRequest,
    MailGatewayError,
    TooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.models.common import check_addr_spec
from service.models.problem import problem_responses
from service.models.send import Draft, SendResult

log = logging.getLogger("mailgate")
router = APIRouter(tags=["send"])

_DRAFT_SCHEMA_REF = {"$ref": "#/components/schemas/Draft"}
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": _DRAFT_SCHEMA_REF},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {
                        "type": "string",
                        "description": "The Draft as JSON (attachments here are allowed too).",
                    },
                    "attachments": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "Files; filename and content type come from each part.",
                    },
                },
            }
        },
        "message/rfc822": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "Sent unchanged except that Bcc/Resent-Bcc are removed and "
                "added to the envelope; bare LF line endings become CRLF.",
            },
        },
    },
}


SMALL_BODY_BYTES = 1024 * 1024
"""The limit of every request body but a send's (ids, patches: a few kB)."""


def wire_limit(settings: Settings) -> int:
    """A send's JSON or multipart body: the message limit, plus base64 (4/3) and room
    for the other fields."""
    return settings.max_message_bytes * 4 // 3 + 64 * 1024


def body_limit(settings: Settings, scope: Scope) -> int:
    """The body limit of a request (see :func:`service.api.bodylimit.bounded`), in bytes."""
    if scope.get("path") == "/v1/send" and scope.get("method") == "POST":
        if media_type(scope) == "message/rfc822":
            return settings.max_message_bytes
        return wire_limit(settings)
    return SMALL_BODY_BYTES


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body; spooled to a temporary file past 1 MiB while it arrives, so that
    a body refused at the limit never sat in memory."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise TooLarge(f"The request body is over the limit of {limit} bytes.")
    total = 0
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as spool:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"The request body is over the limit of {limit} bytes.")
            spool.write(chunk)
        spool.seek(0)
        return spool.read()


def _draft_digest(draft: Draft) -> bytes:
    """SHA-256 of the draft's content (its JSON with sorted keys, written in pieces: an
    inline attachment's base64 is not copied whole once more)."""
    h = hashlib.sha256()
    encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
    for piece in encoder.iterencode(draft.model_dump(mode="json")):
        h.update(piece.encode())
    return h.digest()


def _draft_from_json(data: bytes | str) -> Draft:
    try:
        return Draft.model_validate_json(data)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("The message draft is not valid JSON.") from None
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = errors[0]
        where = ".".join(first["loc"])
        raise ValidationFailed(
            f"{where}: {first['msg']}" if where else str(first["msg"]), extra={"errors": errors}
        ) from None


async def _multipart(request: Request, limit: int) -> tuple[Draft, list[mime.OutgoingAttachment]]:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise TooLarge(f"The request body is over the limit of {limit} bytes.")
    try:
        form = await request.form(max_files=200, max_fields=50, max_part_size=limit)
    except BodyTooLarge:
        raise
    except Exception as exc:  # starlette raises its own MultiPartException / HTTPException
        raise BadRequest("The multipart/form-data body cannot be read.") from exc
    try:
        message = form.get("message")
        if message is None:
            raise ValidationFailed("A part named 'message' with the JSON draft is required.")
        text = await message.read() if isinstance(message, UploadFile) else message
        draft = _draft_from_json(text)
        files: list[mime.OutgoingAttachment] = []
        total = 0
        for part in form.getlist("attachments"):
            if not isinstance(part, UploadFile):
                raise ValidationFailed("Parts named 'attachments' must be files.")
            total += part.size or 0
            if total > limit:
                raise TooLarge(f"The attachments are over the limit of {limit} bytes.")
            data = await part.read()
            files.append(
                mime.OutgoingAttachment(
                    filename=part.filename,
                    content_type=part.content_type or "application/octet-stream",
                    data=data,
                )
            )
        return draft, files
    finally:
        await form.close()


@router.post(
    "/send",
    operation_id="sendMessage",
    response_model=SendResult,
    summary="Send one message over SMTP",
    description=(
        "Accepts a JSON draft, multipart/form-data (a `message` part with the JSON draft and "
        "`attachments` file parts) or a raw `message/rfc822`. Bcc is delivered but never "
        "transmitted in headers. A header value or address with CR or LF is refused (422) "
        "before anything reaches the SMTP server. A non-ASCII domain is sent in its IDNA "
        "2008 form with the UTS #46 mapping, non-transitional (`straße.test` is "
        "`xn--strae-oqa.test`, never IDNA 2003's `strasse.test`); a domain IDNA 2008 does "
        "not allow is refused (422). A non-ASCII local part needs SMTPUTF8 and is refused "
        "(422). `Idempotency-Key`: the same key with the "
        "same body within 24 h replays the first successful answer "
        "(`Idempotent-Replayed: true`) without sending; with another body, 409. A key "
        "belongs to the caller's provider, user and secret: other credentials never see its "
        "answer nor learn that it exists (for them it is a new key). A second request with "
        "the same key while the first is still sending waits for its answer (up to "
        "MAILGATE_IDEMPOTENCY_WAIT_SECONDS, default 10 s), then answers 409 with "
        "Retry-After. Records live in Redis when MAILGATE_REDIS_URL is set (shared by all "
        "replicas), else in the process; when Redis cannot be reached, a send with a key "
        "answers 503 with Retry-After and sends nothing. Failed sends are not remembered, "
        "so a retry after an error sends again. For a raw message "
        "without a Message-ID header, `message_id` is null. `save_to_sent=true` appends the "
        "copy over IMAP after a successful send; if that fails, the send still answers 200 "
        "with `saved_to: null` (the message went out and must not be sent twice)."
    ),
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=problem_responses(400, 401, 403, 409, 413, 415, 422, 502, 503, 504),
)
async def send(
    ctx: ContextDep,
    save_to_sent: Annotated[
        bool, Query(description="Append a copy (with its Bcc header) to the \\Sent folder.")
    ] = False,
    mail_from: Annotated[
        str | None,
        Query(description="Envelope sender for raw messages: a bare addr-spec, else 422."),
    ] = None,
    rcpt_to: Annotated[
        list[str] | None,
        Query(
            description="Envelope recipients for raw messages (repeatable), each a bare "
            "addr-spec such as a@example.com (no name, no angle brackets): else 422."
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Any string chosen by the caller; the same key and body within "
            "MAILGATE_IDEMPOTENCY_TTL_SECONDS replay the first answer (scoped to the "
            "caller's provider, user and secret); the same key with another body is 409. "
            "A JSON or multipart draft is the same body when its content is (spacing, key "
            "order and multipart boundaries do not count); a raw message, byte for byte.",
        ),
    ] = None,
) -> JSONResponse:
    request, settings, creds = ctx.request, ctx.settings, ctx.creds
    limit = settings.max_message_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/json", "multipart/form-data", "message/rfc822"):
        raise UnsupportedMediaType("Send application/json, multipart/form-data or message/rfc822.")
    for name, values in (("mail_from", [mail_from] if mail_from else []), ("rcpt_to", rcpt_to)):
        for index, value in enumerate(values or []):
            try:
                check_addr_spec(value)
            except ValueError as exc:
                where = name if name == "mail_from" else f"{name}.{index}"
                raise ValidationFailed(
                    f"{where}: {exc}",
                    extra={
                        "errors": [
                            {
                                "loc": ["query", name, *([index] if name == "rcpt_to" else [])],
                                "msg": str(exc),
                                "type": "value_error",
                            }
                        ]
                    },
                ) from None
    draft: Draft | None = None
    files: list[mime.OutgoingAttachment] = []
    body = b""
    if ctype == "multipart/form-data":
        draft, files = await _multipart(request, wire_limit(settings))
        fingerprint_parts = [_draft_digest(draft), *(f.data for f in files)]
    elif ctype == "application/json":
        # By content, as a multipart draft: the same draft with other spacing or key
        # order (a client's JSON library on a retry) is the same body, not a 409.
        draft = _draft_from_json(await _read_body(request, body_limit(settings, request.scope)))
        fingerprint_parts = [_draft_digest(draft)]
    else:
        body = await _read_body(request, body_limit(settings, request.scope))
        fingerprint_parts = [body]
    state = request.app.state.state
    fingerprint = state.idempotency.fingerprint(
        ctype.encode(),
        str(sorted(request.query_params.multi_items())).encode(),
        *fingerprint_parts,
    )

    async def do_send() -> dict[str, Any]:
        sent_copy: bytes
        if ctype == "message/rfc822":
            wire, env_from, rcpts, message_id = mime.prepare_raw(
                body, mail_from=mail_from, rcpt_to=list(rcpt_to or [])
            )
            sent_copy = body
        else:
            assert draft is not None  # noqa: S101 - parsed above for JSON and multipart
            if ctype == "application/json":
                attachments = mime.attachments_from_json(draft)
            else:
                attachments = files
            msg = mime.build_message(draft, attachments, default_from=creds.user)
            wire = mime.serialize(msg)
            env_from, rcpts = mime.envelope(draft, msg)
            message_id = msg["Message-ID"]
            sent_copy = mime.sent_copy(wire, draft) if save_to_sent else b""
        if len(wire) > limit:
            raise TooLarge(f"The message is over the limit of {limit} bytes.")
        sender = ctx.sender()
        outcome = await sender.send(wire, mail_from=env_from, rcpt_to=rcpts)
        saved_to = None
        if save_to_sent:
            try:
                reader = ctx.reader("imap")
                saved_to = await reader.append_sent(sent_copy)
            except MailGatewayError as exc:
                # The message went out; do not turn the send into a failure.
                log.warning("send: saving to Sent failed: %s %s", exc.status, exc.code)
        return SendResult(
            message_id=str(message_id) if message_id else None,
            accepted=outcome.accepted,
            rejected=outcome.rejected,
            saved_to=saved_to,
        ).model_dump(mode="json")

    if not idempotency_key:
        return JSONResponse(await do_send())
    identity = state.hasher.identity(ctx.provider.name, creds)
    async with state.idempotency.claim(identity, idempotency_key, fingerprint) as slot:
        if slot.replay is not None:
            return JSONResponse(slot.replay, headers={"Idempotent-Replayed": "true"})
        answer = await do_send()
        slot.store(answer)
    return JSONResponse(answer)
