"""The OpenAPI document's finishing: security schemes, servers, tags, binary bodies,
the string address forms, examples; and the policy that keeps the docs offline."""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Any

from fastapi import FastAPI

from service.models.problem import Problem
from service.models.send import Draft

# The docs pages load only from this origin (Redoc's menu would fetch a CDN logo).
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
    "font-src 'self' data:; frame-ancestors 'self'"
)

_REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def offline_redoc_js() -> bytes:
    """fastapi-offline's Redoc bundle with its one remote asset (the menu's logo, fetched
    from a CDN on every load) pointed at the gateway's own favicon."""
    bundle = (files("fastapi_offline") / "static" / "redoc.standalone.js").read_bytes()
    return bundle.replace(_REDOC_CDN_LOGO, b"/static/favicon.png")


SECURITY_SCHEMES = {
    "mailboxBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "Mailbox user and password: IMAP LOGIN, SMTP/POP3 AUTH PLAIN or "
        "USER/PASS. Sent on every request; never stored or logged.",
    },
    "mailboxBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "OAuth 2 access token for SASL XOAUTH2; needs X-Mail-User.",
    },
    "mailUser": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Mail-User",
        "description": "The mailbox address that goes with a Bearer token.",
    },
}
MAILBOX_SECURITY: list[dict[str, list[str]]] = [
    {"mailboxBasic": []},
    {"mailboxBearer": [], "mailUser": []},
]
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")

SERVERS = [
    {
        "url": "/",
        "description": "This gateway (the origin serving this document). Generated "
        "clients take the gateway's base URL, e.g. http://127.0.0.1:8025 for `make run`.",
    }
]
TAGS = [
    {"name": "send", "description": "Send mail over SMTP (and keep a copy in Sent over IMAP)."},
    {"name": "folders", "description": "Folders and their special-use roles (IMAP; POP3 has "
     "one folder, INBOX)."},
    {"name": "messages", "description": "List, fetch, stream, change and delete messages over "
     "IMAP or POP3 (`protocol=`); fetches take `mode=keep|remove`."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics; no "
     "credentials needed."},
]  # fmt: skip

ADDRESS_INPUT = {
    "description": "A mailbox: an object, or a string `a@example.com` or "
    "`Name <a@example.com>` (RFC 5322 name-addr). Exactly one mailbox per entry: several "
    "addresses in one string, or anything after the address, are 422 naming the field "
    "and index (give several as separate entries).",
    "anyOf": [
        {"$ref": "#/components/schemas/Address"},
        {"type": "string", "examples": ["Bob Example <bob@example.test>"]},
    ],
}
_ADDRESS_REF = {"$ref": "#/components/schemas/Address"}
_BINARY = {"type": "string", "format": "binary"}

SEND_EXAMPLES = {
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
                "from": {"name": "Alice Example", "address": "alice@example.test"},
                "to": [{"name": "Bob", "address": "bob@example.test"}],
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
}
RESPONSE_EXAMPLES: dict[tuple[str, str], Any] = {
    ("/v1/send", "post"): {
        "message_id": "<1732987654.4711@example.test>",
        "accepted": ["bob@example.test"],
        "rejected": {},
        "saved_to": None,
    },
    ("/v1/messages/delete", "post"): {
        "results": [
            {"id": "iAQ2SU5CT1gBZ0ZfYQE", "status": 204, "code": None},
            {"id": "iAQ2SU5CT1gBZ0ZfYgE", "status": 404, "code": "not-found"},
        ]
    },
}


def document_openapi(app: FastAPI) -> None:
    """Finish the generated document once, on first use (``app.openapi()``)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            _finish(schema)
            _name_providers(schema, sorted(app.state.settings.providers))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(schema: dict[str, Any]) -> None:
    schema["servers"] = SERVERS
    schema["tags"] = TAGS
    schema["info"]["license"] = {"name": "GPL-3.0-only", "identifier": "GPL-3.0-only"}
    components = schema.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    schemas = components.setdefault("schemas", {})
    for model in (Problem, Draft):  # referenced by hand (problem+json, send's body)
        found = model.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="validation"
        )
        for name, sub in found.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = found
    _accept_address_strings(schemas["Draft"])
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                op["security"] = MAILBOX_SECURITY
            elif path in OPEN_PATHS:
                op["security"] = []
            for response in op.get("responses", {}).values():
                for media, body in response.get("content", {}).items():
                    if not body.get("schema") and "json" not in media:
                        body["schema"] = dict(_BINARY)  # raw bytes: keep them in clients
            example = RESPONSE_EXAMPLES.get((path, method))
            if example is not None:
                ok = op["responses"]["200"]["content"]["application/json"]
                ok["example"] = example
    send_body = schema["paths"]["/v1/send"]["post"]["requestBody"]["content"]
    for media, examples in SEND_EXAMPLES.items():
        send_body[media]["examples"] = examples


def _name_providers(schema: dict[str, Any], names: list[str]) -> None:
    """X-Mail-Provider takes the configured provider names only."""
    for ops in schema["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["name"].lower() == "x-mail-provider":
                    param["schema"] = {"type": "string", "enum": names}
                    param["description"] = (
                        "A provider named in the providers file (default: `default`); "
                        "any other name is 422."
                    )


def _accept_address_strings(node: Any) -> None:
    """Where the draft takes an Address, say that a string is accepted too (the model's
    validator parses ``Name <a@b>``)."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if value == _ADDRESS_REF:
                node[key] = ADDRESS_INPUT
            else:
                _accept_address_strings(value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if value == _ADDRESS_REF:
                node[i] = ADDRESS_INPUT
            else:
                _accept_address_strings(value)
