"""`shinchoku trace` on synthetic traces: span files written by four real tracer providers (one per process,
context carried in W3C headers as on NATS), the event looked up from a stand-in ingest HTTP API, and the
same trace served by a stand-in Jaeger query API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from typer.testing import CliRunner

from shinchoku.commands import trace as trace_cmd
from shinchoku.stack import Stack
from shinchoku_runtime.telemetry import JsonlSpanExporter, read_spans


@dataclass
class Journey:
    event_id: str
    trace_id: str
    outcome: str
    reason: str | None = None


def _providers(spans_dir: Path) -> dict[str, TracerProvider]:
    providers = {}
    for service in ("shinchoku-client", "ingest", "catalog", "reporting"):
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(spans_dir / f"{service}.jsonl")))
        providers[service] = provider
    return providers


def _journey(providers: dict[str, TracerProvider], event_id: str, *, admitted: bool) -> Journey:
    """One report through client → ingest (→ catalog) → reporting, as the real services trace it."""
    client, ingest, catalog, reporting = (providers[s].get_tracer("t") for s in providers)
    attrs = {"shinchoku.event_id": event_id, "shinchoku.measure_id": "1-25", "shinchoku.agency": "mof"}
    headers: dict[str, str] = {}
    with client.start_as_current_span("status.mof.1-25 publish", kind=SpanKind.PRODUCER, attributes=attrs) as root:
        inject(headers)
        trace_id = format(root.get_span_context().trace_id, "032x")
    accepted: dict[str, str] = {}
    with ingest.start_as_current_span(
        "status.mof.1-25 process", context=extract(headers), kind=SpanKind.CONSUMER, attributes=attrs
    ) as span:
        with ingest.start_as_current_span("catalog lookup"):
            request: dict[str, str] = {}
            inject(request)
            with catalog.start_as_current_span("catalog.measure.get process", context=extract(request)):
                pass
        if admitted:
            with ingest.start_as_current_span("db write"):
                pass
            with ingest.start_as_current_span("accepted.mof.1-25 publish", kind=SpanKind.PRODUCER):
                inject(accepted)
        else:
            span.set_attribute("shinchoku.reason", "not_lead")
            with ingest.start_as_current_span("rejected.mof publish", kind=SpanKind.PRODUCER) as publish:
                publish.set_status(Status(StatusCode.ERROR, "PubAck timed out"))
                publish.record_exception(TimeoutError("no PubAck from REJECTED within 2s"))
    if admitted:
        with (
            reporting.start_as_current_span("accepted.mof.1-25 process", context=extract(accepted)),
            reporting.start_as_current_span("db write"),
        ):
            pass
    return Journey(event_id, trace_id, "admitted" if admitted else "rejected", None if admitted else "not_lead")


class _JsonServer:
    """A stand-in HTTP API answering fixed JSON bodies by path (404 otherwise)."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.routes.get(self.path)
                data = json.dumps(body if body is not None else {"detail": "not found"}).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, Journey, Journey, _JsonServer]]:
    providers = _providers(tmp_path / "spans")
    admitted = _journey(providers, "0b6f1c9e-3c1a-4c59-9d55-8f0f5a6c2a01", admitted=True)
    rejected = _journey(providers, "5d0c3f4b-2b7e-4a39-9a43-1f8d8e1c7b02", admitted=False)
    # As if ingest's file had been rotated since: the trace must be read from `ingest.jsonl.1` too.
    (tmp_path / "spans" / "ingest.jsonl").replace(tmp_path / "spans" / "ingest.jsonl.1")
    routes: dict[str, Any] = {
        f"/events/{j.event_id}": {
            "event_id": j.event_id,
            "outcome": j.outcome,
            "reason": j.reason,
            "trace_id": j.trace_id,
            "attempts": [],
        }
        for j in (admitted, rejected)
    }
    ingest = _JsonServer(routes)
    Stack(data_dir=tmp_path, http={"ingest": ingest.url, "catalog": "-", "reporting": "-"}).save()
    try:
        yield tmp_path, admitted, rejected, ingest
    finally:
        ingest.close()


def _run(*args: str) -> Any:
    app = typer.Typer()
    trace_cmd.register(app)

    @app.callback()
    def _root() -> None:
        """Group, so that the verb is named as in the real CLI."""

    return CliRunner().invoke(app, ["trace", *args], env={"SHINCHOKU_JAEGER_URL": "", "COLUMNS": None})


def test_trace_prints_the_tree_with_every_service(stack: tuple[Path, Journey, Journey, _JsonServer]) -> None:
    data_dir, admitted, _, _ = stack
    assert any(p.name == "ingest.jsonl.1" for p in (data_dir / "spans").iterdir()), "ingest spans were rotated"
    result = _run(admitted.event_id, "--data-dir", str(data_dir), "--wait", "0")
    assert result.exit_code == 0, result.output
    out = result.output
    for service in ("shinchoku-client", "ingest", "catalog", "reporting"):
        assert service in out
    assert f"trace {admitted.trace_id}" in out
    assert "admitted" in out
    lines = out.splitlines()

    def line_of(text: str) -> tuple[int, str]:
        index = next(i for i, line in enumerate(lines) if text in line)
        return index, lines[index]

    def depth(line: str) -> int:
        return len(line) - len(line.lstrip(" │├└─"))

    order = [
        "shinchoku-client  status.mof.1-25 publish",
        "ingest  status.mof.1-25 process",
        "ingest  catalog lookup",
        "catalog  catalog.measure.get process",
        "ingest  accepted.mof.1-25 publish",
        "reporting  accepted.mof.1-25 process",
    ]
    found = [line_of(text) for text in order]
    assert [i for i, _ in found] == sorted(i for i, _ in found), out
    depths = [depth(line) for _, line in found]
    assert depths[0] < depths[1] < depths[2] < depths[3], out  # client → ingest → lookup → catalog
    assert depths[4] == depths[2], out  # the publish is the lookup's sibling
    assert depths[5] > depths[4], out  # reporting hangs under ingest's publish
    assert " ms" in found[1][1]
    assert "event_id=0b6f1c9e-3c1a-4c59-9d55-8f0f5a6c2a01" in found[0][1]
    assert "8 spans from shinchoku-client, ingest, catalog, reporting" in out
    assert "0 with errors" in out


def test_trace_shows_errors_and_the_rejection(stack: tuple[Path, Journey, Journey, _JsonServer]) -> None:
    data_dir, _, rejected, _ = stack
    result = _run(rejected.event_id, "--data-dir", str(data_dir), "--wait", "0")
    assert result.exit_code == 0, result.output
    assert "rejected (not_lead)" in result.output
    assert "reason=not_lead" in result.output
    error_line = next(line for line in result.output.splitlines() if "rejected.mof publish" in line)
    assert "✗ PubAck timed out" in error_line
    assert "TimeoutError: no PubAck from REJECTED within 2s" in error_line
    assert "reporting" not in result.output
    assert "1 with errors" in result.output


def test_trace_reads_jaeger_when_configured(stack: tuple[Path, Journey, Journey, _JsonServer]) -> None:
    data_dir, admitted, _, _ = stack
    spans = read_spans(data_dir / "spans", admitted.trace_id)
    services = sorted({s["service"] for s in spans})
    processes = {f"p{i}": {"serviceName": name, "tags": []} for i, name in enumerate(services)}
    pid = {name: key for key, value in processes.items() for name in [value["serviceName"]]}
    body = {
        "data": [
            {
                "traceID": admitted.trace_id.lstrip("0"),  # Jaeger drops leading zeros
                "processes": processes,
                "spans": [
                    {
                        "traceID": s["trace_id"],
                        "spanID": s["span_id"],
                        "operationName": s["name"],
                        "references": (
                            [{"refType": "CHILD_OF", "traceID": s["trace_id"], "spanID": s["parent_span_id"]}]
                            if s["parent_span_id"]
                            else []
                        ),
                        "startTime": s["start_ns"] // 1000,
                        "duration": (s["end_ns"] - s["start_ns"]) // 1000,
                        "tags": [{"key": k, "type": "string", "value": v} for k, v in s["attributes"].items()]
                        + [{"key": "span.kind", "type": "string", "value": s["kind"].lower()}],
                        "processID": pid[s["service"]],
                        "logs": [],
                    }
                    for s in spans
                ],
            }
        ]
    }
    jaeger = _JsonServer({f"/api/traces/{admitted.trace_id}": body})
    # No span files: what is printed can only come from Jaeger.
    for path in (data_dir / "spans").iterdir():
        path.unlink()
    try:
        result = _run(admitted.event_id, "--data-dir", str(data_dir), "--jaeger-url", jaeger.url, "--wait", "0")
    finally:
        jaeger.close()
    assert result.exit_code == 0, result.output
    assert "8 spans from shinchoku-client, ingest, catalog, reporting" in result.output
    assert "reporting  accepted.mof.1-25 process" in result.output


def test_trace_json_and_trace_id_without_ingest(stack: tuple[Path, Journey, Journey, _JsonServer]) -> None:
    data_dir, admitted, _, ingest = stack
    ingest.close()
    result = _run("ignored", "--data-dir", str(data_dir), "--trace-id", admitted.trace_id, "--json", "--wait", "0")
    assert result.exit_code == 0, result.output
    spans = json.loads(result.output)
    assert {s["trace_id"] for s in spans} == {admitted.trace_id}
    assert spans[0]["service"] == "shinchoku-client"


def test_trace_explains_what_is_missing(stack: tuple[Path, Journey, Journey, _JsonServer], tmp_path: Path) -> None:
    data_dir, _, _, _ = stack
    result = _run("00000000-0000-4000-8000-000000000000", "--data-dir", str(data_dir), "--wait", "0")
    assert result.exit_code == 1
    assert "ingest has no event 00000000-0000-4000-8000-000000000000" in result.output
    result = _run("x", "--data-dir", str(tmp_path / "nowhere"), "--wait", "0")
    assert result.exit_code == 1
    assert "shinchoku up" in result.output
    result = _run("x", "--data-dir", str(data_dir), "--trace-id", "f" * 32, "--wait", "0")
    assert result.exit_code == 1
    assert f"no spans of trace {'f' * 32}" in result.output
