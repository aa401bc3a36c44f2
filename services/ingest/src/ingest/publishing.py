"""Publishing a batch's outcomes: one atomic batch per stream, its PubAck awaited behind the next batch.

With `sync_interval: always` each stored write is an fsync: an atomic batch is one write and one PubAck
for all its messages. A batch holding a message the stream already has (a redelivery whose earlier publish
was stored) is refused whole by the broker and republished message by message; the duplicate window drops
the copies. A missing or refused PubAck is a NATS fault for every message of its batch (they are retried
later) and makes the stream unhealthy until its next PubAck.

A PubAck says where each decision landed (an atomic batch's messages take consecutive sequences, in the
order sent): `PubAcks` keeps those marks until the next batch's transaction records them in the store (no
commit of their own while batches keep coming; one shortly after the last). A mark lost in a crash costs a
republish that the broker drops, nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanContext

from contracts.streams import MSG_ID_HEADER
from ingest import repository
from ingest.delivery import Delivery, Fault, FaultKind
from ingest.domain import LateAdmission, NewClaim, NewClose, clean
from ingest.health import WorkHealth
from ingest.records import Outgoing, outgoing
from ingest.repository import DecisionRecord, Mark, WriteConflict
from shinchoku_runtime.batchpublish import MAX_BATCH, BatchAck, OutMessage, publish_atomic
from shinchoku_runtime.db import in_thread
from shinchoku_runtime.propagation import inject_span_context

log = logging.getLogger(__name__)

#: How long the last PubAcks wait for a batch write to carry them before they are written on their own (s).
FLUSH_DELAY = 0.25


class Sent(NamedTuple):
    """A message of the batch being published: whose it is, its publish span's context, and where it goes."""

    delivery: Delivery
    span: SpanContext | None
    subject: str


@dataclass(slots=True)
class _StreamBatch:
    messages: list[OutMessage] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)


class InFlight(NamedTuple):
    """One stream's atomic batch (at most MAX_BATCH messages), waiting for its PubAck."""

    ack: asyncio.Future[BatchAck]
    stream: str
    sent: list[Sent]
    started_ns: int


class Published(NamedTuple):
    """How one stream's atomic batch went, for the spans."""

    stream: str
    sent: list[Sent]
    started_ns: int
    ended_ns: int
    #: What went wrong (None: PubAck received).
    failure: str | None
    #: The broker refused the batch whole and it went out message by message.
    fell_back: bool


class Outbox:
    """The batch's messages grouped by stream, each with its `Nats-Msg-Id` and trace context."""

    def __init__(self) -> None:
        self._streams: dict[str, _StreamBatch] = {}

    @classmethod
    def of(
        cls, deliveries: Iterable[Delivery], decided_at: datetime, span_of: Callable[[Delivery], SpanContext | None]
    ) -> Outbox:
        """What the messages decided (and not faulted since) publish, each with its publish span's context."""
        outbox = cls()
        for d in deliveries:
            if d.fault is not None or d.outcome is None:
                continue
            out = outgoing(d, d.outcome, decided_at)
            if out is not None:
                outbox.add(d, out, span_of(d))
        return outbox

    def add(self, d: Delivery, out: Outgoing, span: SpanContext | None) -> None:
        headers = {MSG_ID_HEADER: out.msg_id}
        inject_span_context(headers, span or d.span.context)
        batch = self._streams.get(out.stream)
        if batch is None:
            batch = self._streams[out.stream] = _StreamBatch()
        batch.messages.append(OutMessage(out.subject, out.payload, headers))
        batch.sent.append(Sent(d, span, out.subject))

    def streams(self) -> Iterable[tuple[str, list[OutMessage], list[Sent]]]:
        """Each stream's messages in atomic batches the broker takes whole (so each PubAck covers one batch)."""
        for stream, batch in self._streams.items():
            for start in range(0, len(batch.messages), MAX_BATCH):
                yield stream, batch.messages[start : start + MAX_BATCH], batch.sent[start : start + MAX_BATCH]


def marks_of(stream_seqs: list[int], ack: BatchAck) -> list[Mark]:
    """Where each decision of one atomic batch landed, from its PubAck (`count` consecutive sequences ending at
    `last_seq`, in the order sent). A batch that went out message by message gives its last sequence to all."""
    if ack.fell_back or ack.count != len(stream_seqs):
        return [Mark(seq, ack.last_seq) for seq in stream_seqs]
    first = ack.last_seq - ack.count + 1
    return [Mark(seq, first + i) for i, seq in enumerate(stream_seqs)]


class PubAcks:
    """PubAcks received and not yet recorded in the store, and the greatest sequence ingest saw per stream.

    Batch writes take the pending marks into their transaction (`take`, `put_back` if it fails); `flush_soon`
    writes them on their own once no batch write came for FLUSH_DELAY. `write_lock` keeps this process's
    store writes one at a time (SQLite would make a second writer sleep in its busy handler).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._pending: list[Mark] = []
        self._writes = 0
        self._flushing: asyncio.Task[None] | None = None
        self.write_lock = asyncio.Lock()
        #: stream → the greatest sequence a PubAck gave this process (to notice a stream that lost messages).
        self.greatest: dict[str, int] = {}

    def add(self, stream: str, marks: list[Mark]) -> None:
        if not marks:
            return
        self._pending += marks
        top = max(m.published_seq for m in marks)
        if top > self.greatest.get(stream, 0):
            self.greatest[stream] = top

    def take(self) -> list[Mark]:
        """The pending marks, for a batch write to record (counts as a write: the idle flush waits again)."""
        marks, self._pending = self._pending, []
        self._writes += 1
        return marks

    def put_back(self, marks: list[Mark]) -> None:
        self._pending[:0] = marks

    async def write_batch(
        self,
        *,
        decisions: Sequence[DecisionRecord],
        claims: Sequence[NewClaim],
        late_admissions: Sequence[LateAdmission],
        closes: Sequence[NewClose],
    ) -> None:
        """Store a batch (`repository.write_batch`) in a transaction that records the pending marks too; they are
        kept for later when it raises (WriteConflict, or the store's error)."""
        async with self.write_lock:
            published = self.take()
            try:
                await in_thread(
                    repository.write_batch,
                    self._engine,
                    decisions=decisions,
                    claims=claims,
                    late_admissions=late_admissions,
                    published=published,
                    closes=closes,
                )
            except (WriteConflict, sa.exc.SQLAlchemyError):
                self.put_back(published)
                raise

    def __len__(self) -> int:
        return len(self._pending)

    def flush_soon(self) -> None:
        """Write the pending marks on their own if no batch write takes them within FLUSH_DELAY."""
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_when_idle(self._writes), name="ingest-pub-acks")

    async def _flush_when_idle(self, writes: int) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        while self._pending and self._writes != writes:  # a batch wrote meanwhile: wait for the next lull
            writes = self._writes
            await asyncio.sleep(FLUSH_DELAY)
        await self.flush()

    async def flush(self) -> None:
        """Record the pending marks now, in a transaction of their own (kept for later if the store fails)."""
        async with self.write_lock:
            marks = self.take()
            if not marks:
                return
            try:
                await in_thread(repository.mark_published, self._engine, marks)
            except sa.exc.SQLAlchemyError as e:
                self.put_back(marks)
                log.warning("could not record %d PubAck(s) yet: %s", len(marks), clean(str(e), 200))

    async def stop(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self.flush()


class Publisher:
    def __init__(self, nc: Client, health: WorkHealth, pub_acks: PubAcks, *, timeout: float) -> None:
        self._nc = nc
        self._health = health
        self._pub_acks = pub_acks
        self._timeout = timeout

    def start(self, outbox: Outbox) -> list[InFlight]:
        """Start publishing each stream's atomic batch; their PubAcks are awaited by `wait`."""
        started = time.time_ns()
        return [
            InFlight(
                asyncio.ensure_future(publish_atomic(self._nc, stream, messages, timeout=self._timeout)),
                stream,
                sent,
                started,
            )
            for stream, messages, sent in outbox.streams()
        ]

    async def wait(self, in_flight: list[InFlight]) -> list[Published]:
        """Wait for every PubAck; a missing or refused one faults each message of its batch."""
        if not in_flight:
            return []
        await asyncio.wait([f.ack for f in in_flight])
        ended = time.time_ns()
        results: list[Published] = []
        for f in in_flight:
            error = f.ack.exception()
            if error is None:
                ack = f.ack.result()
                self._health.published(f.stream)
                self._pub_acks.add(f.stream, marks_of([s.delivery.seq for s in f.sent], ack))
                results.append(Published(f.stream, f.sent, f.started_ns, ended, None, ack.fell_back))
                continue
            detail = "no PubAck (timeout)" if isinstance(error, NatsTimeoutError) else f"publish failed: {error!r}"
            fault = Fault(FaultKind.nats, detail)
            for sent in f.sent:
                sent.delivery.fail(fault)
            self._health.publish_failed(f.stream, clean(detail, 200))
            results.append(Published(f.stream, f.sent, f.started_ns, ended, detail, False))
        return results
