"""The fast trace-context path gives exactly what `opentelemetry.propagate` gives, header for header."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shinchoku_runtime.propagation import extract_parent, inject_span_context

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CASES = [
    None,
    {},
    {"Nats-Msg-Id": "x"},
    {"traceparent": VALID},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
    {"traceparent": "  " + VALID},
    {"traceparent": VALID + "-extra"},
    {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future"},
    {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"},
    {"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"},
    {"traceparent": "garbage"},
    {"traceparent": VALID + " " * 600},
    {"traceparent": VALID, "tracestate": "vendor=abc,other=1"},
    {"traceparent": VALID, "baggage": "tenant=mof"},
]


def expected(headers: dict[str, str] | None) -> SpanContext | None:
    context = propagate.extract(headers) if headers else None
    parent = trace.get_current_span(context).get_span_context() if context is not None else None
    return parent if parent is not None and parent.is_valid else None


@pytest.mark.parametrize("headers", CASES)
def test_extract_matches_the_propagators(headers: dict[str, str] | None) -> None:
    context, parent = extract_parent(headers)
    assert parent == expected(headers)
    if parent is None:
        assert context is None
    else:
        assert context is not None
        assert trace.get_current_span(context).get_span_context() == parent


@given(st.text(max_size=80))
def test_extract_of_any_traceparent_matches(value: str) -> None:
    headers = {"traceparent": value}
    assert extract_parent(headers)[1] == expected(headers)


@pytest.mark.parametrize(
    "context",
    [
        SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1)),
        SpanContext(1, 2, False, TraceFlags(0)),
        SpanContext(1, 2, False, TraceFlags(1), TraceState([("vendor", "abc")])),
        trace.INVALID_SPAN_CONTEXT,
    ],
)
def test_inject_matches_the_propagators(context: SpanContext) -> None:
    fast: dict[str, str] = {"Nats-Msg-Id": "x"}
    inject_span_context(fast, context)
    slow: dict[str, str] = {"Nats-Msg-Id": "x"}
    if context.is_valid:
        propagate.inject(slow, context=trace.set_span_in_context(NonRecordingSpan(context)))
    assert fast == slow


@pytest.fixture
def trace_context_only() -> Iterator[None]:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
    try:
        yield
    finally:
        propagate.set_global_textmap(before)


@pytest.mark.usefixtures("trace_context_only")
def test_other_propagators_are_honoured() -> None:
    """With a propagator set other than the default pair, the configured one decides (here: no baggage pass)."""
    headers = {"traceparent": VALID, "baggage": "tenant=mof"}
    assert extract_parent(headers)[1] == expected(headers)
    out: dict[str, str] = {}
    inject_span_context(out, SpanContext(1, 2, False, TraceFlags(1)))
    assert out == {"traceparent": "00-00000000000000000000000000000001-0000000000000002-01"}
