"""Every example of the OpenAPI document is valid against its own schema, and every
request body and answer of every operation has one."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.config import Settings
from service.main import create_app

BASE = "urn:mailgate:openapi"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(Settings(warm_up=False)).openapi()


def _pointer(path: tuple[str, ...]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)


def examples_of(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str, Any]]:
    """(where, pointer of its schema, value) of every example in the document: those of
    media types, parameters and headers (``example``, ``examples: {name: {value}}``) and
    those of schemas (``examples: [...]``)."""
    if isinstance(node, dict):
        if "schema" in node and ("example" in node or "examples" in node):
            schema = _pointer((*path, "schema"))
            if "example" in node:
                yield _pointer(path), schema, node["example"]
            for name, entry in node.get("examples", {}).items():
                if "value" in entry:
                    yield _pointer((*path, "examples", name)), schema, entry["value"]
        elif isinstance(node.get("examples"), list) and (
            "type" in node or "anyOf" in node or "$ref" in node or "properties" in node
        ):
            for i, value in enumerate(node["examples"]):
                yield _pointer((*path, "examples", str(i))), _pointer(path), value
        for key, value in node.items():
            yield from examples_of(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from examples_of(value, (*path, str(i)))


def invalid_examples(document: dict[str, Any]) -> list[str]:
    """One line per example that breaks its schema (references resolved in the document)."""
    registry: Registry[Any] = Registry().with_resource(
        BASE, Resource(contents=document, specification=DRAFT202012)
    )
    found = []
    for where, schema, value in examples_of(document):
        validator = OAS31Validator(
            {"$ref": f"{BASE}#{schema}"},
            registry=registry,
            format_checker=OAS31Validator.FORMAT_CHECKER,
        )
        for error in validator.iter_errors(value):
            found.append(f"{where}: {error.message} (at {list(error.absolute_path)})")
    return found


def test_every_example_is_valid_against_its_schema(document: dict[str, Any]) -> None:
    assert len(list(examples_of(document))) >= 60
    assert invalid_examples(document) == []


def test_a_broken_example_is_found(document: dict[str, Any]) -> None:
    """The check above can fail: an example that breaks its schema is reported."""
    broken = copy.deepcopy(document)
    ok = broken["paths"]["/v1/messages"]["get"]["responses"]["200"]["content"]
    ok["application/json"]["examples"]["imap"]["value"]["items"][0]["from"] = [
        {"address": "alice@example.test"}  # AddressOut requires name (null allowed)
    ]
    problem = broken["paths"]["/v1/folders"]["get"]["responses"]["401"]["content"]
    del problem["application/problem+json"]["examples"]["example"]["value"]["code"]
    found = invalid_examples(broken)
    assert len(found) == 2, found
    assert "'name' is a required property" in found[0] + found[1]
    assert "'code' is a required property" in found[0] + found[1]


def test_every_request_and_answer_has_an_example(document: dict[str, Any]) -> None:
    missing = []
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            bodies = [("request", media, body) for media, body in
                      op.get("requestBody", {}).get("content", {}).items()]  # fmt: skip
            for status, answer in op["responses"].items():
                content = answer.get("content", {})
                if not content:
                    assert status == "204", (path, method, status)  # only "no content"
                bodies += [(status, media, body) for media, body in content.items()]
            for what, media, body in bodies:
                if not body.get("examples") and "example" not in body:
                    missing.append(f"{method.upper()} {path} {what} {media}")
    assert missing == []


def test_problem_examples_match_their_status_and_operation(document: dict[str, Any]) -> None:
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                body = answer.get("content", {}).get("application/problem+json")
                if body is None:
                    continue
                for entry in body["examples"].values():
                    value = entry["value"]
                    assert value["status"] == int(status), (path, method, status)
                    assert value["type"].endswith("/" + value["code"])
                    assert "{" not in value["instance"]  # a path, not its template
                    assert value["instance"].startswith(path.split("{")[0])


def test_example_ids_states_and_cursors_are_the_gateway_s_own() -> None:
    """The examples' opaque values are ones the gateway reads (not made-up strings)."""
    from service.api import openapi_examples as ex
    from service.ids import ImapRef, Pop3Ref, decode_cursor, decode_id
    from service.sync.state import ImapState, decode_state

    refs = [decode_id(i) for i in (ex.ID, ex.ID_12, ex.ID_4, ex.ID_2, ex.ID_STALE)]
    uids = [(r.folder, r.uidvalidity, r.uid) for r in refs if isinstance(r, ImapRef)]
    validity = 1796078113
    assert uids == [("INBOX", validity, 13), ("INBOX", validity, 12), ("INBOX", validity, 4),
                    ("INBOX", validity, 2), ("INBOX", validity - 1, 1)]  # fmt: skip
    assert decode_id(ex.POP3_ID) == Pop3Ref("000000016b0dfa21")
    for token in (ex.STATE_OLD, ex.STATE, ex.STATE_AFTER):
        state = decode_state(token, protocol="imap", folder="INBOX")
        assert isinstance(state, ImapState) and state.uidvalidity == validity
    decode_state(ex.SENT_STATE, protocol="imap", folder="Sent")
    decode_state(ex.PROJECTS_STATE, protocol="imap", folder="Projects.2026")
    decode_state(ex.POP3_STATE, protocol="pop3", folder="INBOX")
    assert decode_cursor(ex.CURSOR)["f"] == "INBOX"
