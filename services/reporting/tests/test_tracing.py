"""Reporting's per-message spans: parent from the traceparent header, the DB write as a child, sampling obeyed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from contracts.periods import FiscalQuarter
from reporting.testing import (
    put_catalog,
    random_admissions,
    reporting_settings,
    running_reporting,
    synthetic_measures,
    wait_caught_up,
)
from reporting.tracing import BatchSpans, MessageSpan
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.telemetry import read_spans

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def message(headers: dict[str, str] | None, event_id: str = "e-1") -> MessageSpan:
    return MessageSpan(
        headers=headers,
        name="reporting process accepted.mof.1-25",
        attributes={"messaging.system": "nats", "shinchoku.event_id": event_id},
        start_ns=1_000,
    )


def recorder() -> tuple[BatchSpans, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return BatchSpans(provider.get_tracer("test"), db_system="sqlite"), exporter


def test_process_span_continues_the_report_trace_and_the_write_is_its_child() -> None:
    spans, exporter = recorder()
    spans.record(
        [message({"traceparent": f"00-{TRACE}-{PARENT}-01"})], write_start_ns=2_000, write_end_ns=3_000, error=None
    )
    write, process = exporter.get_finished_spans()
    assert process.kind is SpanKind.CONSUMER
    assert process.context is not None
    assert process.parent is not None
    assert write.parent is not None
    assert format(process.context.trace_id, "032x") == TRACE
    assert format(process.parent.span_id, "016x") == PARENT
    assert process.parent.is_remote
    assert write.parent.span_id == process.context.span_id
    assert write.name == "reporting db write"
    assert (write.start_time, write.end_time) == (2_000, 3_000)
    assert process.start_time == 1_000
    assert process.attributes is not None
    assert process.attributes["shinchoku.event_id"] == "e-1"
    assert write.attributes is not None
    assert write.attributes["db.system"] == "sqlite"


def test_unsampled_traces_are_not_recorded_and_messages_without_one_start_their_own() -> None:
    spans, exporter = recorder()
    spans.record(
        [message({"traceparent": f"00-{TRACE}-{PARENT}-00"}), message(None, "e-2")],
        write_start_ns=2_000,
        write_end_ns=3_000,
        error=None,
    )
    finished = exporter.get_finished_spans()
    assert len(finished) == 2
    assert all(s.context is not None and format(s.context.trace_id, "032x") != TRACE for s in finished)


def test_a_failed_write_marks_both_spans() -> None:
    spans, exporter = recorder()
    spans.record(
        [message({"traceparent": f"00-{TRACE}-{PARENT}-01"})],
        write_start_ns=2_000,
        write_end_ns=3_000,
        error="OperationalError: database is locked",
    )
    write, process = exporter.get_finished_spans()
    assert write.status.status_code is StatusCode.ERROR
    assert process.status.status_code is StatusCode.ERROR
    assert write.events[0].name == "exception"


def test_without_the_sdk_nothing_breaks() -> None:
    BatchSpans(trace.NoOpTracer(), db_system="sqlite").record(
        [message({"traceparent": f"00-{TRACE}-{PARENT}-01"})], write_start_ns=2_000, write_end_ns=3_000, error=None
    )


async def test_the_service_continues_each_reports_trace(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(10)
    await put_catalog(admin_nc, measures)
    settings = reporting_settings(nats_server.plain_url, nats_server.passwords["reporting"], sqlite_url, tmp_path)
    admission = random_admissions(measures, [FiscalQuarter(2024, 3)], 1)[0]
    async with running_reporting(settings) as reporting:
        await admin_nc.jetstream().publish(
            admission.subject,
            admission.body(),
            headers={"Nats-Msg-Id": admission.event_id, "traceparent": f"00-{TRACE}-{PARENT}-01"},
        )
        await wait_caught_up(admin_nc)
        reporting.service.tracer_provider.force_flush()
        found: list[dict[str, object]] = []
        for _ in range(50):
            found = read_spans(tmp_path / "spans", TRACE)
            if len(found) >= 2:
                break
            await asyncio.sleep(0.05)
    by_name = {str(s["name"]): s for s in found}
    process = by_name[f"reporting process {admission.subject}"]
    write = by_name["reporting db write"]
    assert process["parent_span_id"] == PARENT
    assert write["parent_span_id"] == process["span_id"]
    attributes = process["attributes"]
    assert isinstance(attributes, dict)
    assert attributes["shinchoku.event_id"] == admission.event_id
    assert attributes["shinchoku.measure_id"] == admission.event["measure_id"]
    assert attributes["messaging.destination.name"] == admission.subject
    assert json.dumps(found)  # the span file holds plain JSON
