"""The OpenAPI document's finishing: security schemes, servers, tags, binary bodies,
the string address forms, examples; and the policy that keeps the docs offline."""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Any

from fastapi import FastAPI

from service.api.deps import CONTEXT_HEADERS
from service.api.openapi_examples import REQUEST_EXAMPLES, RESPONSE_EXAMPLES
from service.api.problem_examples import problem_example
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
                # read by the mail context itself, not as FastAPI parameters
                op["parameters"] = [*op.get("parameters", []), *CONTEXT_HEADERS]
            elif path in OPEN_PATHS:
                op["security"] = []
            for response in op.get("responses", {}).values():
                for media, body in response.get("content", {}).items():
                    if not body.get("schema") and "json" not in media:
                        body["schema"] = dict(_BINARY)  # raw bytes: keep them in clients
            _add_examples(path, method, op)


def _add_examples(path: str, method: str, op: dict[str, Any]) -> None:
    """Every request body and answer gets its examples (``openapi_examples``)."""
    for media, examples in REQUEST_EXAMPLES.get((path, method), {}).items():
        op["requestBody"]["content"][media]["examples"] = examples
    answers = RESPONSE_EXAMPLES.get((path, method), {})
    for status, response in op.get("responses", {}).items():
        for media, body in response.get("content", {}).items():
            if media == "application/problem+json":
                found = problem_example(path, method, int(status))
            else:
                found = answers.get(status, {}).get(media)
            if found is not None:
                body.pop("example", None)
                body["examples"] = found


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
