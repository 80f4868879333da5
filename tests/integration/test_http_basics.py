"""HTTP basics that need no mail traffic: docs offline, problem+json, keys, health."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from live_gateway import free_port, serve, stack_env
from mailboxes import Mailbox
from metrics_text import value as metric

from service.main import create_app

ROOT = Path(__file__).resolve().parents[2]


async def test_docs_work_without_internet(client: Any) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    assert "/static/swagger-ui-bundle.js" in r.text and "cdn" not in r.text.lower()
    for asset in ("/static/swagger-ui-bundle.js", "/static/swagger-ui.css",
                  "/static/redoc.standalone.js"):  # fmt: skip
        got = await client.get(asset)
        assert got.status_code == 200 and len(got.content) > 10_000
    r = await client.get("/redoc")
    assert r.status_code == 200 and '<script src="/redoc.js">' in r.text
    js = await client.get("/redoc.js")
    assert js.status_code == 200 and len(js.content) > 10_000 and b"cdn.redoc.ly" not in js.content
    assert "fonts.googleapis" not in r.text
    # the page's policy keeps it to this origin
    assert "img-src 'self' data:;" in r.headers["content-security-policy"]


async def test_committed_openapi_matches_the_app(settings: Any) -> None:
    from openapi_spec_validator import validate

    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(create_app(settings).openapi()))
    validate(committed)  # a valid OpenAPI 3.1 document ...
    refs = set(re.findall(r"#/components/schemas/([\w.-]+)", json.dumps(committed)))
    assert refs <= set(committed["components"]["schemas"])  # ... whose references resolve
    paths = committed["paths"]
    for path in ("/v1/send", "/v1/folders", "/v1/messages", "/v1/messages/{id}",
                 "/v1/messages/{id}/raw", "/v1/messages/{id}/attachments/{attachment_id}",
                 "/v1/messages/delete", "/healthz", "/readyz", "/metrics"):  # fmt: skip
        assert path in paths
    ids = {op["operationId"] for ops in paths.values() for op in ops.values()}
    assert ids >= {"sendMessage", "listFolders", "listMessages", "getMessage", "getRawMessage",
                   "getAttachment", "deleteMessage", "deleteMessages", "updateMessage"}  # fmt: skip
    assert all(len(i) < 30 and i.isalnum() for i in ids)  # short, stable, usable names
    for path in ("/healthz", "/readyz", "/metrics"):
        assert paths[path]["get"]["security"] == []
    assert committed["servers"] and {t["name"] for t in committed["tags"]} >= {"messages"}
    raw = paths["/v1/messages/{id}/raw"]["get"]["responses"]["200"]["content"]
    assert raw["message/rfc822"]["schema"] == {"type": "string", "format": "binary"}
    to = committed["components"]["schemas"]["Draft"]["properties"]["to"]["items"]
    assert to["anyOf"][1]["type"] == "string"  # "Name <a@b>" strings are accepted too


async def test_unknown_route_and_method_are_problems(client: Any) -> None:
    r = await client.get("/v1/nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "not-found" and r.json()["status"] == 404
    r = await client.put("/v1/send")
    assert r.status_code == 405 and r.json()["status"] == 405


async def test_query_validation_is_422_problem(client: Any, mailbox: Mailbox) -> None:
    r = await client.get("/v1/messages", params={"limit": 500}, headers=mailbox.auth)
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "validation-failed" and "limit" in body["detail"]
    r = await client.get("/v1/messages", params={"protocol": "smtp"}, headers=mailbox.auth)
    assert r.status_code == 422


async def test_api_keys_when_configured(make_client: Any, mailbox: Mailbox) -> None:
    key = "gateway-key-1"
    async with make_client(api_key_hashes=[hashlib.sha256(key.encode()).hexdigest()]) as c:
        r = await c.get("/v1/folders", headers=mailbox.auth)
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        r = await c.get("/v1/folders", headers={**mailbox.auth, "X-API-Key": "wrong"})
        assert r.status_code == 403
        r = await c.get("/v1/folders", headers={**mailbox.auth, "X-API-Key": key})
        assert r.status_code == 200, r.text
        assert (await c.get("/healthz")).status_code == 200


async def test_every_v1_route_checks_the_api_key_first(make_client: Any) -> None:
    """The key is checked by the one mail-context dependency of each /v1 route (not a
    router-wide one): every operation answers 403 without it, before credentials (401)."""
    key_hash = hashlib.sha256(b"k").hexdigest()
    async with make_client(api_key_hashes=[key_hash]) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
        operations = [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1/")
                      for m in ops]  # fmt: skip
        assert len(operations) >= 9
        for method, template in operations:  # documented, although read by the context
            names = {p["name"] for p in paths[template][method.lower()]["parameters"]}
            assert {"x-api-key", "x-mail-provider"} <= names, (method, template)
        for method, template in operations:
            path = template.replace("{id}", "x").replace("{attachment_id}", "1")
            r = await c.request(method, path)
            assert r.status_code == 403, (method, path, r.text)


async def test_malformed_credentials_are_401(client: Any) -> None:
    import base64

    crlf = base64.b64encode(b"u@example.test:sec\r\nret").decode()
    long = base64.b64encode(b"u@example.test:" + b"p" * 5000).decode()
    for value in ("Basic !!!", "Basic " + "dXNlcm9ubHk=", "Bearer tok", "Digest x",
                  "Basic " + crlf, "Basic " + long):  # fmt: skip
        r = await client.get(
            "/v1/folders", params={"protocol": "pop3"}, headers={"Authorization": value}
        )
        assert r.status_code == 401, value
        assert r.json()["code"] == "auth-required"
        assert r.headers["www-authenticate"].startswith("Basic")


async def test_health_and_readiness(client: Any, make_client: Any) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with make_client(smtp_url=f"smtp://127.0.0.1:{port}") as down:
        r = await down.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["default.smtp"] == "unreachable"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "upstream-unavailable" and int(r.headers["retry-after"]) > 0
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    healthz = metric(r.text, "mailgate_http_request_duration_seconds_count", route="/healthz")
    assert healthz >= 1
    assert metric(r.text, "mailgate_sessions", protocol="imap", state="in_use") == 0


async def test_metrics_show_the_pooled_sessions(client: Any, mailbox: Mailbox) -> None:
    count = "mailgate_http_request_duration_seconds_count"
    labels = {"method": "GET", "route": "/v1/folders", "status": "200"}
    before = metric((await client.get("/metrics")).text, count, **labels)
    r = await client.get("/v1/folders", headers=mailbox.auth)
    assert r.status_code == 200
    r = await client.get("/metrics")
    assert metric(r.text, "mailgate_sessions", protocol="imap", state="idle") == 1
    assert metric(r.text, "mailgate_sessions", protocol="imap", state="in_use") == 0
    assert metric(r.text, count, **labels) == before + 1


async def test_start_up_warm_up_reaches_no_mail_server_and_counts_nothing(
    make_client: Any, mailbox: Mailbox
) -> None:
    """mailgate serve warms up in its lifespan (the tests' apps skip it to start faster):
    one request per /v1 operation stops at the missing credentials, no session is opened,
    no metric counts them, and the start-up objects end up frozen out of the collector."""
    import gc

    from metrics_text import value

    count = "mailgate_http_request_duration_seconds_count"
    gc.unfreeze()
    try:
        async with make_client() as c:  # the metrics are per process: before the start
            before = value((await c.get("/metrics")).text, count, status="401")
        async with make_client(warm_up=True) as c:
            assert gc.get_freeze_count() > 0
            text = (await c.get("/metrics")).text
            assert value(text, count, status="401") == before
            assert value(text, "mailgate_sessions", protocol="imap") == 0
            r = await c.get("/v1/messages", headers=mailbox.auth)
            assert r.status_code == 200 and r.json()["items"] == []
    finally:
        gc.unfreeze()


async def test_overlong_id_is_invalid_id(client: Any, mailbox: Mailbox) -> None:
    r = await client.get("/v1/messages/i" + "A" * 5000, headers=mailbox.auth)
    assert r.status_code == 400 and r.json()["code"] == "invalid-id"


async def test_odd_inputs_are_problems_not_500s(
    client: Any, mailbox: Mailbox, stack: dict[str, str]
) -> None:
    mailbox.append(stack, b"Subject: x\r\n\r\nbody\r\n")
    [item] = (await client.get("/v1/messages", headers=mailbox.auth)).json()["items"]
    r = await client.get(
        f"/v1/messages/{item['id']}/raw",
        headers={**mailbox.auth, "Range": "bytes=0-" + "9" * 5000},
    )
    assert r.status_code == 400 and r.json()["code"] == "bad-request"
    r = await client.post("/v1/messages/delete", content='{"ids": ["\\ud800"]}',
                          headers={**mailbox.auth, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 422 and r.json()["code"] == "validation-failed"


async def test_named_provider_from_the_providers_file(
    make_client: Any, stack: dict[str, str], mailbox: Mailbox, tmp_path: Path
) -> None:
    providers = tmp_path / "providers.json"
    providers.write_text(json.dumps({"plain-local": {
        "imap": f"imap+plain://127.0.0.1:{stack['MAILSTACK_IMAP_PORT']}",
        "pop3": f"pop3+plain://127.0.0.1:{stack['MAILSTACK_POP3_PORT']}",
    }}))  # fmt: skip
    mailbox.append(stack, b"Subject: via plain-local\r\n\r\nbody\r\n")
    named = {**mailbox.auth, "X-Mail-Provider": "plain-local"}
    async with make_client(providers_file=str(providers)) as client:
        for proto in ("imap", "pop3"):
            r = await client.get("/v1/messages", params={"protocol": proto}, headers=named)
            assert r.status_code == 200, r.text
            assert [i["subject"] for i in r.json()["items"]] == ["via plain-local"]
        r = await client.get("/v1/messages", headers={**mailbox.auth, "X-Mail-Provider": "nope"})
        assert r.status_code == 422 and r.json()["code"] == "validation-failed"
        r = await client.post(
            "/v1/send", json={"to": ["x@example.test"], "text": "x"}, headers=named
        )
        assert r.status_code == 422 and r.json()["code"] == "not-supported"  # it has no SMTP


async def test_cors_when_origins_are_configured(make_client: Any) -> None:
    async with make_client(cors_origins=["https://app.example"]) as client:
        r = await client.options("/v1/messages", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,x-mail-provider",
        })  # fmt: skip
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await client.options("/v1/messages", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET",
        })  # fmt: skip
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("http", ["served", "h11"])
async def test_unreadable_http_is_a_problem_too(settings: Any, http: str) -> None:
    """uvicorn's own 400 (the request line or headers cannot be parsed) is problem+json,
    with the protocol `mailgate serve` runs (httptools) and with h11."""
    import asyncio
    import json

    import uvicorn

    from service.api.httpserver import ProblemH11Protocol
    from service.main import create_app
    from service.serving import uvicorn_options

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = uvicorn_options()
    if http == "h11":
        options["http"] = ProblemH11Protocol
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="critical", **options)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        answers = []
        for garbage in (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"\x16\x03\x01 hello\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
    finally:
        server.should_exit = True
        await task
    for raw in answers:
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"content-type: application/problem+json" in head.lower()
        problem = json.loads(body)
        assert problem["status"] == 400 and problem["code"] == "bad-request"
        assert f"x-request-id: {problem['request_id']}".encode() in head.lower()


def test_the_image_healthcheck_follows_mailgate_port(stack: dict[str, str], tmp_path: Path) -> None:
    """The Dockerfile's HEALTHCHECK command, run as the image runs it, against a gateway on
    another port than 8025: healthy with that MAILGATE_PORT, unhealthy without a server."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    [cmd] = re.findall(r"^HEALTHCHECK .*? CMD (\[.*\])$", dockerfile, re.M)
    argv = json.loads(cmd)
    assert argv[0] == "python"
    argv[0] = sys.executable

    def probe(port: str) -> int:
        env = {**os.environ, "MAILGATE_PORT": port}
        return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode

    with serve(stack_env(stack), tmp_path / "serve.log") as url:
        port = url.rsplit(":", 1)[1]
        assert port != "8025"
        assert probe(port) == 0
        assert probe(str(free_port())) != 0
