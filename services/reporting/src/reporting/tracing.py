"""Per-message spans for a batch, recorded after the batch's commit.

Each admitted event gets reporting's `process` span (parent: the report's trace, from the message's W3C
`traceparent` header) with the batch's database write as its child span. At thousands of events a second
the SDK's `Tracer.start_span` path (a live `Span` with its lock, limits and attribute cleaning, for a span
that is already over when it is created) cost more CPU than everything else the consumer does. So, when
the tracer is the SDK's, the two finished spans are built directly as `ReadableSpan`s, with the tracer's
own sampler, id generator, resource and span processor, exactly what `start_span`/`end` hand the processor;
with any other tracer (the SDK disabled, a no-op provider) the public API is used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from shinchoku_runtime.propagation import extract_parent

SCOPE = InstrumentationScope("reporting.subscribers")


@dataclass(frozen=True, slots=True)
class MessageSpan:
    """What one message's span says: its headers (for the parent), name and attributes."""

    headers: Mapping[str, str] | None
    name: str
    attributes: dict[str, Any]
    start_ns: int


class BatchSpans:
    """Records `process` + `db write` spans for every message of a committed (or failed) batch."""

    def __init__(self, tracer: trace.Tracer, *, db_system: str) -> None:
        self._tracer = tracer
        self._db_system = db_system
        self._sdk = tracer if isinstance(tracer, SdkTracer) else None

    def record(
        self, messages: Sequence[MessageSpan], *, write_start_ns: int, write_end_ns: int, error: str | None
    ) -> None:
        done = time.time_ns()
        db_attributes: dict[str, Any] = {
            "db.system": self._db_system,
            "db.operation": "apply admitted batch",
            "shinchoku.batch_size": len(messages),
        }
        if self._sdk is None:
            self._record_api(messages, write_start_ns, write_end_ns, done, db_attributes, error)
            return
        sdk = self._sdk
        events: tuple[Event, ...] = ()
        if error is not None:
            process_status = Status(StatusCode.ERROR, "database write failed; message nak'ed for redelivery")
            write_status = Status(StatusCode.ERROR, error)
            events = (
                Event(
                    "exception",
                    _exception_attributes(error),
                    timestamp=write_end_ns,
                ),
            )
        else:
            process_status = write_status = Status(StatusCode.UNSET)
        for m in messages:
            context, parent = extract_parent(m.headers)
            if parent is None:
                trace_id = sdk.id_generator.generate_trace_id()
            else:
                trace_id = parent.trace_id
            sampling = sdk.sampler.should_sample(context, trace_id, m.name, SpanKind.CONSUMER, m.attributes)
            if sampling.decision != Decision.RECORD_AND_SAMPLE:
                continue  # not recorded: what the span processors would have dropped anyway
            flags = TraceFlags(TraceFlags.SAMPLED)
            process = SpanContext(trace_id, sdk.id_generator.generate_span_id(), False, flags, sampling.trace_state)
            write = SpanContext(trace_id, sdk.id_generator.generate_span_id(), False, flags, sampling.trace_state)
            sdk.span_processor.on_end(
                ReadableSpan(
                    "reporting db write",
                    context=write,
                    parent=process,
                    resource=sdk.resource,
                    attributes=db_attributes,
                    events=events,
                    kind=SpanKind.CLIENT,
                    status=write_status,
                    start_time=write_start_ns,
                    end_time=write_end_ns,
                    instrumentation_scope=SCOPE,
                )
            )
            sdk.span_processor.on_end(
                ReadableSpan(
                    m.name,
                    context=process,
                    parent=parent,
                    resource=sdk.resource,
                    attributes={**dict(sampling.attributes or {}), **m.attributes},
                    kind=SpanKind.CONSUMER,
                    status=process_status,
                    start_time=m.start_ns,
                    end_time=done,
                    instrumentation_scope=SCOPE,
                )
            )

    def _record_api(
        self,
        messages: Sequence[MessageSpan],
        start: int,
        end: int,
        done: int,
        db_attributes: dict[str, Any],
        error: str | None,
    ) -> None:
        for m in messages:
            parent = propagate.extract(m.headers) if m.headers else None
            span = self._tracer.start_span(
                m.name, context=parent, kind=SpanKind.CONSUMER, start_time=m.start_ns, attributes=m.attributes
            )
            if not span.is_recording():
                span.end()
                continue
            child = self._tracer.start_span(
                "reporting db write",
                context=trace.set_span_in_context(span),
                kind=SpanKind.CLIENT,
                start_time=start,
                attributes=db_attributes,
            )
            if error is not None:
                child.add_event("exception", _exception_attributes(error))
                child.set_status(Status(StatusCode.ERROR, error))
                span.set_status(Status(StatusCode.ERROR, "database write failed; message nak'ed for redelivery"))
            child.end(end_time=end)
            span.end(end_time=done)


def _exception_attributes(error: str) -> dict[str, Any]:
    """`error` reads "Type: message" (what the writer reports of a database fault)."""
    kind, _, message = error.partition(": ")
    return {"exception.type": kind, "exception.message": message or kind}
