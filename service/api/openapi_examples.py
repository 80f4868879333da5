"""Examples of every request and answer in the OpenAPI document, taken from real answers
of the gateway on the test mail stack (ids, states and cursors in their real formats).

They are added after FastAPI built the document (FastAPI would drop their nulls), and
a test validates each against its own schema.
"""

from __future__ import annotations

from typing import Any

Examples = dict[str, dict[str, Any]]  # {name: {"summary": ..., "value": ...}}

# One mailbox's INBOX (UIDVALIDITY 1796078113) throughout: ids are ImapRef/Pop3Ref.encode()
ID = "iMTc5NjA3ODExMzoxMzpJTkJPWA"  # INBOX, UID 13
ID_12 = "iMTc5NjA3ODExMzoxMjpJTkJPWA"
ID_4 = "iMTc5NjA3ODExMzo0OklOQk9Y"
ID_2 = "iMTc5NjA3ODExMzoyOklOQk9Y"
ID_STALE = "iMTc5NjA3ODExMjoxOklOQk9Y"  # an older UIDVALIDITY
POP3_ID = "pMDAwMDAwMDE2YjBkZmEyMQ"  # UIDL 000000016b0dfa21
STATE_OLD = "i1eyJiIjpbMTMsMTIsMzQsbnVsbF0sImYiOiJJTkJPWCIsInYiOjE3OTYwNzgxMTN9"
STATE = "i1eyJiIjpbMTUsMTQsNDEsbnVsbF0sImYiOiJJTkJPWCIsInYiOjE3OTYwNzgxMTN9"
STATE_AFTER = "i1eyJiIjpbMTQsMTIsMzcsbnVsbF0sImYiOiJJTkJPWCIsInYiOjE3OTYwNzgxMTN9"  # /changes
SENT_STATE = "i1eyJiIjpbNCwzLDksbnVsbF0sImYiOiJTZW50IiwidiI6MTc5NjA3ODExNH0"
PROJECTS_STATE = "i1eyJiIjpbOCw3LDEyLG51bGxdLCJmIjoiUHJvamVjdHMuMjAyNiIsInYiOjE3OTYwNzgxMTl9"
POP3_STATE = "p1eyJkIjoibWZvM2tVMVBKWkVUSzFsX3pBYkRadyIsIm4iOjF9"
CURSOR = "eyJmIjoiSU5CT1giLCJxIjoiNTM4OGUxYjcxNWM0IiwicyI6MiwidSI6MywidiI6MTc5NjA3ODExM30"
REQUEST_ID = "4f0c2a8e9b7d4e61a2c3d4e5f6a7b8c9"
MESSAGE_ID = "<179607811328.10779.10783501720274460225@example.test>"

ALICE = {"name": "Alice Example", "address": "alice@example.test"}
BOB = {"name": "Bob", "address": "bob@example.test"}


def one(summary: str, value: Any) -> Examples:
    """An ``examples`` map with one entry."""
    return {"example": {"summary": summary, "value": value}}


SUMMARY = {
    "id": ID,
    "folder": "INBOX",
    "uid": 13,
    "message_id": MESSAGE_ID,
    "subject": "Report",
    "from": [ALICE],
    "to": [BOB],
    "cc": [],
    "date": "2026-11-30T09:00:00+00:00",
    "size": 1686,
    "flags": ["\\Seen"],
    "seen": True,
    "has_attachments": True,
}
LUNCH = {
    **SUMMARY,
    "id": ID_12,
    "uid": 12,
    "message_id": "<a1@example.test>",
    "subject": "Lunch?",
    "from": [{"name": None, "address": "carol@example.test"}],
    "date": "2026-11-30T08:12:40+00:00",
    "size": 960,
    "flags": [],
    "seen": False,
    "has_attachments": False,
}
POP3_SUMMARY = {
    **{k: v for k, v in SUMMARY.items() if k != "uid"},
    "id": POP3_ID,
    "uidl": "000000016b0dfa21",
    "flags": [],
    "seen": None,
}

PARSED = {
    "id": ID,
    "folder": "INBOX",
    "message_id": MESSAGE_ID,
    "in_reply_to": None,
    "references": [],
    "subject": "Report",
    "from": [ALICE],
    "sender": None,
    "reply_to": [],
    "to": [BOB],
    "cc": [],
    "bcc": [],
    "date": "2026-11-30T09:00:00+00:00",
    "headers": [
        {"name": "From", "value": "Alice Example <alice@example.test>"},
        {"name": "To", "value": "Bob <bob@example.test>"},
        {"name": "Subject", "value": "Report"},
        {"name": "Date", "value": "Mon, 30 Nov 2026 09:00:00 +0000"},
        {"name": "Message-ID", "value": MESSAGE_ID},
        {"name": "MIME-Version", "value": "1.0"},
        {"name": "Content-Type", "value": 'multipart/mixed; boundary="=-b1"'},
    ],
    "text": "The report is attached.\n",
    "html": "<p>The report is <b>attached</b>.</p>\n",
    "attachments": [
        {
            "id": "2",
            "filename": "report.txt",
            "content_type": "text/plain",
            "size": 13,
            "disposition": "attachment",
            "content_id": None,
        }
    ],
    "flags": ["\\Seen"],
    "size": 1686,
    "removed": False,
    "defects": [],
}

RAW = (
    "From: Alice Example <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: Lunch?\r\n"
    "Date: Mon, 30 Nov 2026 08:12:40 +0000\r\n"
    "Message-ID: <a1@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: text/plain; charset="utf-8"\r\n'
    "\r\n"
    "Noon at the usual place?\r\n"
)

EVENTS = (
    ": mailgate events\n"
    "retry: 2000\n"
    "\n"
    f"id: {STATE_OLD}\n"
    "\n"
    "id: i1eyJiIjpbMTQsMTMsMzUsbnVsbF0sImYiOiJJTkJPWCIsInYiOjE3OTYwNzgxMTN9\n"
    "event: created\n"
    'data: {"id":"iMTc5NjA3ODExMzoxMzpJTkJPWA","folder":"INBOX","uid":13,'
    '"message_id":"<a2@example.test>","subject":"Report","from":[{"name":"Alice Example",'
    '"address":"alice@example.test"}],"to":[{"name":"Bob","address":"bob@example.test"}],'
    '"cc":[],"date":"2026-11-30T09:00:00+00:00","size":1686,"flags":[],"seen":false,'
    '"has_attachments":true}\n'
    "\n"
    "id: i1eyJiIjpbMTQsMTMsMzYsbnVsbF0sImYiOiJJTkJPWCIsInYiOjE3OTYwNzgxMTN9\n"
    "event: updated\n"
    'data: {"id":"iMTc5NjA3ODExMzo0OklOQk9Y","flags":["\\\\Flagged"],"seen":false,'
    '"flagged":true}\n'
    "\n"
    f"id: {STATE_AFTER}\n"
    "event: destroyed\n"
    'data: "iMTc5NjA3ODExMzoyOklOQk9Y"\n'
    "\n"
    ": ping\n"
    "\n"
)

METRICS = (
    "# HELP mailgate_http_request_duration_seconds HTTP requests by method, route template "
    "and status\n"
    "# TYPE mailgate_http_request_duration_seconds histogram\n"
    'mailgate_http_request_duration_seconds_bucket{le="0.01",method="GET",'
    'route="/v1/messages",status="200"} 41.0\n'
    'mailgate_http_request_duration_seconds_count{method="GET",route="/v1/messages",'
    'status="200"} 42.0\n'
    "# TYPE mailgate_mail_command_duration_seconds histogram\n"
    'mailgate_mail_command_duration_seconds_count{command="FETCH",outcome="ok",'
    'protocol="imap"} 42.0\n'
    "# TYPE mailgate_sessions gauge\n"
    'mailgate_sessions{protocol="imap",state="idle"} 3.0\n'
)

SEND_REQUEST: dict[str, Examples] = {
    "application/json": {
        "text": {
            "summary": "Plain text to two recipients, addresses as strings",
            "value": {
                "to": ["bob@example.test", "Carol <carol@example.test>"],
                "subject": "Hello",
                "text": "Hi Bob!",
            },
        },
        "html-attachment": {
            "summary": "HTML with an attachment and a reply address",
            "value": {
                "from": ALICE,
                "to": [BOB],
                "reply_to": ["help@example.test"],
                "subject": "Report",
                "text": "The report is attached.",
                "html": "<p>The report is <b>attached</b>.</p>",
                "attachments": [
                    {
                        "filename": "report.txt",
                        "content_type": "text/plain",
                        "content_base64": "SGVsbG8sIHdvcmxkIQ==",
                    }
                ],
            },
        },
    },
    "message/rfc822": {
        "raw": {
            "summary": "A raw RFC 5322 message (Bcc goes to the envelope only)",
            "value": "From: alice@example.test\r\nTo: bob@example.test\r\n"
            "Bcc: carol@example.test\r\nSubject: Raw\r\n\r\nHello.\r\n",
        }
    },
    "multipart/form-data": {
        "upload": {
            "summary": "The draft as JSON in `message`, a file in `attachments`",
            "value": {
                "message": '{"to": ["bob@example.test"], "subject": "Report", '
                '"text": "The report is attached."}',
                "attachments": ["(the bytes of report.pdf)"],
            },
        }
    },
}

# {(path, method): {media type: examples}}
REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Examples]] = {
    ("/v1/send", "post"): SEND_REQUEST,
    ("/v1/messages/delete", "post"): {
        "application/json": one("Three ids", {"ids": [ID, ID_12, ID_STALE]}),
    },
    ("/v1/messages/{id}", "patch"): {
        "application/json": {
            "read": {"summary": "Mark as read and flag", "value": {"seen": True, "flagged": True}},
            "move": {"summary": "Move to Archive (IMAP)", "value": {"folder": "Archive"}},
        }
    },
}

# {(path, method): {status: {media type: examples}}}
RESPONSE_EXAMPLES: dict[tuple[str, str], dict[str, dict[str, Examples]]] = {
    ("/v1/send", "post"): {
        "200": {
            "application/json": one(
                "Sent to one recipient",
                {
                    "message_id": MESSAGE_ID,
                    "accepted": ["bob@example.test"],
                    "rejected": {},
                    "saved_to": None,
                },
            )
        }
    },
    ("/v1/folders", "get"): {
        "200": {
            "application/json": {
                "imap": {
                    "summary": "IMAP, counts=true",
                    "value": {
                        "items": [
                            {
                                "name": "INBOX",
                                "delimiter": ".",
                                "role": "inbox",
                                "messages": 14,
                                "unseen": 3,
                                "state": STATE,
                            },
                            {
                                "name": "Sent",
                                "delimiter": ".",
                                "role": "sent",
                                "messages": 3,
                                "unseen": 0,
                                "state": SENT_STATE,
                            },
                            {
                                "name": "Projects.2026",
                                "delimiter": ".",
                                "role": None,
                                "messages": 7,
                                "unseen": 0,
                                "state": PROJECTS_STATE,
                            },
                        ]
                    },
                },
                "pop3": {
                    "summary": "POP3: one folder",
                    "value": {
                        "items": [
                            {
                                "name": "INBOX",
                                "delimiter": None,
                                "role": "inbox",
                                "state": POP3_STATE,
                            }
                        ]
                    },
                },
            }
        }
    },
    ("/v1/messages", "get"): {
        "200": {
            "application/json": {
                "imap": {
                    "summary": "IMAP, limit=2: newest first, a cursor for the next page",
                    "value": {"items": [SUMMARY, LUNCH], "next_cursor": CURSOR, "state": STATE},
                },
                "pop3": {
                    "summary": "POP3 (protocol=pop3), count=true",
                    "value": {
                        "items": [POP3_SUMMARY],
                        "next_cursor": None,
                        "state": POP3_STATE,
                        "total": 1,
                    },
                },
            }
        }
    },
    ("/v1/messages/{id}", "get"): {
        "200": {"application/json": one("A message with one attachment", PARSED)}
    },
    ("/v1/messages/{id}/raw", "get"): {
        "200": {"message/rfc822": one("A short message, byte for byte", RAW)},
        "206": {"message/rfc822": one("Range: bytes=0-23", RAW[:24])},
    },
    ("/v1/messages/{id}/attachments/{attachment_id}", "get"): {
        "200": {"application/octet-stream": one("report.txt, decoded", "Hello, world!")}
    },
    ("/v1/messages/delete", "post"): {
        "200": {
            "application/json": one(
                "Each id's own status",
                {
                    "results": [
                        {"id": ID, "status": 204, "code": None},
                        {"id": ID_12, "status": 404, "code": "not-found"},
                        {"id": ID_STALE, "status": 410, "code": "stale-id"},
                    ]
                },
            )
        }
    },
    ("/v1/changes", "get"): {
        "200": {
            "application/json": one(
                "One message arrived, one was flagged, one deleted",
                {
                    "old_state": STATE_OLD,
                    "new_state": STATE_AFTER,
                    "has_more": False,
                    "created": [{**SUMMARY, "flags": [], "seen": False}],
                    "updated": [
                        {
                            "id": ID_4,
                            "flags": ["\\Seen", "\\Flagged"],
                            "seen": True,
                            "flagged": True,
                        }
                    ],
                    "destroyed": [ID_2],
                },
            )
        }
    },
    ("/v1/events", "get"): {
        "200": {"text/event-stream": one("Opened, then three changes and a ping", EVENTS)}
    },
    ("/healthz", "get"): {"200": {"application/json": one("Alive", {"status": "ok"})}},
    ("/readyz", "get"): {
        "200": {
            "application/json": one(
                "Every configured server reachable",
                {
                    "status": "ready",
                    "checks": {"default.smtp": "ok", "default.imap": "ok", "default.pop3": "ok"},
                },
            )
        }
    },
    ("/metrics", "get"): {"200": {"text/plain": one("An excerpt", METRICS)}},
}
