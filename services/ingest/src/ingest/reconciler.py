"""The outbox's reconciler: every decision ingest stored reaches its stream, whatever happened in between.

A decision is committed, then published; its PubAck records where it landed (`published_seq`). What can
leave a stored decision unpublished: a stream that refused writes for longer than the consumer retries
(its message is acked on the last delivery, see `settling`), a crash between commit and PubAck followed by
the broker giving up, a reset stream. So, on start and every `reconcile_interval`:

- a decision seen unpublished by two passes in a row is published again, exactly as it was (same
  `Nats-Msg-Id`: inside the duplicate window the broker drops a copy; after it, readers count by agency and
  event id);
- a stream whose last sequence is below the greatest sequence ingest was given there lost messages (reset,
  restored from an older backup): that is said loudly (log, metric, /healthz), and the decisions published
  after its last sequence are published again.

One ingest process reconciles at a time (`outbox_repository.PassLock`); every process keeps the figures
/healthz and /metrics show. An identical resend of an admitted event whose admission is unpublished asks
the `Republisher` directly, without waiting for a pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from nats.aio.client import Client

from contracts.streams import ACCEPTED_STREAM, MSG_ID_HEADER, REJECTED_STREAM, STATUS_STREAM
from ingest import outbox_repository
from ingest.domain import ClaimKey, clean
from ingest.health import WorkHealth
from ingest.metrics import IngestMetrics
from ingest.outbox_repository import PassLock, Unpublished
from ingest.publishing import PubAcks, marks_of
from ingest.records import STREAM_OF, Outgoing, republished
from ingest.tables import OUTCOME_ADMITTED, OUTCOME_REJECTED
from shinchoku_runtime.batchpublish import MAX_BATCH, OutMessage, publish_atomic
from shinchoku_runtime.db import in_thread

log = logging.getLogger(__name__)

#: Decisions looked at (and republished) per pass: a long outage's backlog goes out over several passes.
PASS_LIMIT = 5000
#: STATUS messages read back at once to republish admissions.
FETCH_CONCURRENCY = 64
#: The stream each outcome is published on.
STREAMS = ((ACCEPTED_STREAM.name, OUTCOME_ADMITTED), (REJECTED_STREAM.name, OUTCOME_REJECTED))
_TRACE_HEADERS = ("traceparent", "tracestate")


class Republisher:
    """Publishes stored decisions again, as they were first published, and records their PubAcks."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        nc: Client,
        pub_acks: PubAcks,
        health: WorkHealth,
        metrics: IngestMetrics,
        timeout: float,
    ) -> None:
        self._engine = engine
        self._nc = nc
        self._js = nc.jetstream()
        self._pub_acks = pub_acks
        self._health = health
        self._metrics = metrics
        self._timeout = timeout

    async def republish(self, rows: Sequence[Unpublished]) -> int:
        """Publish these decisions again, in atomic batches; how many the streams acknowledged. A stream that
        refuses a batch is not tried again in this call (the rest of its decisions stay unpublished)."""
        refusing: set[str] = set()
        published = 0
        for start in range(0, len(rows), MAX_BATCH):
            chunk = [r for r in rows[start : start + MAX_BATCH] if STREAM_OF[r.decision.outcome] not in refusing]
            outgoing: dict[str, list[tuple[int, OutMessage]]] = {}
            for first in range(0, len(chunk), FETCH_CONCURRENCY):
                part = chunk[first : first + FETCH_CONCURRENCY]
                for row, built in zip(part, await asyncio.gather(*(self._message(r) for r in part)), strict=True):
                    if built is not None:
                        out, headers = built
                        message = OutMessage(out.subject, out.payload, {MSG_ID_HEADER: out.msg_id, **headers})
                        outgoing.setdefault(out.stream, []).append((row.decision.stream_seq, message))
            for stream, batch in outgoing.items():
                try:
                    ack = await publish_atomic(self._nc, stream, [m for _, m in batch], timeout=self._timeout)
                except Exception as e:  # still refused or unanswered: the next pass tries again
                    log.warning("could not publish %d stored decision(s) on %s yet: %s", len(batch), stream, e)
                    self._health.publish_failed(stream, clean(f"publish failed: {e!r}", 200))
                    refusing.add(stream)
                    continue
                self._health.published(stream)
                self._pub_acks.add(stream, marks_of([seq for seq, _ in batch], ack))
                self._metrics.republished.labels(stream).inc(len(batch))
                published += len(batch)
        if published:
            await self._pub_acks.flush()
            log.info("published %d stored decision(s) again", published)
        return published

    async def republish_resent(self, keys: list[ClaimKey]) -> None:
        """An identical resend of admitted events whose admissions are not published (yet): publish them now."""
        try:
            rows = await in_thread(outbox_repository.unpublished_admissions, self._engine, keys=keys)
            if rows:
                await self.republish(rows)
        except Exception:  # the reconciler publishes them later all the same
            log.exception("could not publish again the admissions of %d resent event(s)", len(keys))

    async def _message(self, row: Unpublished) -> tuple[Outgoing, dict[str, str]] | None:
        """What the decision publishes, with the report's trace context; None if it cannot be built now."""
        decision = row.decision
        data, headers = row.payload, {}
        if decision.admitted_body is None and (decision.outcome == OUTCOME_ADMITTED or data is None):
            try:  # a report's admission's bytes live in STATUS (limits retention keeps every message)
                raw = await self._js.get_msg(STATUS_STREAM.name, decision.stream_seq)
            except Exception as e:
                log.error("STATUS-%d cannot be read back to publish its decision again: %s", decision.stream_seq, e)
                return None
            data = raw.data or b""
            headers = {k: v for k, v in (raw.headers or {}).items() if k in _TRACE_HEADERS}
        try:
            out = republished(decision, data or b"")
        except ValueError as e:  # not what was stored for this sequence (STATUS was reset under ingest)
            log.error("STATUS-%d no longer holds the message decided: %s", decision.stream_seq, clean(str(e), 200))
            return None
        return (out, headers) if out is not None else None


@dataclass
class OutboxStatus:
    """What /healthz shows of the outbox."""

    unpublished: int = 0
    #: How long the oldest unpublished decision has been seen unpublished by this process's passes.
    oldest_seconds: float = 0.0
    #: stream → what it lost (it holds less than ingest published there).
    short_streams: dict[str, str] = field(default_factory=dict)

    def alarming(self, threshold: float) -> bool:
        return self.oldest_seconds > threshold or bool(self.short_streams)

    def as_json(self) -> dict[str, Any]:
        return {
            "unpublished": self.unpublished,
            "oldest_seconds": round(self.oldest_seconds, 1),
            "short_streams": dict(self.short_streams),
        }


class Reconciler:
    def __init__(
        self,
        *,
        engine: sa.Engine,
        nc: Client,
        republisher: Republisher,
        pub_acks: PubAcks,
        metrics: IngestMetrics,
        interval: float,
    ) -> None:
        self._engine = engine
        self._js = nc.jetstream()
        self._republisher = republisher
        self._pub_acks = pub_acks
        self._metrics = metrics
        self._interval = interval
        #: STATUS sequence → when a pass first saw its decision unpublished (monotonic).
        self._first_seen: dict[int, float] = {}
        self._short: dict[str, str] = {}
        self._started = False

    async def run(self) -> None:
        """Reconcile now and every interval, until cancelled."""
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox reconciliation failed; trying again in %.0f s", self._interval)
            await asyncio.sleep(self._interval)

    async def reconcile(self) -> None:
        """One pass: record this process's PubAcks, look, and (holding the lock) publish what is due."""
        if not self._started:  # what this process compares the streams with, from the store
            for stream, outcome in STREAMS:
                top = await in_thread(outbox_repository.max_published_seq, self._engine, outcome=outcome)
                self._pub_acks.greatest[stream] = max(top, self._pub_acks.greatest.get(stream, 0))
            self._started = True
        await self._pub_acks.flush()
        rows = await in_thread(outbox_repository.load_unpublished, self._engine, limit=PASS_LIMIT)
        now = time.monotonic()
        seen_before = self._first_seen
        self._first_seen = {r.decision.stream_seq: seen_before.get(r.decision.stream_seq, now) for r in rows}
        due = [r for r in rows if r.decision.stream_seq in seen_before]
        lock = PassLock(self._engine)
        try:
            holder = await in_thread(lock.acquire)
            lost = await self._check_streams(repair=holder)
            if holder and (due or lost):
                await self._republisher.republish([*lost, *due])
        finally:
            # Also when cancelled in `acquire`: the thread took the lock all the same (a no-op when not held).
            await in_thread(lock.release)
        await self.status()

    async def _check_streams(self, *, repair: bool) -> list[Unpublished]:
        """Streams that hold less than ingest published there; with `repair`, what they lost is unpublished again."""
        lost: list[Unpublished] = []
        for stream, outcome in STREAMS:
            greatest = self._pub_acks.greatest.get(stream, 0)  # read before the stream: no PubAck after it counts
            if greatest <= 0:
                continue
            try:
                last = (await self._js.stream_info(stream)).state.last_seq
            except Exception as e:  # missing or unanswered: publishing reports it (/healthz "publishing")
                log.warning("outbox: cannot read stream %s: %s", stream, e)
                continue
            if last >= greatest:
                self._short.pop(stream, None)
                self._metrics.stream_shortfall.labels(stream).set(0)
                continue
            what = (
                f"{stream} ends at sequence {last} but ingest published up to sequence {greatest} there: the stream "
                "was reset or restored from an older copy; ingest publishes again the decisions it can tell are missing"
            )
            log.error("outbox: %s", what)
            self._short[stream] = what
            self._metrics.stream_shortfalls.labels(stream).inc()
            self._metrics.stream_shortfall.labels(stream).set(greatest - last)
            self._pub_acks.greatest[stream] = last  # from now on, measured against the stream as it is
            if repair:
                lost += await in_thread(outbox_repository.unmark_after, self._engine, outcome=outcome, seq=last)
        return lost

    async def status(self) -> OutboxStatus:
        """The outbox now (a count from the store), also set on the metrics."""
        count, oldest_seq = await in_thread(outbox_repository.count_unpublished, self._engine)
        now = time.monotonic()
        oldest = now - self._first_seen.get(oldest_seq, now) if oldest_seq is not None else 0.0
        self._metrics.unpublished.set(count)
        self._metrics.oldest_unpublished.set(oldest)
        return OutboxStatus(unpublished=count, oldest_seconds=oldest, short_streams=dict(self._short))
