"""Everything ingest says about its batches: spans, metrics and fault logs, from the timings handed in.

One report is one trace: a `process` span per message (parent: the report's `traceparent`) with its catalog
lookup, store write and ACCEPTED/REJECTED publish as children, all built as finished spans by `BatchTracer`
once the timings are known. The handler and its roles only measure and call; nothing here changes what happens
to a message.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, Tracer

from contracts.catalog import Measure
from contracts.events import ReasonCode
from contracts.streams import CATALOG_MEASURE_GET
from ingest.delivery import Delivery, Fault, FaultKind, subject_agency
from ingest.domain import Admit, Duplicate, Reject, Report, clean
from ingest.metrics import IngestMetrics
from ingest.publishing import Published
from ingest.repository import StoredDecision
from ingest.tables import OUTCOME_ADMITTED, OUTCOME_DUPLICATE, OUTCOME_REJECTED
from ingest.tracing import BatchTracer

log = logging.getLogger(__name__)

_UNSET = Status()


class CatalogRequests(NamedTuple):
    """Measures the mirror lacks, each asked of the catalog inside the trace of the first message naming it."""

    #: measure id → (the asking message, the context of its `catalog lookup` span).
    asking: dict[str, tuple[Delivery, SpanContext | None]]
    #: measure id → the trace context the request carries.
    contexts: dict[str, Context]


class BatchObserver:
    def __init__(self, tracer: Tracer, metrics: IngestMetrics, *, db_system: str) -> None:
        self._tracer = BatchTracer(tracer)
        self._metrics = metrics
        self._db_attributes = {"db.system": db_system}

    # --- a message's `process` span ---

    def open(self, msg: Msg, *, seq: int, delivered: int, received_at: datetime) -> Delivery:
        """The delivery of `msg`, its `process` span started now."""
        subject = msg.subject
        span = self._tracer.open(
            f"{subject} process",
            msg.headers,
            {
                "messaging.system": "nats",
                "messaging.operation": "process",
                "messaging.destination.name": subject,
                "messaging.nats.stream_sequence": seq,
                "messaging.nats.delivered": delivered,
            },
        )
        return Delivery(msg, seq, delivered, subject, subject_agency(subject), msg.data, received_at, span)

    def close(self, d: Delivery) -> None:
        """End the message's `process` span, saying what became of it."""
        span = d.span
        if not span.recording:
            return
        attributes = span.attributes
        outcome = d.outcome
        if isinstance(outcome, StoredDecision):
            attributes["shinchoku.agency"] = d.agency
            attributes["shinchoku.outcome"] = outcome.outcome
            attributes["shinchoku.republished"] = True
            if outcome.event_id:
                attributes["shinchoku.event_id"] = outcome.event_id
            if outcome.reason:
                attributes["shinchoku.reason"] = outcome.reason
        elif outcome is not None:
            report = outcome.report
            if report is not None:
                attributes["shinchoku.event_id"] = report.event_id
                if report.measure_id is not None:
                    attributes["shinchoku.measure_id"] = report.measure_id
            elif isinstance(outcome, Reject) and outcome.event_id:
                attributes["shinchoku.event_id"] = outcome.event_id
            attributes["shinchoku.agency"] = d.agency
            if isinstance(outcome, Admit):
                attributes["shinchoku.outcome"] = OUTCOME_ADMITTED
            elif isinstance(outcome, Duplicate):
                attributes["shinchoku.outcome"] = OUTCOME_DUPLICATE
            else:
                attributes["shinchoku.outcome"] = OUTCOME_REJECTED
                attributes["shinchoku.reason"] = outcome.reason.value
        else:
            attributes["shinchoku.agency"] = d.agency
        if d.fault is not None:
            span.status = Status(StatusCode.ERROR, f"{d.fault.kind.value} unavailable: retried later")
        self._tracer.close(span)

    def flush(self) -> None:
        self._tracer.flush()

    def batch_done(self, deliveries: list[Delivery], started: float) -> None:
        for d in deliveries:
            self.close(d)
        self._tracer.flush()
        self._metrics.batch_size.observe(len(deliveries))
        self._metrics.batch_seconds.observe(time.perf_counter() - started)

    # --- the catalog ---

    def catalog_requests(
        self, reports: list[tuple[Delivery, Report]], cached: Callable[[str], tuple[bool, Measure | None]]
    ) -> CatalogRequests:
        """Which message's trace each request to the catalog joins (the first naming a measure the mirror lacks)."""
        asking: dict[str, tuple[Delivery, SpanContext | None]] = {}
        for d, report in reports:
            measure_id = report.event.measure_id
            if measure_id not in asking and not cached(measure_id)[0]:
                asking[measure_id] = (d, self._tracer.new_child(d.span))
        contexts = {
            m: trace.set_span_in_context(NonRecordingSpan(ctx)) for m, (_, ctx) in asking.items() if ctx is not None
        }
        return CatalogRequests(asking, contexts)

    def looked_up(
        self, reports: list[tuple[Delivery, Report]], requests: CatalogRequests, started_ns: int, ended_ns: int
    ) -> None:
        """A `catalog lookup` span per report: the request itself for the asking message, the mirror's answer else."""
        self._metrics.phase_seconds.labels("catalog").observe((ended_ns - started_ns) / 1e9)
        tracer = self._tracer
        asking = requests.asking
        shared_attributes: dict[str, dict[str, Any]] = {}  # one (read-only) dict per measure, shared by its spans
        for d, report in reports:
            measure_id = report.event.measure_id
            asked = asking.get(measure_id)
            if asked is not None and asked[0] is d:  # the message whose trace the catalog request joined
                attributes = {
                    "messaging.system": "nats",
                    "messaging.operation": "request",
                    "messaging.destination.name": CATALOG_MEASURE_GET,
                    "peer.service": "catalog",
                    "shinchoku.measure_id": measure_id,
                }
                tracer.child(
                    d.span, "catalog lookup", started_ns, ended_ns, attributes, kind=SpanKind.CLIENT, context=asked[1]
                )
            elif d.span.recording:
                shared = shared_attributes.get(measure_id)
                if shared is None:
                    # The mirror is the catalog's own KV bucket: the catalog is the peer either way.
                    shared = shared_attributes[measure_id] = {
                        "shinchoku.measure_id": measure_id,
                        "shinchoku.catalog.source": "catalog" if asked is not None else "mirror",
                        "peer.service": "catalog",
                    }
                tracer.child(d.span, "catalog lookup", started_ns, ended_ns, shared)

    # --- the store ---

    def read_records(self, seconds: float) -> None:
        self._metrics.phase_seconds.labels("read").observe(seconds)

    def stored(self, deliveries: list[Delivery], started_ns: int, ended_ns: int) -> None:
        self._metrics.phase_seconds.labels("store").observe((ended_ns - started_ns) / 1e9)
        tracer = self._tracer
        attributes = self._db_attributes
        for d in deliveries:
            tracer.child(d.span, "ingest store write", started_ns, ended_ns, attributes)

    def store_failed(self, deliveries: list[Delivery], fault: Fault) -> None:
        log.warning(
            "%s unavailable for %d message(s), put back for later: %s", fault.kind, len(deliveries), fault.detail
        )

    # --- publishing ---

    def publish_context(self, d: Delivery) -> SpanContext | None:
        """The context of the message's publish span, to send along before the span is recorded."""
        return self._tracer.new_child(d.span)

    def published(self, results: list[Published], seconds: float) -> None:
        if not results:
            return
        self._metrics.phase_seconds.labels("publish").observe(seconds)
        tracer = self._tracer
        for r in results:
            status = _UNSET
            batch_attributes: dict[str, Any] = {"messaging.nats.batch_size": len(r.sent)}
            if r.failure is not None:
                status = Status(StatusCode.ERROR, clean(r.failure, 200))
            elif r.fell_back:
                batch_attributes["messaging.nats.republished"] = True
            name = f"{r.stream} publish"
            for d, span, subject in r.sent:
                if span is not None:
                    attributes = {
                        "messaging.system": "nats",
                        "messaging.operation": "publish",
                        "messaging.destination.name": subject,
                        **batch_attributes,
                    }
                    tracer.child(
                        d.span,
                        name,
                        r.started_ns,
                        r.ended_ns,
                        attributes,
                        kind=SpanKind.PRODUCER,
                        context=span,
                        status=status,
                    )

    # --- settling ---

    def settled(self, acked: list[Delivery]) -> None:
        """Outcome counters, once per batch (a redelivery answered from the store was counted the first time)."""
        admitted: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        rejected: Counter[tuple[str, str]] = Counter()
        for d in acked:
            decision = d.outcome
            if isinstance(decision, Admit):
                admitted[d.agency] += 1
            elif isinstance(decision, Duplicate):
                duplicates[d.agency] += 1
            elif isinstance(decision, Reject):
                rejected[d.agency, decision.reason.value] += 1
        for agency, n in admitted.items():
            self._metrics.admitted.labels(agency).inc(n)
        for agency, n in duplicates.items():
            self._metrics.duplicates.labels(agency).inc(n)
        for (agency, reason), n in rejected.items():
            self._metrics.rejected.labels(agency, reason).inc(n)

    def retried(self, fault: Fault) -> None:
        self._metrics.transient.labels(fault.kind.value).inc()

    def dead_lettered(self, d: Delivery) -> None:
        self._metrics.rejected.labels(d.agency, ReasonCode.undeliverable.value).inc()
        d.span.attributes["shinchoku.reason"] = ReasonCode.undeliverable.value

    def log_faults(self, deliveries: list[Delivery]) -> None:
        """One warning per fault kind and batch (database faults are logged once where they happen)."""
        faults: dict[FaultKind, list[Delivery]] = {}
        for d in deliveries:
            if d.fault is not None and d.fault.kind is not FaultKind.database:
                faults.setdefault(d.fault.kind, []).append(d)
        for kind, hit in faults.items():
            first = hit[0]
            assert first.fault is not None
            log.warning(
                "%s unavailable for %d message(s) (STATUS-%d…), put back for later: %s",
                kind,
                len(hit),
                first.seq,
                first.fault.detail,
            )
