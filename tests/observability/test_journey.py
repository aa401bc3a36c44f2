"""One report is one trace across processes, with real NATS: the ministry client (here, with an in-memory
span exporter), and catalog, ingest and reporting as their own OS processes exporting over OTLP/HTTP to a
receiver in this test (and to their span files, which `shinchoku trace` reads).

Also: `/metrics` on every service, and the services' JSON logs.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from contracts.events import Status, StatusEvent
from contracts.periods import last_completed_quarter
from shinchoku.commands import trace as trace_command
from shinchoku.issuer import EmbeddedIssuer, StackAuth
from shinchoku.stack import Stack
from shinchoku_client.publisher import AgencyPublisher
from shinchoku_runtime.harness import ProcessGroup, ServiceProcess, service_env
from shinchoku_runtime.natsserver import NatsServer, free_port
from shinchoku_runtime.otlpreceiver import OtlpReceiver
from shinchoku_runtime.telemetry import JsonlSpanExporter, span_to_dict

CLIENT = "shinchoku-client"


@dataclass
class Running:
    data_dir: Path
    nats: NatsServer
    receiver: OtlpReceiver
    services: dict[str, ServiceProcess]
    memory: InMemorySpanExporter
    provider: TracerProvider


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("stack")
    EmbeddedIssuer.prepare(data_dir)  # the services verify tokens with its keys, as under `shinchoku up`
    nats = NatsServer.create(data_dir / "nats").start().apply_streams()  # as `up` does, before the services
    receiver = OtlpReceiver().start()
    group = ProcessGroup()
    try:
        services = {}
        for name in ("catalog", "ingest", "reporting"):
            port = free_port()
            env = service_env(
                name, nats_url=nats.plain_url, nats_password=nats.passwords[name], port=port, data_dir=data_dir
            )
            env |= {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_EXPORTER": "otlp,jsonl",  # the receiver for this test, span files for `trace`
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
            services[name] = group.add(
                ServiceProcess(name, name, env, port, log_file=data_dir / "logs" / f"{name}.log").start()
            )
        for process in services.values():
            process.wait_healthy(120)
        Stack(
            data_dir=data_dir,
            nats_port=nats.options.port,
            http={name: process.url for name, process in services.items()},
        ).save()
        # The ministry's side: its own provider (no global state), spans kept in memory and in a span file.
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": CLIENT}))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(data_dir / "spans" / "client.jsonl")))
        yield Running(data_dir, nats, receiver, services, memory, provider)
    finally:
        group.stop()
        receiver.stop()
        nats.stop()


def _leads(stack: Running, measure_id: str) -> list[str]:
    measure = httpx.get(f"{stack.services['catalog'].url}/measures/{measure_id}", timeout=10).json()
    leads: list[str] = measure["lead_agencies"]
    return leads


async def _publish(stack: Running, event: StatusEvent) -> str:
    """Publish as the event's agency; returns the trace id of the client's publish span."""
    before = len(stack.memory.get_finished_spans())
    async with AgencyPublisher(
        stack.nats.plain_url,
        agency=event.agency,
        password=stack.nats.passwords[event.agency.value],
        tracer_provider=stack.provider,
    ) as publisher:
        await publisher.publish(event)
    (span,) = stack.memory.get_finished_spans()[before:]
    assert span.attributes is not None
    assert span.attributes["shinchoku.event_id"] == str(event.event_id)
    return format(span.context.trace_id, "032x")


def _event(agency: str, measure_id: str) -> StatusEvent:
    quarter = last_completed_quarter(datetime.now(UTC))
    return StatusEvent(
        event_id=uuid.uuid4(),
        measure_id=measure_id,
        agency=agency,
        fiscal_year=quarter.fiscal_year,
        quarter=quarter.quarter,
        status=Status.on_track,
        progress=40,
        reported_at=datetime.now(UTC) - timedelta(minutes=5),
    )


def _decision(stack: Running, event_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(
            f"{stack.services['ingest'].url}/events/{event_id}", timeout=10, auth=StackAuth.of(stack.data_dir)
        )
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            return body
        assert answer.status_code == 404, answer.text
        assert time.monotonic() < deadline, f"ingest never decided {event_id}"
        time.sleep(0.2)


def _trace(stack: Running, trace_id: str, services: set[str]) -> list[dict[str, Any]]:
    """The whole trace: the client's spans from memory, the services' from the OTLP receiver."""

    def whole(spans: list[dict[str, Any]]) -> bool:
        mine = [s for s in spans if s["trace_id"] == trace_id]
        return services <= {s["service"] for s in mine}

    stack.receiver.wait_for(whole, timeout=30)
    time.sleep(0.6)  # the last batch of child spans (BSP delay 200 ms)
    client = [span_to_dict(s) for s in stack.memory.get_finished_spans()]
    return [s for s in client if s["trace_id"] == trace_id] + stack.receiver.trace(trace_id)


def _assert_one_tree(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_id = {s["span_id"]: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    roots = [s for s in spans if not s["parent_span_id"]]
    assert [r["service"] for r in roots] == [CLIENT], "the client's publish is the one root"
    orphans = [s["name"] for s in spans if s["parent_span_id"] and s["parent_span_id"] not in by_id]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"
    return by_id


def _chain(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    """Services from the root down to this span."""
    out = []
    while span:
        out.append(span["service"])
        span = by_id.get(span["parent_span_id"] or "")  # type: ignore[assignment]
    return out[::-1]


async def test_an_admitted_report_is_one_trace_from_client_through_ingest_to_reporting(stack: Running) -> None:
    agency = _leads(stack, "1-25")[0]
    event = _event(agency, "1-25")
    trace_id = await _publish(stack, event)
    decision = _decision(stack, str(event.event_id))
    assert decision["outcome"] == "admitted"
    assert decision["trace_id"] == trace_id, "ingest stores the report's trace id"

    spans = _trace(stack, trace_id, {"ingest", "reporting"})
    by_id = _assert_one_tree(spans)
    assert {CLIENT, "ingest", "reporting"} <= {s["service"] for s in spans}

    (process,) = [s for s in spans if s["service"] == "ingest" and s["kind"] == "CONSUMER"]
    assert by_id[process["parent_span_id"]]["service"] == CLIENT
    attributes = process["attributes"]
    assert attributes["shinchoku.event_id"] == str(event.event_id)
    assert attributes["shinchoku.measure_id"] == "1-25"
    assert attributes["shinchoku.agency"] == agency
    assert attributes["messaging.system"] == "nats"
    assert attributes["messaging.operation"] == "process"
    assert attributes["messaging.destination.name"] == f"status.{agency}.1-25"
    children = [s for s in spans if s["parent_span_id"] == process["span_id"]]
    assert "catalog lookup" in {s["name"] for s in children}
    (publish,) = [s for s in children if s["kind"] == "PRODUCER"]
    assert publish["attributes"]["messaging.destination.name"] == f"accepted.{agency}.1-25"

    reporting = [s for s in spans if s["service"] == "reporting"]
    assert reporting
    for span in reporting:
        chain = _chain(span, by_id)
        assert chain[:2] == [CLIENT, "ingest"], chain
        assert "reporting" in chain
    consumer = [s for s in reporting if by_id[s["parent_span_id"]]["service"] == "ingest"]
    assert consumer, "reporting's processing span hangs under ingest's ACCEPTED publish"
    assert consumer[0]["parent_span_id"] == publish["span_id"]
    assert not [s for s in spans if s["status"] == "ERROR"]


async def test_a_rejected_report_is_one_trace_with_the_reason(stack: Running) -> None:
    leads = set(_leads(stack, "1-25"))
    outsider = next(a for a in ("moj", "maff", "env", "npa", "ppc") if a not in leads)
    event = _event(outsider, "1-25")
    trace_id = await _publish(stack, event)
    decision = _decision(stack, str(event.event_id))
    assert (decision["outcome"], decision["reason"]) == ("rejected", "not_lead")
    assert decision["trace_id"] == trace_id

    spans = _trace(stack, trace_id, {"ingest"})
    by_id = _assert_one_tree(spans)
    (process,) = [s for s in spans if s["service"] == "ingest" and s["kind"] == "CONSUMER"]
    assert by_id[process["parent_span_id"]]["service"] == CLIENT
    assert process["attributes"]["shinchoku.reason"] == "not_lead"
    assert process["attributes"]["shinchoku.agency"] == outsider
    (publish,) = [s for s in spans if s["parent_span_id"] == process["span_id"] and s["kind"] == "PRODUCER"]
    assert publish["attributes"]["messaging.destination.name"] == f"rejected.{outsider}"
    assert "reporting" not in {s["service"] for s in spans}, "a rejection never reaches reporting"


async def test_shinchoku_trace_prints_the_whole_journey(stack: Running) -> None:
    agency = _leads(stack, "2-1")[0]
    event = _event(agency, "2-1")
    trace_id = await _publish(stack, event)
    _decision(stack, str(event.event_id))
    _trace(stack, trace_id, {"ingest", "reporting"})

    app = typer.Typer()
    trace_command.register(app)

    @app.callback()
    def _root() -> None:
        """As in the real CLI."""

    result = CliRunner().invoke(
        app,
        ["trace", str(event.event_id), "--data-dir", str(stack.data_dir)],
        env={"SHINCHOKU_JAEGER_URL": "", "COLUMNS": None},
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"trace {trace_id}" in out
    assert "admitted" in out
    for service in (CLIENT, "ingest", "reporting"):
        assert f"{service}  " in out, f"{service} missing from:\n{out}"
    assert f"ingest  status.{agency}.2-1 process" in out
    # The lookup answered from the catalog's KV mirror names the catalog as its peer.
    assert "catalog lookup" in out
    assert "peer.service=catalog" in out, out
    assert "0 with errors" in out


def test_every_service_serves_prometheus_metrics(stack: Running) -> None:
    expected = {
        "catalog": ["shinchoku_catalog_measures"],
        "ingest": [
            "shinchoku_received_messages_total",
            "shinchoku_ingest_admitted_total",
            "shinchoku_ingest_rejected_total",
            'shinchoku_consumer_pending_messages{consumer="ingest",stream="STATUS"}',
        ],
        "reporting": [  # its own pull loop (no FastStream subscriber), so its own counters only
            "shinchoku_reporting_events_applied_total",
            'shinchoku_consumer_pending_messages{consumer="reporting",stream="ACCEPTED"}',
            "shinchoku_reporting_rollup_freshness_seconds",
        ],
    }
    deadline = time.monotonic() + 20  # the consumer-lag gauges are refreshed every 5 s
    for name, metrics in expected.items():
        while True:
            answer = httpx.get(f"{stack.services[name].url}/metrics", timeout=10, auth=StackAuth.of(stack.data_dir))
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            missing = [m for m in metrics if m not in answer.text]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, f"{name} /metrics lacks {missing}"


def test_service_logs_are_json_lines(stack: Running) -> None:
    for name, process in stack.services.items():
        lines = [line for line in process.log_file.read_text("utf-8").splitlines() if line.strip()]
        assert lines, f"{name} logged nothing"
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert len(records) >= 3, f"{name}: its log records should be JSON objects"
        # Whatever goes through logging is JSON (bare prints of third-party code are not log records).
        plain = [line for line in lines if re.match(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)[: ]", line)]
        assert not plain, f"{name} logged plain-text records: {plain[:3]}"
        assert all(r["service"] == name for r in records)
        assert {"time", "level", "logger", "message"} <= set(records[0])
        for record in records:
            if "trace_id" in record:
                assert len(record["trace_id"]) == 32
                assert len(record["span_id"]) == 16


async def test_a_catalog_lookup_that_misses_the_mirror_joins_the_trace(stack: Running) -> None:
    leads = _leads(stack, "1-25")
    event = _event(leads[0], "6-99")  # no such measure: the mirror misses and ingest asks the catalog
    trace_id = await _publish(stack, event)
    decision = _decision(stack, str(event.event_id))
    assert (decision["outcome"], decision["reason"]) == ("rejected", "unknown_measure")
    spans = _trace(stack, trace_id, {"ingest"})
    _assert_one_tree(spans)
    catalog = stack.receiver.wait_for(
        lambda all_spans: any(s["service"] == "catalog" and s["trace_id"] == trace_id for s in all_spans), timeout=5
    )
    assert catalog
