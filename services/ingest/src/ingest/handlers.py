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

This module is the order itself, and nothing else. The decision is `domain.decide_batch` (pure), what it needs
from the world (the catalog, earlier records, the secretariat's commands' facts) `deciding`, what a decision
becomes (its row, its message) `records`, publishing and its health `publishing`, acks, retries and dead letters
`settling`, spans and metrics `observer`, the outbox's republishing `reconciler`. A fault that is not the
message's (database, NATS, catalog unavailable) puts the message back for later; bad input is never retried: it
is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from nats.aio.msg import Msg

from ingest import repository
from ingest.config import PAUSE_MAX
from ingest.deciding import BatchDecider
from ingest.delivery import Delivery, Fault, FaultKind, delivery_info
from ingest.domain import Duplicate, clean, read_message
from ingest.health import WorkHealth
from ingest.observer import BatchObserver
from ingest.publishing import InFlight, Outbox, PubAcks, Publisher
from ingest.reconciler import Republisher
from ingest.records import decision_record
from ingest.repository import StoredDecision, WriteConflict
from ingest.settling import Settler
from shinchoku_runtime.db import in_thread

log = logging.getLogger(__name__)

#: Attempts at storing a batch before its messages are retried later: the first assumes its event ids are new,
#: the others decide with the stored records (a resend, or a race with another replica).
WRITE_ATTEMPTS = 4


class BatchHandler:
    """Decides, stores, publishes and acknowledges batches of STATUS messages."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        decider: BatchDecider,
        publisher: Publisher,
        settler: Settler,
        observer: BatchObserver,
        republisher: Republisher,
        pub_acks: PubAcks,
        health: WorkHealth,
        max_inflight: int,
    ) -> None:
        self._engine = engine
        self._decider = decider
        self._publisher = publisher
        self._settler = settler
        self._observer = observer
        self._republisher = republisher
        self._pub_acks = pub_acks
        self._health = health
        self._consecutive_faults = 0
        #: Batches waiting for their PubAcks while the next one is decided.
        self._slots = asyncio.Semaphore(max_inflight)
        self._finishing: set[asyncio.Task[None]] = set()

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
            self._behind(self._finish(deliveries, in_flight, started), "ingest-finish-batch")
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

    def _behind(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` behind the batches, `drain` waiting for it."""
        task = asyncio.create_task(work, name=name)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

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
        return datetime.now(UTC)

    async def _decide_and_store(self, deliveries: list[Delivery], *, recheck: bool) -> datetime | None:
        """One attempt: when the batch's new decisions were made (and stored, or failed for a fault), or None
        when another replica stored part of the batch first (decide it again, from the store)."""
        # 1. What is stored already (a redelivery, or another replica's work) is answered from the store.
        for d in deliveries:
            if not isinstance(d.outcome, StoredDecision):
                d.outcome = None
        maybe_stored = [d.seq for d in deliveries if recheck or d.delivered > 1]
        try:
            stored = await in_thread(repository.load_stored, self._engine, seqs=maybe_stored)
        except sa.exc.SQLAlchemyError as e:
            self._store_failed(deliveries, e)
            return datetime.now(UTC)
        for d in deliveries:
            d.outcome = stored.get(d.seq)
            d.stored = d.outcome is not None
        todo = [d for d in deliveries if d.outcome is None and d.fault is None]

        # 2. The rest is decided with the catalog's measures, the records of earlier decisions and the facts of
        # the secretariat's commands (`deciding`).
        measures = await self._decider.look_up(todo)
        try:
            decidable, batch = await self._decider.decide(todo, measures, recheck=recheck)
        except sa.exc.SQLAlchemyError as e:
            self._store_failed([d for d in todo if d.fault is None], e)
            return datetime.now(UTC)
        decided_at = datetime.now(UTC)
        rows = []
        for d, decision in zip(decidable, batch.decisions, strict=True):
            d.outcome = decision
            rows.append(decision_record(d, decision, decided_at))

        # 3. One transaction for the whole batch (carrying the PubAcks of the batches before it).
        db_started = time.time_ns()
        try:
            await self._pub_acks.write_batch(
                decisions=rows, claims=list(batch.claims.values()), late_admissions=batch.late, closes=batch.closes
            )
        except WriteConflict:
            return None
        except sa.exc.SQLAlchemyError as e:
            self._store_failed(decidable, e)
            return decided_at
        for d in decidable:
            d.stored = True
        self._observer.stored(decidable, db_started, time.time_ns())
        self._health.store_ok()
        resent = [(d.agency, d.outcome.report.event_id) for d in decidable if isinstance(d.outcome, Duplicate)]
        if resent:  # an identical resend of an admitted event whose admission may not be published yet
            self._behind(self._republisher.republish_resent(resent), "ingest-republish-resent")
        return decided_at

    def _store_failed(self, deliveries: list[Delivery], error: sa.exc.SQLAlchemyError) -> None:
        fault = Fault(FaultKind.database, clean(f"{type(error).__name__}: {error}".split("\n[SQL:")[0], 300))
        self._observer.store_failed(deliveries, fault)
        self._health.store_failed()
        for d in deliveries:
            d.fail(fault)

    # --- publishing ---

    def _start_publish(self, deliveries: list[Delivery], decided_at: datetime) -> list[InFlight]:
        """Start publishing what the batch's messages became: one atomic batch per stream."""
        return self._publisher.start(Outbox.of(deliveries, decided_at, self._observer.publish_context))

    async def _await_pub_acks(self, in_flight: list[InFlight]) -> None:
        started = time.perf_counter()
        published = await self._publisher.wait(in_flight)
        self._observer.published(published, time.perf_counter() - started)
