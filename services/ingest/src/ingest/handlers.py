"""Admitting a batch of STATUS messages: decide all, store all in one transaction, publish all, then ack.

The order is what makes ingest exactly-once:

1. A message whose decision is already stored (a redelivery after a crash or a lost ack) is not decided
   again: its stored decision is published again, and the broker drops the copy by `Nats-Msg-Id`
   (`{agency}:{event_id}` on ACCEPTED, `STATUS-<seq>` on REJECTED) inside the streams' duplicate window,
   which covers the consumer's whole retry horizon (`config.retry_horizon`).
2. Decisions and idempotency records are committed together before anything is published: the decision
   table is the outbox, and each PubAck's sequences are recorded with the next batch (`PubAcks`).
3. A message is acked only after its commit and its PubAck, or, on its last delivery, once its decision is
   committed: a stored decision is never dead-lettered; publishing it is then the outbox's (`reconciler`).

This module is the order itself. The decision is `domain.decide_batch` (pure), what the secretariat's
commands need from the world `commands`, what a decision becomes `records`, publishing `publishing`, acks,
retries and dead letters `settling`, and spans and metrics `observer`. A fault that is not the message's (database, NATS, catalog unavailable) puts the message back
for later; bad input is never retried: it is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import Tracer

from contracts.catalog import Measure
from ingest import outbox_repository, repository
from ingest.commands import CommandFacts, CommandWorld
from ingest.config import PAUSE_MAX
from ingest.delivery import Delivery, Fault, FaultKind
from ingest.domain import (
    BatchDecision,
    ClaimKey,
    Command,
    Duplicate,
    PriorRecord,
    Report,
    clean,
    decide_batch,
    read_message,
)
from ingest.health import WorkHealth
from ingest.lookup import MeasureMirror
from ingest.metrics import IngestMetrics
from ingest.observer import BatchObserver
from ingest.publishing import InFlight, Outbox, PubAcks, Publisher
from ingest.reconciler import Republisher
from ingest.records import decision_record, outgoing
from ingest.repository import StoredDecision, WriteConflict
from ingest.settling import Settler
from shinchoku_runtime.auth import TokenVerifier

log = logging.getLogger(__name__)

#: Attempts at storing a batch before its messages are retried later: the first assumes its event ids are new,
#: the others decide with the stored records (a resend, or a race with another replica).
WRITE_ATTEMPTS = 4


@dataclass(frozen=True)
class HandlerOptions:
    max_deliver: int = 30
    retry_delay_max: float = 60.0
    publish_timeout: float = 10.0
    #: Batches waiting for their PubAcks while the next one is decided.
    max_inflight: int = 4

    @property
    def failure_horizon(self) -> float:
        """The longest a failing message takes to come back (its retry delay, a pause, a publish timeout)."""
        return self.retry_delay_max + PAUSE_MAX + self.publish_timeout


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
        health: WorkHealth,
        pub_acks: PubAcks,
        republisher: Republisher,
        tracer: Tracer | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self._engine = engine
        self._mirror = mirror
        self._commands = CommandWorld(engine=engine, js=nc.jetstream(), verifier=verifier)
        self.health = health
        self._pub_acks = pub_acks
        self._republisher = republisher
        self._observer = BatchObserver(tracer or trace.get_tracer(__name__), metrics, db_system=engine.dialect.name)
        self._publisher = Publisher(nc, self.health, pub_acks, timeout=options.publish_timeout)
        self._settler = Settler(
            nc=nc,
            engine=engine,
            observer=self._observer,
            pub_acks=pub_acks,
            max_deliver=options.max_deliver,
            retry_delay_max=options.retry_delay_max,
            publish_timeout=options.publish_timeout,
        )
        self._consecutive_faults = 0
        self._slots = asyncio.Semaphore(options.max_inflight)
        self._finishing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Nothing to prepare: each atomic batch awaits its own PubAck (kept for the composition root)."""

    async def on_max_deliveries(self, advisory: bytes) -> None:
        """The broker gave up on a message no replica settled: record it as `undeliverable`."""
        await self._settler.on_max_deliveries(advisory)

    # --- a batch, from delivery to ack ---

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
                decided_at = await self._prepare(deliveries, recheck=False)
                in_flight = self._start_publish(deliveries, decided_at)
            except Exception:
                log.exception("unexpected error in a batch of %d; deciding its messages one by one", len(deliveries))
                await self._one_by_one(deliveries)
                return
            task = asyncio.create_task(self._finish(deliveries, in_flight, started))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)
            handed_over = True
        finally:
            if not handed_over:
                self._close_batch(deliveries, started)
        await self._pause_if_failing(deliveries)

    async def drain(self) -> None:
        """Wait for the batches still finishing (before the connection closes), and record their PubAcks."""
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        await self._pub_acks.stop()

    def _open(self, msg: Msg) -> Delivery:
        seq, delivered, received_at = delivery_info(msg)
        return self._observer.open(msg, seq=seq, delivered=delivered, received_at=received_at)

    async def _finish(self, deliveries: list[Delivery], in_flight: list[InFlight], started: float) -> None:
        try:
            await self._await_pub_acks(in_flight)
            self._pub_acks.flush_soon()
            self._observer.settled(await self._settler.settle(deliveries))
            self._observer.log_faults(deliveries)
        except Exception:  # acks not sent: ack_wait brings the messages back, answered from the store
            log.exception("could not finish a batch of %d", len(deliveries))
        finally:
            self._close_batch(deliveries, started)

    async def _one_by_one(self, deliveries: list[Delivery]) -> None:
        """After an unexpected error: each message alone, so only the one at fault is retried later."""
        acked: list[Delivery] = []
        for d in deliveries:
            d.forget()
            try:
                decided_at = await self._prepare([d], recheck=True)
                await self._await_pub_acks(self._start_publish([d], decided_at))
            except Exception as e:
                log.exception("message STATUS-%d cannot be processed now", d.seq)
                d.fail(Fault(FaultKind.error, f"{type(e).__name__}: {e}"))
            acked += await self._settler.settle([d])
        self._observer.settled(acked)

    def _close_batch(self, deliveries: list[Delivery], started: float) -> None:
        self._observer.batch_done(deliveries, started)
        self._slots.release()

    async def _pause_if_failing(self, deliveries: list[Delivery]) -> None:
        """When nothing in a batch could be done, slow the consumer down instead of spinning through the outage."""
        if deliveries and all(d.fault is not None for d in deliveries):
            self._consecutive_faults += 1
            await asyncio.sleep(min(PAUSE_MAX, 0.25 * 2 ** min(self._consecutive_faults, 6)))
        else:
            self._consecutive_faults = 0

    # --- the unit of work ---

    async def _prepare(self, deliveries: list[Delivery], *, recheck: bool) -> datetime:
        """Read, decide and store every message of the batch (or mark why it must wait); when it was decided."""
        for d in deliveries:
            d.read = read_message(d.subject, d.data)
        for attempt in range(WRITE_ATTEMPTS):
            decided_at = await self._decide_and_store(deliveries, recheck=recheck or attempt > 0)
            if decided_at is not None:
                return decided_at
            if attempt > 0 or recheck:
                log.info("batch raced with another replica (attempt %d); deciding again from the store", attempt + 1)
        raced = Fault(FaultKind.conflict, "kept racing with another replica")
        for d in deliveries:
            if not isinstance(d.outcome, StoredDecision):
                d.fail(raced)
        return _now()

    async def _decide_and_store(self, deliveries: list[Delivery], *, recheck: bool) -> datetime | None:
        """One attempt: when the batch's new decisions were made (and stored, or failed for a fault), or None
        when another replica stored part of the batch first (decide it again, from the store)."""
        # 1. What is stored already (a redelivery, or another replica's work) is answered from the store.
        for d in deliveries:
            if not isinstance(d.outcome, StoredDecision):
                d.outcome = None
        maybe_stored = [d.seq for d in deliveries if recheck or d.delivered > 1]
        try:
            stored = await asyncio.to_thread(repository.load_stored, self._engine, seqs=maybe_stored)
        except sa.exc.SQLAlchemyError as e:
            self._store_failed(deliveries, e)
            return _now()
        for d in deliveries:
            d.outcome = stored.get(d.seq)
            d.stored = d.outcome is not None
        todo = [d for d in deliveries if d.outcome is None and d.fault is None]

        # 2. The catalog, for every well-formed report.
        reports = [(d, d.read) for d in todo if isinstance(d.read, Report)]
        lookup_started = time.time_ns()
        requests = self._observer.catalog_requests(reports, self._mirror.cached)
        found, unavailable = await self._mirror.lookup_many((r.event.measure_id for _, r in reports), requests.contexts)
        self._observer.looked_up(reports, requests, lookup_started, time.time_ns())
        if unavailable:
            for d, report in reports:
                if report.event.measure_id in unavailable:
                    d.fail(Fault(FaultKind.catalog, unavailable[report.event.measure_id]))

        # 3. What was recorded before for these event ids. Optimistically nothing, on the first attempt: a new
        # event id is the common case, and the claim insert (unique on event_id and agency) is the check that
        # counts. A batch holding an id claimed before (a resend, a redelivery, another replica's work) fails
        # that insert as a whole and is decided again with the stored records (`recheck`). Only a decision
        # that claims nothing could come out differently without them: those ids are read at once. The
        # secretariat's commands also need who sent them, the reports they review and the closed quarters.
        read_started = time.perf_counter()
        try:
            facts = await self._commands.gather(todo)
            decidable = [d for d in todo if d.fault is None]
            reported = (
                [(d.read.subject_agency, d.read.event_id) for d in decidable if isinstance(d.read, Report | Command)]
                if recheck
                else []
            )
            priors = await self._load_priors(reported)
            batch = self._decide(decidable, found, priors, facts)
            if not recheck:
                unclaimed = batch.unclaimed_event_ids()
                if unclaimed and (priors := await self._load_priors(unclaimed)):
                    batch = self._decide(decidable, found, priors, facts)
        except sa.exc.SQLAlchemyError as e:
            self._store_failed([d for d in todo if d.fault is None], e)
            return _now()
        decided_at = _now()
        self._observer.read_records(time.perf_counter() - read_started)
        rows = []
        for d, decision in zip(decidable, batch.decisions, strict=True):
            d.outcome = decision
            rows.append(decision_record(d, decision, decided_at))

        # 4. One transaction for the whole batch (carrying the PubAcks of the batches before it).
        db_started = time.time_ns()
        async with self._pub_acks.write_lock:
            published = self._pub_acks.take()
            try:
                await asyncio.to_thread(
                    repository.write_batch,
                    self._engine,
                    decisions=rows,
                    claims=list(batch.claims.values()),
                    late_admissions=batch.late,
                    published=published,
                    closes=batch.closes,
                )
            except WriteConflict:
                self._pub_acks.put_back(published)
                return None
            except sa.exc.SQLAlchemyError as e:
                self._pub_acks.put_back(published)
                self._store_failed(decidable, e)
                return decided_at
        for d in decidable:
            d.stored = True
        self._observer.stored(decidable, db_started, time.time_ns())
        self.health.store_ok()
        resent = [(d.agency, d.outcome.report.event_id) for d in decidable if isinstance(d.outcome, Duplicate)]
        if resent:
            self._republish_if_unpublished(resent)
        return decided_at

    @staticmethod
    def _decide(
        decidable: list[Delivery],
        measures: dict[str, Measure | None],
        priors: dict[ClaimKey, PriorRecord],
        facts: CommandFacts,
    ) -> BatchDecision:
        return decide_batch(
            decidable,
            measures=measures,
            priors=priors,
            reports=facts.reports,
            closed=facts.closed,
            senders=facts.senders,
        )

    async def _load_priors(self, keys: list[ClaimKey]) -> dict[ClaimKey, PriorRecord]:
        if not keys:
            return {}
        return await asyncio.to_thread(repository.load_priors, self._engine, keys=keys)

    def _republish_if_unpublished(self, keys: list[ClaimKey]) -> None:
        """An identical resend of an admitted event whose admission is not published (yet): publish it now."""

        async def republish() -> None:
            try:
                rows = await asyncio.to_thread(outbox_repository.unpublished_admissions, self._engine, keys=keys)
                if rows:
                    await self._republisher.republish(rows)
            except Exception:  # the reconciler publishes it later all the same
                log.exception("could not publish again the admissions of %d resent event(s)", len(keys))

        task = asyncio.create_task(republish(), name="ingest-republish-resent")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _store_failed(self, deliveries: list[Delivery], error: sa.exc.SQLAlchemyError) -> None:
        fault = Fault(FaultKind.database, clean(f"{type(error).__name__}: {error}".split("\n[SQL:")[0], 300))
        self._observer.store_failed(deliveries, fault)
        self.health.store_failed()
        for d in deliveries:
            d.fail(fault)

    # --- publishing ---

    def _start_publish(self, deliveries: list[Delivery], decided_at: datetime) -> list[InFlight]:
        """Start publishing what the batch's messages became: one atomic batch per stream."""
        outbox = Outbox()
        for d in deliveries:
            if d.fault is not None or d.outcome is None:
                continue
            out = outgoing(d, d.outcome, decided_at)
            if out is not None:
                outbox.add(d, out, self._observer.publish_context(d))
        return self._publisher.start(outbox)

    async def _await_pub_acks(self, in_flight: list[InFlight]) -> None:
        started = time.perf_counter()
        published = await self._publisher.wait(in_flight)
        self._observer.published(published, time.perf_counter() - started)
