"""Metrics, request ids, logs and traces, read from the gateway's real outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_gateway import serve, stack_env
from mailboxes import Mailbox
from metrics_text import samples, value

from service.observability import tracing

COMMANDS = "mailgate_mail_command_duration_seconds_count"


async def test_request_id_is_echoed_or_generated(client: Any, mailbox: Mailbox) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "lb-4711.a:b"})
    assert r.headers["x-request-id"] == "lb-4711.a:b"
    r = await client.get("/healthz", headers={"X-Request-ID": "x" * 129})  # too long
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = await client.get("/healthz", headers={"X-Request-ID": "two words"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = await client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = await client.get("/v1/messages/i!!", headers={**mailbox.auth, "X-Request-ID": "req-1"})
    assert r.status_code == 400
    assert r.headers["x-request-id"] == "req-1" and r.json()["request_id"] == "req-1"
    r = await client.get("/v1/folders")  # 401: no credentials
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_an_unexpected_error_is_a_500_problem_with_the_request_id(
    settings: Any,
) -> None:
    from service.main import create_app

    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        r = await c.get("/boom", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "internal-error" and body["request_id"] == "req-500"
    assert r.headers["x-request-id"] == "req-500"
    assert "a bug" not in r.text and "RuntimeError" not in r.text


async def test_mail_commands_are_timed_per_protocol_without_user_names(
    client: Any, mailbox: Mailbox, other_mailbox: Mailbox, stack: dict[str, str]
) -> None:
    before = (await client.get("/metrics")).text
    r = await client.post(
        "/v1/send",
        json={"to": [other_mailbox.address], "subject": "Quarterly-7731", "text": "hi"},
        headers=mailbox.auth,
    )
    assert r.status_code == 200, r.text
    other_mailbox.wait_for(stack)
    for protocol in ("imap", "pop3"):
        r = await client.get("/v1/messages", params={"protocol": protocol},
                             headers=other_mailbox.auth)  # fmt: skip
        assert r.status_code == 200 and len(r.json()["items"]) == 1
    r = await client.get("/v1/folders", headers={"Authorization": "Basic eDp5"})  # x:y
    assert r.status_code == 401
    after = (await client.get("/metrics")).text

    def moved(**labels: str) -> float:
        return value(after, COMMANDS, **labels) - value(before, COMMANDS, **labels)

    assert moved(protocol="smtp", command="SEND", outcome="ok") == 1
    assert moved(protocol="smtp", command="AUTH", outcome="ok") >= 1
    assert moved(protocol="imap", command="FETCH", outcome="ok") >= 1
    assert moved(protocol="imap", command="SELECT", outcome="ok") >= 1
    assert moved(protocol="imap", command="AUTHENTICATE", outcome="refused") == 1
    assert moved(protocol="pop3", command="UIDL", outcome="ok") >= 1
    assert moved(protocol="pop3", command="CONNECT", outcome="ok") >= 1
    for who in (mailbox.address, other_mailbox.address, "Quarterly-7731"):
        assert who not in after  # no user, address or subject in any label
    assert value(after, "mailgate_http_request_duration_seconds_count",
                 route="/v1/messages", status="200") >= 2  # fmt: skip


async def test_static_files_are_one_route_and_unknown_paths_unmatched(client: Any) -> None:
    assert (await client.get("/static/swagger-ui.css")).status_code == 200
    assert (await client.get("/no/such/path/4711")).status_code == 404
    text = (await client.get("/metrics")).text
    count = "mailgate_http_request_duration_seconds_count"
    assert value(text, count, route="/static/{path}", status="200") >= 1
    assert value(text, count, route="unmatched", status="404") >= 1
    labels = " ".join(re.findall(r"\{([^}]*)\}", text))  # every label set, no sample values
    assert "4711" not in labels and "swagger-ui.css" not in labels


async def test_one_trace_covers_the_http_request_and_its_imap_commands(
    make_client: Any, mailbox: Mailbox, stack: dict[str, str]
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mailbox.append(stack, b"Subject: traced\r\n\r\nbody\r\n")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        async with make_client() as client:
            r = await client.get("/v1/messages", headers=mailbox.auth)
            assert r.status_code == 200 and r.json()["items"][0]["subject"] == "traced"
    finally:
        tracing.use_provider(None)
    spans = exporter.get_finished_spans()
    [server] = [s for s in spans if s.kind.name == "SERVER"]
    assert server.name == "GET /v1/messages"
    assert server.attributes is not None and server.attributes["http.route"] == "/v1/messages"
    imap = [s for s in spans if s.name.startswith("IMAP ")]
    assert {"IMAP CONNECT", "IMAP SELECT", "IMAP FETCH"} <= {s.name for s in imap}
    for span in imap:
        assert span.context.trace_id == server.context.trace_id
        assert span.parent is not None
        assert span.attributes is not None
        assert span.attributes["server.address"] == "localhost"
        assert span.attributes["mail.outcome"] == "ok"
    dumped = json.dumps([dict(s.attributes or {}) for s in spans])
    assert mailbox.address not in dumped and mailbox.password not in dumped


@pytest.mark.timeout(120)
def test_one_scrape_covers_two_workers_and_logs_are_json_lines(
    stack: dict[str, str], mailbox: Mailbox, other_mailbox: Mailbox, tmp_path: Path
) -> None:
    """The done-when of issue 11: 2 workers, integration traffic over all three
    protocols, and every scrape (whichever worker answers) shows all of it."""
    log = tmp_path / "serve.log"
    env = stack_env(stack, MAILGATE_LOG_FORMAT="json")
    rounds = 4
    with serve(env, log, "--workers", "2") as url:
        for n in range(rounds):
            # a new connection each time, so that both workers get requests
            with httpx.Client(base_url=url, timeout=30) as c:
                r = c.post("/v1/send", headers=mailbox.auth,
                           json={"to": [other_mailbox.address], "text": f"n{n}"})  # fmt: skip
                assert r.status_code == 200, r.text
        other_mailbox.wait_for(stack, rounds)
        for protocol in ("imap", "pop3") * rounds:
            with httpx.Client(base_url=url, timeout=30) as c:
                headers = {**other_mailbox.auth, "X-Request-ID": f"rid-{protocol}"}
                r = c.get("/v1/messages", params={"protocol": protocol}, headers=headers)
                assert r.status_code == 200 and len(r.json()["items"]) == rounds
        scrapes = []
        for _ in range(6):
            with httpx.Client(base_url=url, timeout=30) as c:
                scrapes.append(c.get("/metrics").text)
    for text in scrapes:
        assert value(text, "mailgate_http_request_duration_seconds_count",
                     route="/v1/messages", status="200") == 2 * rounds  # fmt: skip
        assert value(text, "mailgate_http_request_duration_seconds_count",
                     route="/v1/send", status="200") == rounds  # fmt: skip
        assert value(text, COMMANDS, protocol="smtp", command="SEND", outcome="ok") == rounds
        assert value(text, COMMANDS, protocol="imap", command="FETCH", outcome="ok") >= rounds
        assert value(text, COMMANDS, protocol="pop3", command="UIDL", outcome="ok") >= rounds
    lines = log.read_text().splitlines()
    assert re.fullmatch(rf"mailgate \S+ on {re.escape(url)} \(docs: /docs\), 2 workers", lines[0])
    records = [json.loads(line) for line in lines[1:] if line.startswith("{")]
    assert len(records) == len(lines) - 1  # nothing but JSON after the banner
    access = [r for r in records if r["logger"] == "mailgate.access"]
    pop3 = [r for r in access if r["request_id"] == "rid-pop3"]
    assert len(pop3) == rounds
    for record in pop3:
        assert record["route"] == "/v1/messages" and record["status"] == 200
        assert record["protocols"] == ["pop3"] and record["duration_ms"] > 0
        assert record["level"] == "INFO" and record["time"]
    workers = {r["process"] for r in access}
    print(f"access lines by {len(workers)} worker processes")
    assert other_mailbox.address not in log.read_text()


def _process_samples(text: str) -> dict[str, dict[int, float]]:
    """{family sample name: {pid: value}} of the process_* samples of a scrape."""
    out: dict[str, dict[int, float]] = {}
    for (name, labels), v in samples(text).items():
        if name.startswith("process_"):
            out.setdefault(name, {})[int(dict(labels)["pid"])] = v
    return out


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


@pytest.mark.timeout(120)
def test_one_scrape_has_each_worker_s_process_metrics(
    stack: dict[str, str], tmp_path: Path
) -> None:
    """With 2 workers, every scrape (whichever worker answers) has CPU seconds, resident
    memory and open fds of both, by pid; a worker killed outright is replaced in the
    scrape by the one uvicorn starts instead, and its live gauges stop counting."""
    shared = tmp_path / "multiproc"
    env = stack_env(stack, PROMETHEUS_MULTIPROC_DIR=str(shared))
    with serve(env, tmp_path / "serve.log", "--workers", "2") as url:
        port = url.rsplit(":", 1)[1]
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while True:  # each worker publishes its live gauges once started
            with httpx.Client(base_url=url, timeout=30) as c:
                found = _process_samples(c.get("/metrics").text)
            pids = set(found.get("process_cpu_seconds_total", {}))
            if len(pids) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(pids) == 2, found
        for _ in range(6):  # new connections: both workers answer some scrapes
            with httpx.Client(base_url=url, timeout=30) as c:
                found = _process_samples(c.get("/metrics").text)
            for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                         "process_open_fds", "process_virtual_memory_bytes",
                         "process_start_time_seconds", "process_max_fds"):  # fmt: skip
                assert set(found[name]) == pids, (name, found[name])
            seen |= pids
            for pid in pids:
                assert found["process_cpu_seconds_total"][pid] > 0
                assert found["process_open_fds"][pid] > 3
                status = Path(f"/proc/{pid}/status").read_text()
                vmrss = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
                assert 0.5 * vmrss < found["process_resident_memory_bytes"][pid] < 2 * vmrss
        [parent] = {_parent(pid) for pid in pids}  # siblings: the workers of ...
        assert f"--port\0{port}".encode() in Path(f"/proc/{parent}/cmdline").read_bytes()

        killed = min(pids)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            with httpx.Client(base_url=url, timeout=30) as c:
                found = _process_samples(c.get("/metrics").text)
            now = set(found.get("process_cpu_seconds_total", {}))
            if (len(now) == 2 and killed not in now) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(now) == 2 and killed not in now and max(pids) in now, now
        assert not list(shared.glob(f"gauge_live*_{killed}.db"))
        assert list(shared.glob(f"histogram_{killed}.db"))  # what it served still counts
