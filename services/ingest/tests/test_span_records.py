"""Ingest's spans written as records to the span file say exactly what the same spans built by the SDK say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from ingest.tracing import BatchTracer
from shinchoku_runtime.telemetry import SPANS_DIR, init_tracing, read_spans

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _one_message(tracer: BatchTracer, subject: str) -> None:
    message = tracer.open(f"{subject} process", {"traceparent": PARENT}, {"messaging.system": "nats", "n": 1})
    published = tracer.new_child(message)
    tracer.child(message, "catalog lookup", 10, 20, {"shinchoku.measure_id": "1-25", "note": "値 \ud800"})
    tracer.child(
        message,
        "ACCEPTED publish",
        30,
        40,
        {"messaging.nats.batch_size": 2},
        kind=SpanKind.PRODUCER,
        context=published,
        status=Status(StatusCode.ERROR, 'no "PubAck"'),
    )
    message.attributes["shinchoku.outcome"] = "admitted"
    tracer.close(message)
    tracer.flush()


def _comparable(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {s["span_id"]: s["name"] for s in spans}
    out = []
    for s in sorted(spans, key=lambda s: s["name"]):
        s = dict(s)
        s["parent"] = by_id.get(s.pop("parent_span_id"), "outside")
        del s["span_id"]
        if s["name"].endswith("process"):
            assert s["end_ns"] >= s["start_ns"]
            del s["start_ns"], s["end_ns"]
        out.append(s)
    return out


@pytest.fixture(autouse=True)
def _span_file_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


def test_records_and_sdk_spans_write_the_same_lines(tmp_path: Path) -> None:
    provider = init_tracing("ingest", tmp_path)
    try:
        fast = BatchTracer(provider.get_tracer("ingest"))
        assert fast._sink is not None  # the span file alone: records
        _one_message(fast, "status.mof.1-25")
        slow = BatchTracer(provider.get_tracer("ingest"))
        slow._sink = None  # the SDK's way, into the same file
        _one_message(slow, "status.mof.1-26")
        provider.force_flush()
    finally:
        provider.shutdown()
    spans = read_spans(tmp_path / SPANS_DIR)
    assert len(spans) == 6
    # Both messages continue the publisher's trace; the records were queued (and written) first.
    assert {s["trace_id"] for s in spans} == {"0af7651916cd43dd8448eb211c80319c"}
    fast_spans, slow_spans = spans[:3], spans[3:]
    assert [s["name"] for s in fast_spans if s["name"].endswith("process")] == ["status.mof.1-25 process"]
    for s in slow_spans:
        s["name"] = s["name"].replace("1-26", "1-25")
    assert _comparable(fast_spans) == _comparable(slow_spans)
    process = next(s for s in fast_spans if s["name"].endswith("process"))
    assert process["parent_span_id"] == "b7ad6b7169203331"
    assert process["kind"] == "CONSUMER"
    assert process["attributes"]["shinchoku.outcome"] == "admitted"


def test_spans_go_the_sdk_way_when_another_processor_listens(tmp_path: Path) -> None:
    provider = init_tracing("ingest", tmp_path)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        tracer = BatchTracer(provider.get_tracer("ingest"))
        assert tracer._sink is None
        _one_message(tracer, "status.mof.1-25")
        provider.force_flush()
    finally:
        provider.shutdown()
    assert len(memory.get_finished_spans()) == 3
    assert len(read_spans(tmp_path / SPANS_DIR)) == 3


def test_no_records_for_a_tracer_outside_the_sdk_file(tmp_path: Path) -> None:
    provider = TracerProvider(resource=Resource({"service.name": "ingest"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = BatchTracer(provider.get_tracer("ingest"))
    assert tracer._sink is None
    _one_message(tracer, "status.mof.1-25")
    assert {s.name for s in memory.get_finished_spans()} == {
        "status.mof.1-25 process",
        "catalog lookup",
        "ACCEPTED publish",
    }
