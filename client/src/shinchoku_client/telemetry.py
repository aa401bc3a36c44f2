"""Spans for the publishes, when OpenTelemetry is installed (`pip install shinchoku-client[telemetry]`).

Each report's publish is a PRODUCER span (the root of the report's trace, or a child of the caller's span),
and its `traceparent` travels in the message's headers to ingest and on to reporting, so that operators
follow the report hop by hop. Without OpenTelemetry the client publishes the same bytes with no span and
no `traceparent`: telemetry is the platform's concern, not a requirement for reporting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.propagate import inject as otel_inject

    HAVE_OPENTELEMETRY = True
except ImportError:  # the client installed without the [telemetry] extra
    HAVE_OPENTELEMETRY = False

TRACER_NAME = "shinchoku.client"


class SpanLike(Protocol):
    def set_attribute(self, key: str, value: Any) -> None: ...
    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None: ...


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        pass


def _producer(subject: str, attributes: dict[str, str]) -> dict[str, Any]:
    """A publish span's name, kind and attributes (OpenTelemetry's messaging conventions)."""
    return {
        "name": f"{subject} publish",
        "kind": otel_trace.SpanKind.PRODUCER,
        "attributes": {
            "messaging.system": "nats",
            "messaging.operation": "publish",
            "messaging.destination.name": subject,
            **attributes,
        },
    }


class Tracing:
    """Producer spans and `traceparent` headers through OpenTelemetry's API, or nothing when it is absent."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self._tracer: Any = None
        if HAVE_OPENTELEMETRY:
            provider = tracer_provider or otel_trace.get_tracer_provider()
            self._tracer = provider.get_tracer(TRACER_NAME)

    @contextlib.contextmanager
    def producer(self, subject: str, attributes: dict[str, str], headers: dict[str, str]) -> Iterator[SpanLike]:
        """A span for one publish on `subject`; `headers` gets its `traceparent`. An exception leaving the block
        marks the span as failed (with the exception's message) and goes on."""
        if self._tracer is None:
            yield _NoSpan()
            return
        with self._tracer.start_as_current_span(
            **_producer(subject, attributes),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            otel_inject(headers)
            try:
                yield span
            except BaseException as e:
                span.set_status(otel_trace.StatusCode.ERROR, str(e) or type(e).__name__)
                raise

    def start(self, subject: str, attributes: dict[str, str], headers: dict[str, str]) -> Any:
        """A span for one message of a batch, started now and ended by `end`: `headers` gets its traceparent.
        (A batch's messages are in flight together, so their spans cannot nest as context managers.)"""
        if self._tracer is None:
            return None
        span = self._tracer.start_span(**_producer(subject, attributes))
        otel_inject(headers, context=otel_trace.set_span_in_context(span, otel_context.get_current()))
        return span

    def end(self, span: Any, *, error: str | None = None, attributes: dict[str, Any] | None = None) -> None:
        if span is None:
            return
        for key, value in (attributes or {}).items():
            span.set_attribute(key, value)
        if error is not None:
            span.set_status(otel_trace.StatusCode.ERROR, error)
        span.end()
