"""The HTTP server's own answers in problem+json: uvicorn's 400 for unreadable HTTP."""

from __future__ import annotations

import json
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.problems import PROBLEM_TYPE_BASE


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering a request it cannot parse (bad request line,
    header syntax, framing) with application/problem+json ``bad-request`` like every
    other error of the gateway, instead of a plain-text line."""

    def send_400_response(self, msg: str) -> None:
        request_id = uuid.uuid4().hex  # the request could not be read: a new id
        body = json.dumps(
            {
                "type": PROBLEM_TYPE_BASE + "bad-request",
                "title": "Bad request",
                "status": 400,
                "detail": "The HTTP request cannot be read.",
                "code": "bad-request",
                "request_id": request_id,
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            output = self.conn.send(event)
            if output:
                self.transport.write(output)
        self.transport.close()
