"""The runtime's telemetry kit: span files and their rotation, OTLP/HTTP export to a real receiver,
SQLAlchemy and FastAPI instrumentation, JSON logs with trace ids, consumer-lag gauges."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from nats.aio.client import Client
from nats.js.api import ConsumerConfig
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from shinchoku_runtime.broker import ConsumerLag
from shinchoku_runtime.otlpreceiver import OtlpReceiver
from shinchoku_runtime.telemetry import (
    JsonLogFormatter,
    JsonlSpanExporter,
    exporter_names,
    instrument_app,
    instrument_engine,
    make_exporters,
    make_resource,
    read_spans,
    span_files,
)


def _provider(*exporters: object, service: str = "test") -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    return provider


def test_span_file_rotates_and_keeps_every_recent_span_readable(tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    exporter = JsonlSpanExporter(spans_dir / "ingest.jsonl", max_bytes=4_000, backups=3)
    provider = _provider(exporter, service="ingest")
    tracer = provider.get_tracer("t")
    trace_ids = []
    for i in range(60):
        with tracer.start_as_current_span(f"report {i}", attributes={"shinchoku.event_id": f"e{i}"}) as span:
            trace_ids.append(format(span.get_span_context().trace_id, "032x"))

    files = span_files(spans_dir)
    names = [p.name for p in files]
    assert names[-1] == "ingest.jsonl"
    assert set(names) == {"ingest.jsonl", "ingest.jsonl.1", "ingest.jsonl.2", "ingest.jsonl.3"}, names
    assert names[:3] == ["ingest.jsonl.3", "ingest.jsonl.2", "ingest.jsonl.1"], "oldest first"
    assert all(p.stat().st_size < 4_000 + 1_000 for p in files)

    spans = read_spans(spans_dir)
    kept = [s["attributes"]["shinchoku.event_id"] for s in spans]
    # Rotation drops the oldest, never the newest, and keeps order across files.
    assert kept == [f"e{i}" for i in range(60 - len(kept), 60)]
    assert len(kept) > 20
    latest = read_spans(spans_dir, trace_ids[-1])
    assert [s["name"] for s in latest] == ["report 59"]
    assert latest[0]["service"] == "ingest"
    assert latest[0]["parent_span_id"] is None


def test_span_file_tolerates_torn_lines_and_other_files(tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    exporter = JsonlSpanExporter(spans_dir / "catalog.jsonl")
    tracer = _provider(exporter, service="catalog").get_tracer("t")
    with tracer.start_as_current_span("lookup"):
        pass
    with (spans_dir / "catalog.jsonl").open("a") as f:
        f.write('{"trace_id": "abc", "span_id": ')  # a write cut short by a crash
    (spans_dir / "notes.txt").write_text("not spans")
    assert [s["name"] for s in read_spans(spans_dir)] == ["lookup"]


def test_exporter_choice_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert exporter_names() == ["jsonl"]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert exporter_names() == ["otlp"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp, jsonl")
    kinds = [type(e).__name__ for e in make_exporters("ingest", tmp_path)]
    assert kinds == ["OTLPSpanExporter", "JsonlSpanExporter"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert make_exporters("ingest", tmp_path) == []


def test_resource_prefers_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    resource = make_resource("reporting").attributes
    assert resource["service.name"] == "reporting"
    assert resource["deployment.environment"] == "test"
    assert resource["service.namespace"] == "shinchoku"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "reporting-eu")
    assert make_resource("reporting").attributes["service.name"] == "reporting-eu"


def test_spans_reach_a_real_otlp_http_receiver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In this process: the OTLP exporter chosen from OTEL_* variables sends protobuf the receiver decodes."""
    with OtlpReceiver() as receiver:
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        (exporter,) = make_exporters("ingest", tmp_path)
        provider = TracerProvider(resource=make_resource("ingest"))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("status.mext.1-25 process") as parent:
            parent.set_attribute("shinchoku.event_id", "e-1")
            with tracer.start_as_current_span("catalog lookup"):
                pass
        provider.shutdown()
        spans = receiver.wait_for(lambda s: len(s) >= 2, timeout=10)
    by_name = {s["name"]: s for s in spans}
    assert by_name["status.mext.1-25 process"]["attributes"]["shinchoku.event_id"] == "e-1"
    assert by_name["catalog lookup"]["parent_span_id"] == by_name["status.mext.1-25 process"]["span_id"]
    assert {s["service"] for s in spans} == {"ingest"}
    assert not (tmp_path / "spans").exists(), "with an OTLP endpoint and no OTEL_TRACES_EXPORTER, no span file"


def test_init_tracing_in_a_fresh_process_exports_over_otlp_and_flushes_at_exit(tmp_path: Path) -> None:
    """The way a service runs: init_tracing from the environment, spans flushed when the process ends."""
    script = textwrap.dedent(
        """
        from pathlib import Path
        from opentelemetry import trace
        from shinchoku_runtime.telemetry import init_tracing
        import sys
        provider = init_tracing("ingest", Path(sys.argv[1]))
        other = init_tracing("other", None)
        assert other is not provider and trace.get_tracer_provider() is provider, "the first one is global"
        with trace.get_tracer(__name__).start_as_current_span("work") as span:
            span.set_attribute("shinchoku.agency", "mext")
        """
    )
    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_EXPORTER": "otlp,jsonl",
            "OTEL_SERVICE_NAME": "ingest-replica-a",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only the exit flush can deliver within this test
        }
        subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, check=True, timeout=60)
        spans = receiver.wait_for(lambda s: len(s) >= 1, timeout=10)
    assert [(s["name"], s["service"], s["attributes"]) for s in spans] == [
        ("work", "ingest-replica-a", {"shinchoku.agency": "mext"})
    ]
    # Both exporters ran: the span file carries the same span.
    assert [s["span_id"] for s in read_spans(tmp_path / "spans")] == [spans[0]["span_id"]]


def test_instrument_engine_traces_statements_inside_spans_only(tmp_path: Path) -> None:
    memory = InMemorySpanExporter()
    provider = _provider(memory)
    engine = instrument_engine(sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}"), tracer_provider=provider)
    assert instrument_engine(engine, tracer_provider=provider) is engine  # idempotent: no double spans
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))  # a probe outside any trace: not recorded
    assert memory.get_finished_spans() == ()
    with provider.get_tracer("t").start_as_current_span("db write"), engine.begin() as conn:
        conn.execute(sa.text("create table t (x int)"))
        conn.execute(sa.text("insert into t values (1)"))
    spans = memory.get_finished_spans()
    parent = next(s for s in spans if s.name == "db write")
    statements = [s for s in spans if s.name != "db write"]
    assert len(statements) == 2
    assert all(s.parent is not None and s.parent.span_id == parent.context.span_id for s in statements)
    assert all(s.attributes and s.attributes.get("db.system") == "sqlite" for s in statements)


def test_instrument_app_traces_requests_but_not_probes() -> None:
    memory = InMemorySpanExporter()
    provider = _provider(memory)
    app = FastAPI()

    @app.get("/measures/{measure_id}")
    def measure(measure_id: str) -> dict[str, str]:
        return {"id": measure_id}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    instrument_app(app, tracer_provider=provider)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/measures/1-25").status_code == 200
    spans = memory.get_finished_spans()
    assert [s.name for s in spans] == ["GET /measures/{measure_id}"]
    assert spans[0].attributes is not None
    assert spans[0].attributes.get("http.route") == "/measures/{measure_id}"


def test_json_logs_carry_trace_and_span_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter("ingest"))
    logger = logging.getLogger("test.json-logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    tracer = _provider().get_tracer("t")
    logger.info("outside")
    with tracer.start_as_current_span("admit") as span:
        logger.info("admitted %s", "e-1", extra={"event_id": "e-1", "agency": "mext"})
        ctx = span.get_span_context()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    outside, inside, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["message"] == "admitted e-1"
    assert inside["service"] == "ingest"
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert (inside["event_id"], inside["agency"]) == ("e-1", "mext")
    assert inside["time"].endswith("+00:00")
    assert "ValueError: boom" in failed["exception"]


async def test_consumer_lag_gauges_follow_the_durable_consumer(admin_nc: Client) -> None:
    js = admin_nc.jetstream()
    await js.add_consumer("STATUS", ConsumerConfig(durable_name="lag-test", ack_wait=30))
    for i in range(5):
        await js.publish(f"status.mext.1-{i + 1}", b"{}", stream="STATUS_mext")
    registry = CollectorRegistry()
    lag = ConsumerLag(registry)

    async def gauges_show(*lines: str) -> str:
        """The gauges after a refresh, refreshed again for a while until they show `lines`: the server counts a
        publish or a delivery into the consumer's state a moment after acknowledging it (a loaded CI run read 4)."""
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            await lag.refresh(js, stream="STATUS", durable="lag-test")
            text = generate_latest(registry).decode()
            if all(line in text for line in lines) or asyncio.get_running_loop().time() > deadline:
                return text
            await asyncio.sleep(0.1)

    pending_5 = 'shinchoku_consumer_pending_messages{consumer="lag-test",stream="STATUS"} 5.0'
    assert pending_5 in await gauges_show(pending_5)
    sub = await js.pull_subscribe("status.>", durable="lag-test", stream="STATUS")
    msgs = await sub.fetch(2, timeout=5)
    pending_3 = 'shinchoku_consumer_pending_messages{consumer="lag-test",stream="STATUS"} 3.0'
    ack_pending_2 = 'shinchoku_consumer_ack_pending_messages{consumer="lag-test",stream="STATUS"} 2.0'
    text = await gauges_show(pending_3, ack_pending_2)
    assert pending_3 in text
    assert ack_pending_2 in text
    for msg in msgs:
        await msg.ack()
