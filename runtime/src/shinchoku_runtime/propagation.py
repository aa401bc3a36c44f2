"""Trace context in and out of NATS message headers, fast when the propagators are OpenTelemetry's defaults.

Ingest and reporting read a `traceparent` from every message and write one into every message they publish:
thousands a second. Through `opentelemetry.propagate` each costs several µs (a composite propagator, a
getter and setter per field, a baggage pass, a regex search, context objects). When the configured
propagators are the SDK's defaults (W3C trace context + W3C baggage) and a message carries no `tracestate`
or `baggage`, the result is fully determined by the `traceparent` alone; these functions then do exactly what
the propagators would, directly. With any other propagator (`OTEL_PROPAGATORS=b3`, a custom one) or those
headers present, they call `opentelemetry.propagate` itself. (Which propagators are configured is read through
the `otel-sdk.composite-propagators` hook, `shinchoku_runtime.adapters.otel_sdk`.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shinchoku_runtime.adapters.otel_sdk import propagators_of

TRACEPARENT = "traceparent"
_SLOW_HEADERS = ("tracestate", "baggage")
# The same pattern and limits as TraceContextTextMapPropagator.
_TRACEPARENT_RE = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACEPARENT_MAX = 512
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

_checked: tuple[TextMapPropagator | None, bool] = (None, False)


def _defaults_in_use() -> bool:
    """Whether the global propagator is the default pair (trace context, then baggage), checked once per object."""
    global _checked
    current = propagate.get_global_textmap()
    seen, answer = _checked
    if seen is current:
        return answer
    inner = propagators_of(current)
    answer = (
        inner is not None
        and len(inner) == 2
        and type(inner[0]) is TraceContextTextMapPropagator
        and type(inner[1]) is W3CBaggagePropagator
    )
    _checked = (current, answer)
    return answer


def extract_parent(headers: Mapping[str, str] | None) -> tuple[Context | None, SpanContext | None]:
    """The remote parent a message's headers carry: (a context holding it, its span context), or (None, None).

    The context is what a sampler or `start_span` takes as the parent context; a message without a valid
    trace context gives (None, None), as `propagate.extract` followed by a validity check would.
    """
    if not headers or TRACEPARENT not in headers:
        return None, None
    if not _defaults_in_use() or any(name in headers for name in _SLOW_HEADERS):
        context = propagate.extract(headers)
        parent = trace.get_current_span(context).get_span_context()
        return (context, parent) if parent.is_valid else (None, None)
    header = headers[TRACEPARENT]
    if len(header) > _TRACEPARENT_MAX:
        return None, None
    match = _TRACEPARENT_RE.search(header)
    if match is None:
        return None, None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN or version == "ff" or (version == "00" and rest):
        return None, None
    parent = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)))
    return trace.set_span_in_context(NonRecordingSpan(parent)), parent


def inject_span_context(headers: MutableMapping[str, str], context: SpanContext) -> None:
    """Write `context` into outgoing headers as the configured propagators would (nothing if it is invalid)."""
    if not context.is_valid:
        return
    if _defaults_in_use() and not context.trace_state:
        # A context made of this span alone carries no baggage: the trace context propagator's output is all.
        headers[TRACEPARENT] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        return
    propagate.inject(headers, context=trace.set_span_in_context(NonRecordingSpan(context)))
