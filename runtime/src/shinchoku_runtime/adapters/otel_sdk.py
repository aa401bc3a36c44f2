"""OpenTelemetry SDK internals the span paths rely on, and nowhere else. Verified on opentelemetry-sdk and -api
1.45.2 (bounded <1.46).

* `span-attributes`: a `ReadableSpan` built with a plain dict keeps it in `_attributes`; the public `attributes`
  wraps it in a read-only proxy that the span file's encoder would have to copy first (`telemetry.span_line`).
* `span-processors`: whether a provider's spans all go to one processor (the span file's), read from its
  `SynchronousMultiSpanProcessor._span_processors`. Only then may a hot path hand that processor finished
  span records instead of `ReadableSpan`s (`spanfile.record_sink`): with any other listener they would miss it.
* `batch-queue`: the queue of the SDK's `BatchSpanProcessor` (`_batch_processor.emit`), which the span file's
  processor also feeds with span records; its worker exports what it queued, records included, in batches.
* `composite-propagators`: the propagators inside the global `CompositePropagator`, to know that they are the
  default pair (W3C trace context, baggage) whose result the `traceparent` header alone determines
  (`propagation.py`).

There is no public way to ask any of these; without them the public path is taken (a warning names the hook).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shinchoku_runtime.adapters.hooks import Hook, holds, need, register, source_says

LIBRARY = "opentelemetry-sdk"
VERIFIED_ON = "1.45"

SPAN_ATTRIBUTES = "otel-sdk.span-attributes"
SPAN_PROCESSORS = "otel-sdk.span-processors"
BATCH_QUEUE = "otel-sdk.batch-queue"
COMPOSITE_PROPAGATORS = "otel-sdk.composite-propagators"


def _probe_span_attributes() -> None:
    given = {"a": 1}
    span = ReadableSpan("probe", attributes=given)
    need(SPAN_ATTRIBUTES, getattr(span, "_attributes", None) is given, "ReadableSpan._attributes is not the dict given")
    need(SPAN_ATTRIBUTES, dict(span.attributes or {}) == given, "ReadableSpan.attributes no longer reads it")


def _probe_span_processors() -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    try:
        tracer = provider.get_tracer("probe")
        multi = getattr(tracer, "span_processor", None)
        need(SPAN_PROCESSORS, isinstance(multi, SynchronousMultiSpanProcessor), f"Tracer.span_processor is {multi!r}")
        need(SPAN_PROCESSORS, getattr(multi, "_span_processors", None) == (), "no _span_processors tuple")
        processor = SpanProcessor()
        provider.add_span_processor(processor)
        parts = getattr(multi, "_span_processors", None)
        need(SPAN_PROCESSORS, parts == (processor,), "_span_processors does not list the added processor")
    finally:
        provider.shutdown()


class _Nowhere(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        del spans
        return SpanExportResult.SUCCESS


def _probe_batch_queue() -> None:
    processor = BatchSpanProcessor(_Nowhere(), schedule_delay_millis=60_000)
    try:
        emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
        need(BATCH_QUEUE, callable(emit), "BatchSpanProcessor._batch_processor.emit is gone")
        on_end = BatchSpanProcessor.on_end
        source_says(BATCH_QUEUE, on_end, "self._batch_processor.emit(span)", "on_end no longer queues through emit")
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]


def _probe_composite_propagators() -> None:
    inner = TraceContextTextMapPropagator()
    composite = CompositePropagator([inner])
    need(COMPOSITE_PROPAGATORS, list(getattr(composite, "_propagators", ())) == [inner], "no _propagators list")


for _hook in (
    Hook(
        SPAN_ATTRIBUTES,
        LIBRARY,
        VERIFIED_ON,
        ("ReadableSpan._attributes",),
        "a span's attributes encoded without copying them out of their read-only proxy",
        "the attributes are copied into a dict for every span written to the span file",
        _probe_span_attributes,
    ),
    Hook(
        SPAN_PROCESSORS,
        LIBRARY,
        VERIFIED_ON,
        ("SynchronousMultiSpanProcessor._span_processors",),
        "knowing that the span file is a provider's only listener, so hot paths may hand it span records",
        "hot paths build a ReadableSpan for every span (about three times the CPU per span)",
        _probe_span_processors,
    ),
    Hook(
        BATCH_QUEUE,
        LIBRARY,
        VERIFIED_ON,
        ("BatchSpanProcessor._batch_processor",),
        "span records queued on the span file's batch processor with the spans",
        "hot paths build a ReadableSpan for every span (about three times the CPU per span)",
        _probe_batch_queue,
    ),
    Hook(
        COMPOSITE_PROPAGATORS,
        LIBRARY,
        VERIFIED_ON,
        ("CompositePropagator._propagators",),
        "reading a message's traceparent directly when the propagators are the defaults",
        "every message's trace context goes through opentelemetry.propagate (several µs more per message)",
        _probe_composite_propagators,
    ),
):
    register(_hook)


def plain_attributes(span: ReadableSpan) -> dict[str, object] | None:
    """The plain dict a span was built with, when it was (else None: read `span.attributes`)."""
    if not holds(SPAN_ATTRIBUTES):
        return None
    attributes = getattr(span, "_attributes", None)
    return attributes if type(attributes) is dict else None


def sole_processor(tracer: object) -> SpanProcessor | None:
    """The only span processor of an SDK tracer's provider; None when it has several, none, or the hook is broken."""
    multi = getattr(tracer, "span_processor", None)
    if not isinstance(multi, SynchronousMultiSpanProcessor) or not holds(SPAN_PROCESSORS):
        return None
    processors = multi._span_processors
    return processors[0] if len(processors) == 1 else None


def queue_emit(processor: BatchSpanProcessor) -> Callable[[object], None] | None:
    """The function queueing an item for a batch processor's exporter, or None when the hook is broken."""
    if not holds(BATCH_QUEUE):
        return None
    emit: Callable[[object], None] = processor._batch_processor.emit  # type: ignore[assignment]
    return emit


def propagators_of(propagator: TextMapPropagator) -> Sequence[TextMapPropagator] | None:
    """The propagators inside a composite one, in order; None for any other kind, or when the hook is broken."""
    if not isinstance(propagator, CompositePropagator) or not holds(COMPOSITE_PROPAGATORS):
        return None
    parts: Sequence[TextMapPropagator] = propagator._propagators
    return parts
