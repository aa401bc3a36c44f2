"""Ingest's per-message spans: one trace per report, recorded from the batch's own timings.

Ingest's `process` span per message (parent: the report's `traceparent`), with its catalog lookup, store write
and ACCEPTED/REJECTED publish as children, built by the runtime's `BatchTracer` (see
`shinchoku_runtime.batchspans` for how and why) under the instrumentation scope `ingest`.
"""

from __future__ import annotations

from opentelemetry import trace

from shinchoku_runtime.batchspans import BatchTracer as _BatchTracer
from shinchoku_runtime.batchspans import MessageSpan

SCOPE = "ingest"

__all__ = ["SCOPE", "BatchTracer", "MessageSpan"]


class BatchTracer(_BatchTracer):
    """The runtime's batch tracer under ingest's scope."""

    def __init__(self, tracer: trace.Tracer) -> None:
        super().__init__(tracer, scope=SCOPE)
