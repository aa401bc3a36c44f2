"""Admitting a batch of STATUS messages: decide all, store all in one transaction, publish all, then ack.

The order is what makes ingest exactly-once:

1. A message whose decision is already stored (a redelivery after a crash or a lost ack) is not decided
   again: its stored decision is published again, and the broker drops the copy by `Nats-Msg-Id`
   (event_id on ACCEPTED, `STATUS-<seq>` on REJECTED) inside the streams' 15-minute duplicate window.
2. Decisions and idempotency records are committed together before anything is published.
3. A message is acked only after its commit and its PubAck.

A fault that is not the message's (database, NATS, catalog unavailable) puts the message back with
`nak(delay)`, growing with each delivery; the last permitted delivery dead-letters it on REJECTED as
`undeliverable` instead of letting the broker drop it. Bad input is never retried: it is rejected.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, Tracer

from contracts.events import AdmittedEvent, ReasonCode, Rejection, StatusEvent
from contracts.streams import (
    ACCEPTED_STREAM,
    CATALOG_MEASURE_GET,
    MSG_ID_HEADER,
    REJECTED_STREAM,
    STATUS_STREAM,
    accepted_subject,
    rejected_subject,
)
from ingest import repository
from ingest.domain import (
    Admit,
    Decision,
    Duplicate,
    LateAdmission,
    NewClaim,
    PriorRecord,
    Reject,
    Report,
    admitted_json,
    claims_event_id,
    clean,
    decide,
    read_report,
    readable_event_id,
)
from ingest.lookup import MeasureMirror
from ingest.metrics import IngestMetrics
from ingest.repository import (
    OUTCOME_ADMITTED,
    OUTCOME_DUPLICATE,
    OUTCOME_REJECTED,
    DecisionRecord,
    StoredDecision,
    WriteConflict,
)
from ingest.tracing import BatchTracer, MessageSpan
from shinchoku_runtime.batchpublish import BatchAck, OutMessage, ack_all, publish_atomic
from shinchoku_runtime.propagation import inject_span_context

log = logging.getLogger(__name__)

#: Attempts at storing a batch before its messages are retried later: the first assumes its event ids are new,
#: the others decide with the stored records (a resend, or a race with another replica).
WRITE_ATTEMPTS = 4

#: Tries at recording a message the broker gave up on (waiting 2, 4 … 32 s in between: about a minute).
ADVISORY_ATTEMPTS = 6

#: The longest the consumer pauses between batches that all failed (`BatchHandler._pause_if_failing`).
PAUSE_MAX = 10.0

FAULT_DATABASE = "database"
FAULT_NATS = "nats"
FAULT_CATALOG = "catalog"
FAULT_CONFLICT = "conflict"
FAULT_ERROR = "error"


@dataclass(frozen=True)
class HandlerOptions:
    max_deliver: int = 30
    retry_delay_max: float = 60.0
    publish_timeout: float = 10.0
    #: Batches waiting for their PubAcks while the next one is decided.
    max_inflight: int = 4


@dataclass(slots=True)
class Delivery:
    """One STATUS message on its way through a batch."""

    msg: Msg
    seq: int
    delivered: int
    subject: str
    #: The agency of the subject (the one NATS authenticated), or `unknown` for an alien subject.
    agency: str
    data: bytes
    received_at: datetime
    span: MessageSpan
    read: Report | Reject | None = None
    decision: Decision | None = None
    admitted_at: datetime | None = None
    stored: StoredDecision | None = None
    fault: str | None = None
    fault_detail: str = ""
    settled: bool = False
    out_subject: str = ""
    acked: bool = False

    @property
    def rejection_id(self) -> str:
        return f"STATUS-{self.seq}"

    @property
    def trace_id(self) -> str | None:
        return self.span.trace_id


#: The atomic batches being published, each with the messages (and their publish spans) it carries.
Publishing = list[tuple["asyncio.Future[BatchAck]", list[tuple[Delivery, SpanContext | None]], str, int]]


_UNSET = Status()


def retry_delay(delivered: int, cap: float) -> float:
    """1 s, 2 s, 4 s … up to the cap: a long outage costs few deliveries."""
    return float(min(cap, 2 ** max(0, delivered - 1)))


def delivery_info(msg: Msg) -> tuple[int, int, datetime]:
    """(stream sequence, deliveries so far, time stored) of a JetStream message, from its reply subject.

    The same fields as `msg.metadata`, read without building its two frozen dataclasses (a few µs a
    message). The reply is `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`
    or, with a domain and account hash, the 12-token form; anything else goes to nats-py, which raises.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[4]), datetime.fromtimestamp(int(tokens[7]) / 1e9, UTC)
    meta = msg.metadata
    return meta.sequence.stream, meta.num_delivered, meta.timestamp


def _now() -> datetime:
    return datetime.now(UTC)


class BatchHandler:
    """Decides, stores, publishes and acknowledges batches of STATUS messages."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        nc: Client,
        mirror: MeasureMirror,
        metrics: IngestMetrics,
        options: HandlerOptions,
        tracer: Tracer | None = None,
    ) -> None:
        self._engine = engine
        self._nc = nc
        self._js = nc.jetstream()
        self._mirror = mirror
        self._metrics = metrics
        self._options = options
        self._tracer = BatchTracer(tracer or trace.get_tracer(__name__))
        self._db_attributes = {"db.system": engine.dialect.name}
        self._consecutive_faults = 0
        #: When writes to the store started failing (None while they succeed): read by /healthz.
        self.store_failing_since: float | None = None
        #: Streams whose last publish got no PubAck or a refusal (a full disk, a stream limit, no quorum):
        #: stream → (first failure, latest failure, what went wrong), dropped at the stream's next PubAck.
        self.publish_failures: dict[str, tuple[float, float, str]] = {}
        self._slots = asyncio.Semaphore(options.max_inflight)
        self._finishing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Nothing to prepare: each atomic batch awaits its own PubAck (kept for the composition root)."""

    # --- entry point ---

    async def handle(self, msgs: Sequence[Msg]) -> None:
        """Decide and store one batch, start publishing it, and return: the PubAcks and acks finish behind.

        Never raises: what cannot be done now is put back for later. Up to `max_inflight` batches wait for
        their PubAcks at once, so the broker's write latency overlaps with deciding the next batch.
        """
        started = time.perf_counter()
        deliveries = [self._open(m) for m in msgs]
        await self._slots.acquire()
        handed_over = False
        try:
            try:
                await self._prepare(deliveries, recheck=False)
                waiting = self._start_publish(deliveries)
            except Exception:
                log.exception("unexpected error in a batch of %d; deciding its messages one by one", len(deliveries))
                await self._one_by_one(deliveries)
                return
            task = asyncio.create_task(self._finish(deliveries, waiting, started))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)
            handed_over = True
        finally:
            if not handed_over:
                self._close_batch(deliveries, started)
        await self._pause_if_failing(deliveries)

    async def drain(self) -> None:
        """Wait for the batches still finishing (before the connection closes)."""
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    async def _one_by_one(self, deliveries: list[Delivery]) -> None:
        """After an unexpected error: each message alone, so only the one at fault is retried later."""
        for d in deliveries:
            if d.settled:
                continue
            self._reset(d)
            try:
                await self._prepare([d], recheck=True)
                waiting = self._start_publish([d])
                await self._await_pub_acks(waiting)
            except Exception as e:
                log.exception("message STATUS-%d cannot be processed now", d.seq)
                self._fault(d, FAULT_ERROR, f"{type(e).__name__}: {e}")
            await self._settle_all([d])
        self._count(deliveries)

    async def _finish(self, deliveries: list[Delivery], waiting: Publishing, started: float) -> None:
        try:
            await self._await_pub_acks(waiting)
            await self._settle_all(deliveries)
            self._count(deliveries)
            self._log_faults(deliveries)
        except Exception:  # acks not sent: ack_wait brings the messages back, answered from the store
            log.exception("could not finish a batch of %d", len(deliveries))
        finally:
            self._close_batch(deliveries, started)

    @staticmethod
    def _log_faults(deliveries: list[Delivery]) -> None:
        faults: dict[str, list[Delivery]] = {}
        for d in deliveries:
            if d.fault and d.fault != FAULT_DATABASE:  # database faults are logged once where they happen
                faults.setdefault(d.fault, []).append(d)
        for fault, hit in faults.items():
            log.warning(
                "%s unavailable for %d message(s) (STATUS-%d…), put back for later: %s",
                fault,
                len(hit),
                hit[0].seq,
                hit[0].fault_detail,
            )

    def _close_batch(self, deliveries: list[Delivery], started: float) -> None:
        for d in deliveries:
            self._close(d)
        self._tracer.flush()
        self._metrics.batch_size.observe(len(deliveries))
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        self._slots.release()

    async def _pause_if_failing(self, deliveries: list[Delivery]) -> None:
        """When nothing in a batch could be done, slow the consumer down instead of spinning through the outage."""
        if deliveries and all(d.fault for d in deliveries):
            self._consecutive_faults += 1
            await asyncio.sleep(min(PAUSE_MAX, 0.25 * 2 ** min(self._consecutive_faults, 6)))
        else:
            self._consecutive_faults = 0

    # --- the unit of work ---

    async def _prepare(self, deliveries: list[Delivery], *, recheck: bool) -> None:
        """Read, decide and store every message of the batch (or mark why it must wait)."""
        for d in deliveries:
            d.read = read_report(d.subject, d.data)
        for attempt in range(WRITE_ATTEMPTS):
            outcome = await self._decide_and_store(deliveries, recheck=recheck or attempt > 0)
            if outcome != "conflict":
                return
            if attempt > 0 or recheck:
                log.info("batch raced with another replica (attempt %d); deciding again from the store", attempt + 1)
        for d in deliveries:
            if d.stored is None and not d.fault:
                self._fault(d, FAULT_CONFLICT, "kept racing with another replica")

    async def _decide_and_store(self, deliveries: list[Delivery], *, recheck: bool) -> str:
        # 1. What is stored already (a redelivery, or another replica's work) is answered from the store.
        for d in deliveries:
            d.decision = None
            d.admitted_at = None
        maybe_stored = [d.seq for d in deliveries if recheck or d.delivered > 1]
        try:
            stored = await asyncio.to_thread(repository.load_stored, self._engine, seqs=maybe_stored)
        except sa.exc.SQLAlchemyError as e:
            self._fault_all(deliveries, FAULT_DATABASE, e)
            return "fault"
        for d in deliveries:
            d.stored = stored.get(d.seq)
        todo = [d for d in deliveries if d.stored is None and not d.fault]

        # 2. The catalog, for every well-formed report.
        reports = [(d, d.read) for d in todo if isinstance(d.read, Report)]
        lookup_started = time.time_ns()
        # A measure the mirror lacks is asked of the catalog inside the first asking message's trace.
        asking: dict[str, tuple[Delivery, SpanContext | None]] = {}
        for d, report in reports:
            measure_id = report.event.measure_id
            if measure_id not in asking and not self._mirror.cached(measure_id)[0]:
                asking[measure_id] = (d, self._tracer.new_child(d.span))
        contexts = {
            m: trace.set_span_in_context(NonRecordingSpan(ctx)) for m, (_, ctx) in asking.items() if ctx is not None
        }
        found, unavailable = await self._mirror.lookup_many((r.event.measure_id for _, r in reports), contexts)
        lookup_ended = time.time_ns()
        self._metrics.phase_seconds.labels("catalog").observe((lookup_ended - lookup_started) / 1e9)
        tracer = self._tracer
        lookup_attributes: dict[str, dict[str, Any]] = {}  # one (read-only) dict per measure, shared by its spans
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
                    d.span,
                    "catalog lookup",
                    lookup_started,
                    lookup_ended,
                    attributes,
                    kind=SpanKind.CLIENT,
                    context=asked[1],
                )
            elif d.span.recording:
                shared = lookup_attributes.get(measure_id)
                if shared is None:
                    source = "catalog" if asked is not None else "mirror"
                    # The mirror is the catalog's own KV bucket: the catalog is the peer either way.
                    shared = {
                        "shinchoku.measure_id": measure_id,
                        "shinchoku.catalog.source": source,
                        "peer.service": "catalog",
                    }
                    lookup_attributes[measure_id] = shared
                tracer.child(d.span, "catalog lookup", lookup_started, lookup_ended, shared)
            if measure_id in unavailable:
                self._fault(d, FAULT_CATALOG, unavailable[measure_id])

        # 3. What was recorded before for these event ids. Optimistically nothing, on the first attempt: a new
        # event id is the common case, and the claim insert (unique on event_id) is the check that counts. A
        # batch holding an id claimed before (a resend, a redelivery, another replica's work) fails that insert
        # as a whole and is decided again with the stored records (`recheck`). Only a decision that claims
        # nothing could come out differently without them (e.g. an admitted event resent after the catalog
        # dropped a target it reports on: a duplicate, not malformed): those ids are read at once.
        decidable = [d for d in todo if not d.fault]
        read_started = time.perf_counter()
        reported = [d.read.event_id for d in decidable if isinstance(d.read, Report)]
        try:
            priors = await self._load_priors(reported) if recheck else {}
            rows, claims, late = self._decide_all(decidable, found, dict(priors))
            if not recheck:
                unclaimed = self._unclaimed_reports(decidable)
                if unclaimed:
                    priors = await self._load_priors(unclaimed)
                    if priors:
                        rows, claims, late = self._decide_all(decidable, found, dict(priors))
        except sa.exc.SQLAlchemyError as e:
            self._fault_all(decidable, FAULT_DATABASE, e)
            return "fault"
        self._metrics.phase_seconds.labels("read").observe(time.perf_counter() - read_started)

        # 5. One transaction for the whole batch.
        db_started = time.time_ns()
        try:
            await asyncio.to_thread(
                repository.write_batch,
                self._engine,
                decisions=rows,
                claims=list(claims.values()),
                late_admissions=late,
            )
        except WriteConflict:
            return "conflict"
        except sa.exc.SQLAlchemyError as e:
            self._fault_all(decidable, FAULT_DATABASE, e)
            return "fault"
        db_ended = time.time_ns()
        self._metrics.phase_seconds.labels("store").observe((db_ended - db_started) / 1e9)
        self.store_failing_since = None
        for d in decidable:
            tracer.child(d.span, "ingest store write", db_started, db_ended, self._db_attributes)
        return "stored"

    async def _load_priors(self, event_ids: list[str]) -> dict[str, PriorRecord]:
        if not event_ids:
            return {}
        return await asyncio.to_thread(repository.load_priors, self._engine, event_ids=event_ids)

    def _decide_all(
        self, decidable: list[Delivery], found: dict[str, Any], priors: dict[str, PriorRecord]
    ) -> tuple[list[DecisionRecord], dict[str, NewClaim], list[LateAdmission]]:
        """Decide in stream order, each decision seeing the ones before it in the batch (`priors` grows)."""
        rows: list[DecisionRecord] = []
        claims: dict[str, NewClaim] = {}
        late: list[LateAdmission] = []
        decided_at = _now()
        for d in decidable:
            decision, previous = self._decide(d, found, priors)
            d.decision = decision
            d.admitted_at = decided_at if isinstance(decision, Admit) else None
            rows.append(self._row(d))
            self._record_claim(d, decision, previous, priors, claims, late)
        return rows, claims, late

    @staticmethod
    def _unclaimed_reports(decidable: list[Delivery]) -> list[str]:
        """Event ids of well-formed reports whose decision (made without stored records) claims nothing."""
        return [
            d.decision.report.event_id
            for d in decidable
            if isinstance(d.decision, Reject)
            and d.decision.report is not None
            and not claims_event_id(d.decision, None)
        ]

    def _decide(
        self, d: Delivery, found: dict[str, Any], priors: dict[str, PriorRecord]
    ) -> tuple[Decision, PriorRecord | None]:
        if isinstance(d.read, Reject) or d.read is None:
            assert d.read is not None
            return d.read, None
        report = d.read
        previous = priors.get(report.event_id)
        decision = decide(report, now=d.received_at, measure=found.get(report.event.measure_id), previous=previous)
        return decision, previous

    @staticmethod
    def _record_claim(
        d: Delivery,
        decision: Decision,
        previous: PriorRecord | None,
        priors: dict[str, PriorRecord],
        claims: dict[str, NewClaim],
        late: list[LateAdmission],
    ) -> None:
        """Keep the idempotency records of the batch, and let later messages in it see them."""
        if isinstance(decision, Duplicate) or (isinstance(decision, Reject) and decision.report is None):
            return
        report = decision.report
        assert report is not None
        event_id = report.event_id
        admitted = isinstance(decision, Admit)
        if claims_event_id(decision, previous):
            claims[event_id] = NewClaim(
                event_id=event_id,
                content_hash=report.content_hash,
                agency=report.subject_agency,
                first_seq=d.seq,
                admitted_seq=d.seq if admitted else None,
            )
            priors[event_id] = PriorRecord(content_hash=report.content_hash, admitted=admitted, agency=d.agency)
        elif admitted and previous is not None and not previous.admitted:
            pending = claims.get(event_id)
            if pending is not None:
                claims[event_id] = NewClaim(
                    event_id=event_id,
                    content_hash=pending.content_hash,
                    agency=pending.agency,
                    first_seq=pending.first_seq,
                    admitted_seq=d.seq,
                )
            else:
                late.append(LateAdmission(event_id=event_id, admitted_seq=d.seq))
            priors[event_id] = PriorRecord(content_hash=previous.content_hash, admitted=True, agency=previous.agency)

    def _row(self, d: Delivery) -> DecisionRecord:
        decision = d.decision
        report = decision.report if decision is not None else None
        row: dict[str, Any] = {
            "stream_seq": d.seq,
            "event_id": None,
            "outcome": OUTCOME_ADMITTED,
            "reason": None,
            "message": None,
            "subject": d.subject,
            "agency": d.agency,
            "measure_id": None,
            "received_at": d.received_at,
            "admitted_at": d.admitted_at,
            "trace_id": d.trace_id,
            "content_hash": None,
            "rejection_id": None,
            "payload": None,
        }
        if report is not None:
            row["event_id"] = report.event_id
            row["measure_id"] = report.event.measure_id
            row["content_hash"] = report.content_hash
        if isinstance(decision, Duplicate):
            row["outcome"] = OUTCOME_DUPLICATE
        elif isinstance(decision, Reject):
            row["outcome"] = OUTCOME_REJECTED
            row["reason"] = decision.reason.value
            row["message"] = decision.message
            row["event_id"] = row["event_id"] or decision.event_id
            row["rejection_id"] = d.rejection_id
            row["payload"] = d.data
        return DecisionRecord(**row)

    # --- publishing ---

    def _outgoing(self, d: Delivery) -> tuple[str, bytes, str, str] | None:
        """(subject, payload, stream, Nats-Msg-Id) of what this message publishes, None for a duplicate."""
        if d.stored is not None:
            return self._outgoing_stored(d, d.stored)
        decision = d.decision
        if isinstance(decision, Admit):
            assert d.admitted_at is not None
            report = decision.report
            event = report.event
            # Built from validated parts: no need to validate them again.
            subject = accepted_subject(event.agency, event.measure_id)
            return subject, admitted_json(report, d.admitted_at, d.subject), ACCEPTED_STREAM.name, report.event_id
        if isinstance(decision, Reject):
            rejection = Rejection(
                rejection_id=d.rejection_id,
                event_id=decision.event_id,
                agency=d.agency,
                subject=d.subject,
                reason=decision.reason,
                message=decision.message,
                payload_b64=base64.b64encode(d.data).decode(),
                received_at=d.received_at,
            )
            return self._rejection_out(d, rejection)
        return None

    def _outgoing_stored(self, d: Delivery, stored: StoredDecision) -> tuple[str, bytes, str, str] | None:
        if stored.outcome == OUTCOME_ADMITTED:
            event = StatusEvent.model_validate_json(d.data, strict=True)
            assert stored.admitted_at is not None
            body = AdmittedEvent(event=event, admitted_at=stored.admitted_at, subject=stored.subject)
            subject = accepted_subject(event.agency, event.measure_id)
            return subject, body.model_dump_json().encode(), ACCEPTED_STREAM.name, str(event.event_id)
        if stored.outcome == OUTCOME_REJECTED:
            rejection = Rejection(
                rejection_id=stored.rejection_id or d.rejection_id,
                event_id=stored.event_id,
                agency=stored.agency,
                subject=stored.subject,
                reason=ReasonCode(stored.reason or ReasonCode.malformed),
                message=stored.message or "",
                payload_b64=base64.b64encode(d.data).decode(),
                received_at=stored.received_at,
            )
            return self._rejection_out(d, rejection)
        return None

    @staticmethod
    def _rejection_out(d: Delivery, rejection: Rejection) -> tuple[str, bytes, str, str]:
        return (
            rejected_subject(d.agency),
            rejection.model_dump_json().encode(),
            REJECTED_STREAM.name,
            rejection.rejection_id,
        )

    def _start_publish(self, deliveries: list[Delivery]) -> Publishing:
        """Start publishing the batch: its ACCEPTED decisions as one atomic batch, its REJECTED ones as another.

        With `sync_interval: always` each stored write is an fsync: an atomic batch is one write and one
        PubAck for all its messages. A batch holding a decision the stream already has (a redelivery whose
        earlier publish was stored) is refused whole by the broker and republished message by message;
        the duplicate window drops the copies.
        """
        outgoing: dict[str, tuple[list[OutMessage], list[tuple[Delivery, SpanContext | None]]]] = {}
        tracer = self._tracer
        for d in deliveries:
            if d.fault:
                continue
            out = self._outgoing(d)
            if out is None:
                continue
            subject, payload, stream, msg_id = out
            span = tracer.new_child(d.span)
            headers = {MSG_ID_HEADER: msg_id}
            inject_span_context(headers, span or d.span.context)
            messages, owners = outgoing.setdefault(stream, ([], []))
            messages.append(OutMessage(subject, payload, headers))
            d.out_subject = subject
            owners.append((d, span))
        timeout = self._options.publish_timeout
        started = time.time_ns()
        return [
            (
                asyncio.ensure_future(publish_atomic(self._nc, stream, messages, timeout=timeout)),
                owners,
                stream,
                started,
            )
            for stream, (messages, owners) in outgoing.items()
        ]

    def publishing_problems(self, *, now: float | None = None) -> dict[str, str]:
        """The streams ingest cannot write to now, each with what went wrong and for how long (for /healthz).

        A failure counts until the stream's next PubAck, or until no message has been retried on it for
        longer than a retry takes at most (the messages that failed were all put back and come back sooner
        while the outage lasts; a failure older than that is history, not the present).
        """
        now = time.monotonic() if now is None else now
        horizon = self._options.retry_delay_max + PAUSE_MAX + self._options.publish_timeout
        return {
            stream: f"{detail} (failing for {now - first:.0f} s)"
            for stream, (first, last, detail) in sorted(self.publish_failures.items())
            if now - last <= horizon
        }

    async def _await_pub_acks(self, publishing: Publishing) -> None:
        """Wait for each batch's PubAck; a missing or refused one is a NATS fault for every message of it."""
        if not publishing:
            return
        started = time.perf_counter()
        await asyncio.wait([task for task, _, _, _ in publishing])
        ended = time.time_ns()
        self._metrics.phase_seconds.labels("publish").observe(time.perf_counter() - started)
        tracer = self._tracer
        for task, owners, stream, publish_started in publishing:
            error = task.exception()
            status = _UNSET
            batch_attributes: dict[str, Any] = {"messaging.nats.batch_size": len(owners)}
            if error is not None:
                detail = "no PubAck (timeout)" if isinstance(error, NatsTimeoutError) else f"publish failed: {error!r}"
                status = Status(StatusCode.ERROR, clean(detail, 200))
                for d, _span in owners:
                    self._fault(d, FAULT_NATS, detail)
                now = time.monotonic()
                first = self.publish_failures.get(stream, (now,))[0]
                self.publish_failures[stream] = (first, now, clean(detail, 200))
            else:
                self.publish_failures.pop(stream, None)
                if task.result().fell_back:
                    batch_attributes["messaging.nats.republished"] = True
            name = f"{stream} publish"
            for d, span in owners:
                if span is not None:
                    attributes = {
                        "messaging.system": "nats",
                        "messaging.operation": "publish",
                        "messaging.destination.name": d.out_subject,
                        **batch_attributes,
                    }
                    tracer.child(
                        d.span,
                        name,
                        publish_started,
                        ended,
                        attributes,
                        kind=SpanKind.PRODUCER,
                        context=span,
                        status=status,
                    )

    # --- settling each message ---

    async def _settle_all(self, deliveries: list[Delivery]) -> None:
        """Put back what must wait, then acknowledge all the rest at once."""
        done: list[Delivery] = []
        for d in deliveries:
            if d.settled:
                continue
            if d.fault:
                await self._retry_later(d)
            else:
                done.append(d)
        if not done:
            return
        try:
            await ack_all(self._nc, [d.msg for d in done])
        except Exception as e:  # the acks will be lost; the redeliveries are answered from the store
            log.warning("could not ack %d messages (STATUS-%d…): %s", len(done), done[0].seq, e)
        for d in done:
            d.settled = True
            d.acked = True

    def _count(self, deliveries: list[Delivery]) -> None:
        """Outcome counters, once per batch (a redelivery answered from the store was counted the first time)."""
        admitted: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        rejected: Counter[tuple[str, str]] = Counter()
        for d in deliveries:
            if not d.acked or d.stored is not None:
                continue
            decision = d.decision
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

    async def _retry_later(self, d: Delivery) -> None:
        self._metrics.transient.labels(d.fault or FAULT_ERROR).inc()
        d.settled = True
        if d.delivered >= self._options.max_deliver:
            await self._dead_letter(d, f"{d.fault} unavailable: {clean(d.fault_detail, 200)}")
            return
        delay = retry_delay(d.delivered, self._options.retry_delay_max)
        # One warning per batch is logged where the fault is seen; this is the per-message detail.
        log.debug(
            "STATUS-%d put back for %.1fs (delivery %d of %d): %s unavailable: %s",
            d.seq,
            delay,
            d.delivered,
            self._options.max_deliver,
            d.fault,
            d.fault_detail,
        )
        try:
            await d.msg.nak(delay=delay)
        except Exception as e:  # without the nak, ack_wait brings it back all the same
            log.warning("could not nak STATUS-%d: %s", d.seq, e)

    async def on_max_deliveries(self, advisory: bytes) -> None:
        """The broker gave up on a STATUS message: `max_deliver` deliveries and no ack, because each replica that
        held it stopped or hung before deciding (a message that fails otherwise is dead-lettered on its last
        delivery by `_retry_later`). Record it as `undeliverable` so that the ministry learns it was not
        admitted; the store's decision for its sequence makes this idempotent across replicas, which all get
        the advisory."""
        try:
            body = json.loads(advisory)
            seq, deliveries = int(body["stream_seq"]), int(body.get("deliveries", self._options.max_deliver))
        except (ValueError, TypeError, KeyError) as e:
            log.warning("unreadable max-deliveries advisory ignored: %s", clean(repr(advisory), 200), exc_info=e)
            return
        raw = None
        for attempt in range(ADVISORY_ATTEMPTS):  # the advisory comes only once: ride out a short outage
            if attempt:
                await asyncio.sleep(min(self._options.retry_delay_max, 2.0**attempt))
            try:
                if seq in await asyncio.to_thread(repository.load_stored, self._engine, seqs=[seq]):
                    return  # decided after all, or dead-lettered on its last delivery
                raw = await self._js.get_msg(STATUS_STREAM.name, seq)
                break
            except Exception as e:  # the store or NATS is away for a moment
                log.warning("max-deliveries advisory for STATUS-%d: %s (attempt %d)", seq, e, attempt + 1)
        if raw is None:
            log.error("STATUS-%d was given up by the broker and could not be recorded as undeliverable", seq)
            return
        msg = Msg(self._nc, subject=raw.subject or "", data=raw.data or b"", headers=raw.headers)
        stored_at = raw.time if raw.time is not None and raw.time.tzinfo is not None else _now()
        d = self._open(msg, seq=seq, delivered=deliveries, received_at=stored_at)
        try:
            await self._dead_letter(d, "each ingest process that held it stopped or hung before deciding it")
        finally:
            self._close(d)
            self._tracer.flush()

    async def _dead_letter(self, d: Delivery, why: str) -> None:
        """Publish an `undeliverable` rejection (saying `why`) so that the report is not silently lost: on its
        last delivery, or after the broker gave up on it."""
        message = (
            f"処理不能 (undeliverable): ingest could not process this message in {d.delivered} deliveries "
            f"({why}). It was NOT admitted: send the same report again (the same event_id is fine)"
        )
        event_id = readable_event_id(d.data)
        rejection = Rejection(
            rejection_id=d.rejection_id,
            event_id=event_id,
            agency=d.agency,
            subject=d.subject,
            reason=ReasonCode.undeliverable,
            message=message,
            payload_b64=base64.b64encode(d.data).decode(),
            received_at=d.received_at,
        )
        row: dict[str, Any] = {
            "stream_seq": d.seq,
            "event_id": event_id,
            "outcome": OUTCOME_REJECTED,
            "reason": ReasonCode.undeliverable.value,
            "message": message,
            "subject": d.subject,
            "agency": d.agency,
            "measure_id": None,
            "received_at": d.received_at,
            "admitted_at": None,
            "trace_id": d.trace_id,
            "content_hash": None,
            "rejection_id": d.rejection_id,
            "payload": d.data,
        }
        try:  # best effort: the database may be what is unavailable
            await asyncio.to_thread(
                repository.write_batch, self._engine, decisions=[DecisionRecord(**row)], claims=[], late_admissions=[]
            )
        except (sa.exc.SQLAlchemyError, WriteConflict) as e:
            log.warning("undeliverable STATUS-%d not recorded in the store: %s", d.seq, e)
        subject, payload, stream, msg_id = self._rejection_out(d, rejection)
        headers = {MSG_ID_HEADER: msg_id}
        inject_span_context(headers, d.span.context)
        try:
            await self._js.publish(
                subject, payload, stream=stream, headers=headers, timeout=self._options.publish_timeout
            )
        except Exception as e:
            # It stays in the STATUS stream (limits retention) for an operator to replay.
            log.error("STATUS-%d dead-lettering failed, message left in STATUS: %s", d.seq, e)
        else:
            self._metrics.rejected.labels(d.agency, ReasonCode.undeliverable.value).inc()
            d.span.attributes["shinchoku.reason"] = ReasonCode.undeliverable.value
            if not d.msg.reply:  # read back from the stream after the broker gave up on it: nothing to ack
                return
            try:
                await d.msg.ack()
            except Exception as e:  # max_deliver is reached: the broker will not deliver it again anyway
                log.warning("could not ack dead-lettered STATUS-%d: %s", d.seq, e)

    # --- bookkeeping ---

    def _open(
        self, msg: Msg, *, seq: int | None = None, delivered: int = 0, received_at: datetime | None = None
    ) -> Delivery:
        if seq is None or received_at is None:
            seq, delivered, received_at = delivery_info(msg)
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
        parts = subject.split(".", 2)
        return Delivery(
            msg=msg,
            seq=seq,
            delivered=delivered,
            subject=subject,
            agency=parts[1] if len(parts) > 1 and parts[1] else "unknown",
            data=msg.data,
            received_at=received_at,
            span=span,
        )

    @staticmethod
    def _reset(d: Delivery) -> None:
        d.read = d.decision = d.stored = None
        d.admitted_at = None
        d.fault = None
        d.fault_detail = ""

    @staticmethod
    def _fault(d: Delivery, fault: str, detail: str) -> None:
        if d.fault is None:
            d.fault = fault
            d.fault_detail = detail

    def _fault_all(self, deliveries: list[Delivery], fault: str, error: BaseException) -> None:
        detail = clean(f"{type(error).__name__}: {error}".split("\n[SQL:")[0], 300)
        log.warning("%s unavailable for %d message(s), put back for later: %s", fault, len(deliveries), detail)
        if fault == FAULT_DATABASE and self.store_failing_since is None:
            self.store_failing_since = time.monotonic()
        for d in deliveries:
            self._fault(d, fault, detail)

    def _close(self, d: Delivery) -> None:
        span = d.span
        if not span.recording:
            return
        attributes = span.attributes
        decision = d.decision
        stored = d.stored
        report = None
        if isinstance(decision, Admit | Duplicate) or (isinstance(decision, Reject) and decision.report):
            report = decision.report
        if report is not None:
            attributes["shinchoku.event_id"] = report.event_id
            attributes["shinchoku.measure_id"] = report.event.measure_id
        elif isinstance(decision, Reject) and decision.event_id:
            attributes["shinchoku.event_id"] = decision.event_id
        attributes["shinchoku.agency"] = d.agency
        if isinstance(decision, Admit):
            attributes["shinchoku.outcome"] = OUTCOME_ADMITTED
        elif isinstance(decision, Duplicate):
            attributes["shinchoku.outcome"] = OUTCOME_DUPLICATE
        elif isinstance(decision, Reject):
            attributes["shinchoku.outcome"] = OUTCOME_REJECTED
            attributes["shinchoku.reason"] = decision.reason.value
        elif stored is not None:
            attributes["shinchoku.outcome"] = stored.outcome
            attributes["shinchoku.republished"] = True
            if stored.event_id:
                attributes["shinchoku.event_id"] = stored.event_id
            if stored.reason:
                attributes["shinchoku.reason"] = stored.reason
        if d.fault:
            span.status = Status(StatusCode.ERROR, f"{d.fault} unavailable: retried later")
        self._tracer.close(span)
