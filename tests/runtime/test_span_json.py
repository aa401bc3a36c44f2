"""The span file's fast JSON line says exactly what `span_to_dict` says."""

from __future__ import annotations

import json

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from shinchoku_runtime.telemetry import span_line, span_to_dict, span_to_json


def test_span_to_json_matches_span_to_dict() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": 'テスト "svc"', "service.instance.id": "h-1"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope")
    with tracer.start_as_current_span("root", kind=SpanKind.CONSUMER) as root:
        root.set_attribute("shinchoku.event_id", "e\n1")
        root.set_attribute("n", 3)
        root.set_attribute("flags", [True, False])
        root.add_event("happened", {"k": "値"})
        child = tracer.start_span("child ✓", links=[Link(root.get_span_context())])
        child.set_status(Status(StatusCode.ERROR, 'broken "quote"'))
        child.end()
    bare = tracer.start_span("bare")
    bare.end()
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    for span in spans:
        line = span_to_json(span)
        assert "\n" not in line
        assert json.loads(line) == json.loads(json.dumps(span_to_dict(span)))


def test_spans_built_from_plain_dicts_and_text_orjson_refuses_are_written() -> None:
    """Spans recorded directly as ReadableSpans (ingest, reporting) and a lone surrogate still give one JSON line."""
    context = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1))
    resource = Resource({"service.name": "ingest"})
    plain = ReadableSpan(
        "ACCEPTED publish",
        context=context,
        parent=context,
        resource=resource,
        attributes={"messaging.nats.batch_size": 500, "shinchoku.agency": "mof", "flags": (True, False)},
        kind=SpanKind.PRODUCER,
        start_time=1,
        end_time=2,
    )
    odd = ReadableSpan("odd", context=context, resource=resource, attributes={"note": "broken \ud800 text", "n": 2**70})
    for span in (plain, odd):
        line = span_line(span)
        assert b"\n" not in line
        assert json.loads(line) == json.loads(json.dumps(span_to_dict(span)))
