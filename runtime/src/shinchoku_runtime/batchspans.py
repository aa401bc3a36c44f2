"""Per-message spans for a batch, built as finished spans from the batch's own timings.

A consumer handling thousands of messages a second records one `process` span per message (parent: the
message's `traceparent`) and children for the work done on its batch (a catalog lookup, a database write, a
publish). The SDK's `Tracer.start_span` path (a live `Span` with its lock, limits and attribute cleaning, a
context object per child, for spans whose times are known already) cost more CPU than handling the messages.
So, when the tracer is the SDK's, the spans are built directly as `ReadableSpan`s with the tracer's own
sampler (once per message: children follow their message's decision, as a parent-based sampler would), id
generator, resource and span processor, which is exactly what `start_span`/`end` hand the processor. When
the span file is the provider's only listener, they are handed to it as records instead (`spanfile.record_sink`),
collected until `flush` (once per batch). With any other tracer (the SDK disabled, a no-op provider) nothing is
recorded, and a message's trace context is passed on unchanged.

Ingest (`ingest.tracing`) and reporting (`reporting.tracing`) both record their spans through `BatchTracer`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from shinchoku_runtime.propagation import extract_parent
from shinchoku_runtime.spanfile import RecordSink, SpanRecords, record_sink

_UNSET = Status()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
#: Names by identity (an enum member's own hash is computed in Python, a dict keyed by it costs more).
_KIND_NAMES = {id(kind): kind.name for kind in SpanKind}
_STATUS_NAMES = {id(code): code.name for code in StatusCode}


class MessageSpan:
    """One message's `process` span while its batch is under way (recorded when the message is closed)."""

    __slots__ = ("_trace_hex", "attributes", "context", "name", "parent", "recording", "span_hex", "start_ns", "status")

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        recording: bool,
        attributes: dict[str, Any],
        start_ns: int,
    ) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.recording = recording
        self.attributes = attributes
        self.start_ns = start_ns
        self.status = _UNSET
        self._trace_hex: str | None = None
        #: This span's id in hex, once a span record needed it.
        self.span_hex: str | None = None

    @property
    def trace_id(self) -> str | None:
        if self._trace_hex is None and self.context.trace_id:
            self._trace_hex = f"{self.context.trace_id:032x}"
        return self._trace_hex

    def own_span_hex(self) -> str:
        if self.span_hex is None:
            self.span_hex = f"{self.context.span_id:016x}"
        return self.span_hex


class BatchTracer:
    """Opens message spans and records finished child spans for them, under one instrumentation scope."""

    def __init__(self, tracer: trace.Tracer, *, scope: str) -> None:
        self._scope = InstrumentationScope(scope)
        self._sdk = tracer if isinstance(tracer, SdkTracer) else None
        self._sink: RecordSink | None = record_sink(self._sdk) if self._sdk is not None else None
        self._records = SpanRecords()

    def flush(self) -> None:
        """Hand the records collected so far to the span file's processor (once per batch)."""
        if self._records and self._sink is not None:
            records, self._records = self._records, SpanRecords()
            self._sink.emit(records)

    def open(
        self, name: str, headers: Mapping[str, str] | None, attributes: dict[str, Any], start_ns: int | None = None
    ) -> MessageSpan:
        """A message's `process` span, started at `start_ns` (now if not given), sampled once for all its spans."""
        if start_ns is None:
            start_ns = time.time_ns()
        parent_context, parent = extract_parent(headers)
        sdk = self._sdk
        if sdk is None:
            return MessageSpan(name, parent or INVALID_SPAN_CONTEXT, None, False, attributes, start_ns)
        trace_id = parent.trace_id if parent is not None else sdk.id_generator.generate_trace_id()
        sampling = sdk.sampler.should_sample(parent_context, trace_id, name, SpanKind.CONSUMER, attributes)
        recording = sampling.decision == Decision.RECORD_AND_SAMPLE
        flags = _SAMPLED if recording else _NOT_SAMPLED
        context = SpanContext(trace_id, sdk.id_generator.generate_span_id(), False, flags, sampling.trace_state)
        extra = sampling.attributes
        # The SDK's samplers hand the span's own attributes back; one that adds attributes adds keys.
        if recording and extra and len(extra) != len(attributes):
            attributes = {**extra, **attributes}
        return MessageSpan(name, context, parent, recording, attributes, start_ns)

    def new_child(self, message: MessageSpan) -> SpanContext | None:
        """The context of a child span to be recorded later (to pass on before it ends), None if not recorded."""
        if not message.recording or self._sdk is None:
            return None
        c = message.context
        return SpanContext(c.trace_id, self._sdk.id_generator.generate_span_id(), False, c.trace_flags, c.trace_state)

    def child(
        self,
        message: MessageSpan,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Any],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        context: SpanContext | None = None,
        status: Status = _UNSET,
        events: Sequence[Event] = (),
    ) -> None:
        """Record a finished child span of `message` (with `context` when its id was handed out already)."""
        sdk = self._sdk
        if not message.recording or sdk is None:
            return
        sink = self._sink
        if sink is not None and not events:  # a span record carries no events: a span with events goes the SDK's way
            span_id = context.span_id if context is not None else sdk.id_generator.generate_span_id()
            self._records.append(
                (
                    name,
                    message.trace_id or "",
                    f"{span_id:016x}",
                    message.own_span_hex(),
                    _KIND_NAMES[id(kind)],
                    start_ns,
                    end_ns,
                    _STATUS_NAMES[id(status.status_code)],
                    status.description,
                    attributes,
                    self._scope.name,
                    sink.service,
                    sink.instance,
                )
            )
            return
        if context is None:
            c = message.context
            context = SpanContext(c.trace_id, sdk.id_generator.generate_span_id(), False, c.trace_flags, c.trace_state)
        sdk.span_processor.on_end(
            ReadableSpan(
                name,
                context=context,
                parent=message.context,
                resource=sdk.resource,
                attributes=attributes,
                events=events,
                kind=kind,
                status=status,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )

    def close(self, message: MessageSpan, end_ns: int | None = None) -> None:
        """Record the message's `process` span, ending at `end_ns` (now if not given)."""
        sdk = self._sdk
        if not message.recording or sdk is None:
            return
        if end_ns is None:
            end_ns = time.time_ns()
        sink = self._sink
        if sink is not None:
            parent = message.parent
            status = message.status
            self._records.append(
                (
                    message.name,
                    message.trace_id or "",
                    message.own_span_hex(),
                    f"{parent.span_id:016x}" if parent is not None else None,
                    "CONSUMER",
                    message.start_ns,
                    end_ns,
                    _STATUS_NAMES[id(status.status_code)],
                    status.description,
                    message.attributes,
                    self._scope.name,
                    sink.service,
                    sink.instance,
                )
            )
            return
        sdk.span_processor.on_end(
            ReadableSpan(
                message.name,
                context=message.context,
                parent=message.parent,
                resource=sdk.resource,
                attributes=message.attributes,
                kind=SpanKind.CONSUMER,
                status=message.status,
                start_time=message.start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )
