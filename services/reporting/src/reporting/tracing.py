"""Per-message spans for a batch, recorded after the batch's commit.

Each admitted event gets reporting's `process` span (parent: the report's trace, from the message's W3C
`traceparent` header) with the batch's database write as its child span, built from the batch's own timings
by the runtime's `BatchTracer` (see `shinchoku_runtime.batchspans` for how and why).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import Event
from opentelemetry.trace import SpanKind, Status, StatusCode

from shinchoku_runtime.batchspans import BatchTracer

SCOPE = "reporting.subscribers"
_UNSET = Status(StatusCode.UNSET)


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
        self._tracer = BatchTracer(tracer, scope=SCOPE)
        self._db_system = db_system

    def record(
        self, messages: Sequence[MessageSpan], *, write_start_ns: int, write_end_ns: int, error: str | None
    ) -> None:
        done = time.time_ns()
        db_attributes: dict[str, Any] = {
            "db.system": self._db_system,
            "db.operation": "apply admitted batch",
            "shinchoku.batch_size": len(messages),
        }
        events: tuple[Event, ...] = ()
        if error is not None:
            process_status = Status(StatusCode.ERROR, "database write failed; message nak'ed for redelivery")
            write_status = Status(StatusCode.ERROR, error)
            events = (Event("exception", _exception_attributes(error), timestamp=write_end_ns),)
        else:
            process_status = write_status = _UNSET
        tracer = self._tracer
        for m in messages:
            span = tracer.open(m.name, m.headers, m.attributes, m.start_ns)
            if not span.recording:
                continue  # not sampled: what the span processors would have dropped anyway
            tracer.child(
                span,
                "reporting db write",
                write_start_ns,
                write_end_ns,
                db_attributes,
                kind=SpanKind.CLIENT,
                status=write_status,
                events=events,
            )
            span.status = process_status
            tracer.close(span, done)
        tracer.flush()


def _exception_attributes(error: str) -> dict[str, Any]:
    """`error` reads "Type: message" (what the writer reports of a database fault)."""
    kind, _, message = error.partition(": ")
    return {"exception.type": kind, "exception.message": message or kind}
