"""The durable pull consumer `reporting` on ACCEPTED: batches in, one transaction each, acks after commit.

`AcceptedPuller` follows the durable consumer with the runtime's `PullConsumer` (pull requests kept
outstanding, messages received on an inbox callback; see `shinchoku_runtime.pull`, which also says why not
FastStream's batch pull): whatever has arrived is handed over as one batch, so batches grow by themselves
when the writer is busy and a lone event is not held back waiting for company. `AcceptedWriter` has queued
batches decoded and applied by an `Applier` (a child process by default, see `reporting.workers`; one
transaction, possibly several batches merged) and acknowledges every message after the commit, so pulling
the next batch overlaps with writing this one; then it records each message's span. A database fault (or a writer
process that died) has the batch retried in place after a delay, its messages kept in progress (nak'ing it would leave
a gap before the order cursor that everything behind it waits for): nothing is terminated for a fault of ours. A
message this version cannot decode is held, never terminated: nak'ed with `hold_delay`, counted, and /healthz 503
until a version that decodes it takes it; one that only carries fields this version does not know (a newer ingest's
additive fields) is decoded without them (`handlers.additive`).

One module of ~420 lines on purpose: the puller and the writer are the two ends of one pipeline (what is received,
what is in flight to the writer, what is acknowledged), and its failure handling reads best in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace

from contracts.streams import ACCEPTED_STREAM, REPORTING_DURABLE
from reporting.handlers import DEFERRED_DELAY_SECONDS, NOT_ATTEMPTED, AppliedEvent, BatchOutcome, Delivered
from reporting.metrics import ReportingMetrics
from reporting.repository import to_micros
from reporting.tracing import BatchSpans, MessageSpan
from reporting.workers import Applier
from shinchoku_runtime.batchpublish import ack_all
from shinchoku_runtime.pull import PullConsumer

log = logging.getLogger(__name__)

#: At most one "wait for the log's order" warning per this many seconds (each batch deferred counts in the metrics).
DEFERRED_LOG_SECONDS = 10.0


@dataclass(slots=True)
class Delivery:
    """One message of a pulled batch and when it arrived."""

    msg: Msg
    received_ns: int


def _stream_seq(msg: Msg) -> int:
    """The message's ACCEPTED stream sequence (0 when its reply subject does not say)."""
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # not a JetStream delivery (a test's plain message)
        return 0


def deliveries(messages: Sequence[Msg]) -> list[Delivery]:
    received = time.time_ns()
    return [Delivery(msg, received) for msg in messages]


def consumer_config(*, ack_wait: float, max_ack_pending: int) -> ConsumerConfig:
    """The durable consumer `reporting` (shared by every replica of the service)."""
    return ConsumerConfig(
        durable_name=REPORTING_DURABLE,
        description="Reporting: admitted reports, reviews and closes into the rollup store",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        # No filter: every subject of ACCEPTED (admitted reports, reviews and closes), applied in the log's one
        # order. Not `filter_subjects=` listing them: nats-server 2.15 matches each message against a consumer's
        # several filters, which cost it 32 µs of CPU per event against 7 µs unfiltered (bench/reporting.py).
    )


async def update_consumer(nc: Client, config: ConsumerConfig) -> int:
    """Create the durable consumer `reporting`, or bring an existing one to `config`'s subjects (a store made before
    the reporting cycle followed `accepted.>` only, a later one listed the stream's subjects as filters; reviews and
    closes are in the same log). Returns its ack floor:
    the stream sequence up to which every message was acknowledged (where the order cursor starts when new)."""
    js = nc.jetstream()
    try:
        info = await js.consumer_info(ACCEPTED_STREAM.name, REPORTING_DURABLE)
    except NotFoundError:
        info = await js.add_consumer(ACCEPTED_STREAM.name, config)
    if (info.config.filter_subject or None, info.config.filter_subjects or None) != (
        config.filter_subject or None,
        config.filter_subjects or None,
    ):
        info = await js.add_consumer(ACCEPTED_STREAM.name, config)
        log.info("durable consumer %s now follows every subject of %s", REPORTING_DURABLE, ACCEPTED_STREAM.name)
    floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    return int(floor or 0)


class AcceptedPuller:
    """Pulls batches from the durable consumer `reporting` (the runtime's `PullConsumer`) and awaits `handle`
    for each, as `Delivery`s (which may make it wait)."""

    def __init__(
        self,
        nc: Client,
        handle: Callable[[list[Delivery]], Awaitable[None]],
        *,
        config: ConsumerConfig,
        batch: int = 1000,
    ) -> None:
        self._handle = handle
        self._consumer = PullConsumer(nc, stream=ACCEPTED_STREAM.name, config=config, batch=batch)

    @property
    def running(self) -> bool:
        return self._consumer.running

    def stop(self) -> None:
        """Ask `run` to return (cancellation alone can be lost inside `asyncio.wait_for` on Python 3.11)."""
        self._consumer.stop()

    async def _hand(self, messages: list[Msg]) -> None:
        await self._handle(deliveries(messages))

    async def run(self) -> None:
        """Pull until stopped or cancelled; on the way out the messages received but not handed over are nak'ed."""
        await self._consumer.follow(self._hand)


@dataclass(slots=True)
class _Sent:
    """Batches merged into one write and sent to the writer; its answer to come."""

    batches: int
    deliveries: list[Delivery]
    messages: list[Delivered]
    sent_ns: int
    answer: asyncio.Future[BatchOutcome]


class AcceptedWriter:
    """Applies queued batches to the store and acknowledges them after the commit.

    Two tasks: one sends merged batches to the `Applier` (`pipeline` of them in flight, so that the writer starts
    on the next batch the moment it has committed one), the other takes the answers in the order sent, retries a
    failed batch in place and settles what was committed (acknowledging and tracing one batch overlaps with
    writing the next). After a failure nothing new is sent until the batches already behind it are written: the
    writer answers those `NOT_ATTEMPTED` (`workers.InLogOrder`) and they are sent again, in order.
    """

    def __init__(
        self,
        applier: Applier,
        metrics: ReportingMetrics,
        *,
        db_system: str,
        retry_delay: float = 2.0,
        hold_delay: float = 60.0,
        max_rows: int = 4000,
        queue_batches: int = 2,
        pipeline: int = 2,
        tracer: trace.Tracer | None = None,
        on_committed: Callable[[Sequence[AppliedEvent], bool], None] | None = None,
    ) -> None:
        #: Called after each batch committed and acknowledged (the reading side warms its caches), with the events
        #: applied and whether the batch may have written a revision to publish (`BatchOutcome.publishes`: the
        #: outbox sends it at once).
        self._on_committed = on_committed
        self._spans = BatchSpans(tracer or trace.get_tracer(__name__), db_system=db_system)
        self._applier = applier
        self._metrics = metrics
        self._retry_delay = retry_delay
        self._hold_delay = hold_delay
        #: Stream sequence → why: the messages this version could not decode, held (nak'ed with a delay).
        self.held: dict[int, str] = {}
        self._ignored_seen: set[str] = set()
        self._deferred_logged = -DEFERRED_LOG_SECONDS
        self._max_rows = max_rows
        self._queue: asyncio.Queue[list[Delivery]] = asyncio.Queue(maxsize=queue_batches)
        self._slots = asyncio.Semaphore(pipeline)  # writes sent and not yet answered and handled
        self._sent: asyncio.Queue[_Sent] = asyncio.Queue()
        self._in_order = asyncio.Event()  # clear while a failed write and those sent behind it are retried
        self._in_order.set()
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, batch: list[Delivery]) -> None:
        """Queue a batch (waits while the writer is behind: that is the back-pressure)."""
        await self._queue.put(batch)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._send(), name="reporting-writer-send"),
                asyncio.create_task(self._receive(), name="reporting-writer"),
            ]

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (so that it is acknowledged), then stop."""
        if not self._tasks:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("writer stopped with batches still queued; they will be redelivered")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._sent.empty():  # sent, never handled: redelivered after ack_wait, applied idempotently
            self._sent.get_nowait().answer.cancel()
        await self._applier.close()

    async def _send(self) -> None:
        while True:
            await self._slots.acquire()
            batches = [await self._queue.get()]
            rows = len(batches[0])
            while rows < self._max_rows and not self._queue.empty():
                batches.append(self._queue.get_nowait())
                rows += len(batches[-1])
            await self._in_order.wait()
            deliveries = [d for batch in batches for d in batch]
            messages = [(d.msg.subject, _stream_seq(d.msg), d.msg.data) for d in deliveries]
            answer = asyncio.ensure_future(self._applier.apply(messages))
            self._sent.put_nowait(_Sent(len(batches), deliveries, messages, time.time_ns(), answer))

    async def _receive(self) -> None:
        settling: asyncio.Task[None] | None = None
        ended = 0
        try:
            while True:
                sent = await self._sent.get()
                written: tuple[Sequence[Delivery], BatchOutcome, int, int] | None = None
                try:
                    written = await self._write(sent, max(sent.sent_ns, ended))
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let the writer die: the messages stay unacknowledged and come back
                    log.exception("writer failed on a batch; its messages will be redelivered")
                if self._sent.empty():
                    self._in_order.set()
                self._slots.release()
                if settling is not None:
                    await settling
                    settling = None
                if written is None:
                    for _ in range(sent.batches):
                        self._queue.task_done()
                    continue
                ended = written[3]
                settling = asyncio.create_task(self._settle_logged(*written, count=sent.batches))
        finally:
            if settling is not None:
                await asyncio.shield(settling)

    async def _write(self, sent: _Sent, started: int) -> tuple[Sequence[Delivery], BatchOutcome, int, int]:
        """The answer for a sent batch, retried in place until it is committed (`started`: when the writer could
        begin on it, after the batch before).

        A database fault (nothing of the batch committed) or a writer process that died is retried after
        `retry_delay` with the same messages, kept in progress meanwhile; the batches behind it wait. Nak'ing it to
        come back later would leave a gap before the order cursor: every message after it would wait
        for it (`handlers.ORDER_WAIT_SECONDS`) and be nak'ed in turn, back into the consumer's redelivery queue
        ahead of it, round after round (a stall of a minute under load). Stopped meanwhile, the batch is nak'ed.
        A batch `NOT_ATTEMPTED` (sent behind one that failed, which is committed by now) is sent again at once.
        """
        answer = sent.answer
        while True:
            try:
                outcome = await answer
            except Exception as e:  # the worker died: nothing is known to be committed
                error = f"{type(e).__name__}: {e}"
            else:
                if outcome.error is None:
                    return sent.deliveries, outcome, started, time.time_ns()
                if outcome.error == NOT_ATTEMPTED:
                    started = time.time_ns()
                    answer = asyncio.ensure_future(self._applier.apply(sent.messages, retry=True))
                    continue
                error = outcome.error
                good = [
                    (d, ev) for d, ev in zip(sent.deliveries, outcome.events, strict=True) if not isinstance(ev, str)
                ]
                self._trace(good, started, time.time_ns(), error=error)
            self._in_order.clear()  # nothing new is sent until the writes behind this one are handled
            await self._retry_in_place(sent.deliveries, error)
            started = time.time_ns()
            answer = asyncio.ensure_future(self._applier.apply(sent.messages, retry=True))

    async def _retry_in_place(self, batch: Sequence[Delivery], error: str) -> None:
        self._metrics.batches.labels("retried").inc()
        log.warning("could not apply %d admitted events (%s); retrying in %.1fs", len(batch), error, self._retry_delay)
        try:
            await asyncio.sleep(self._retry_delay)
        except asyncio.CancelledError:  # stopped: they come back (to this replica after a restart, or another)
            for d in batch:
                with contextlib.suppress(Exception):
                    await d.msg.nak()
            raise
        for d in batch:  # not redelivered by ack_wait while the fault lasts
            with contextlib.suppress(Exception):
                await d.msg.in_progress()

    async def _settle_logged(
        self, batch: Sequence[Delivery], outcome: BatchOutcome, started: int, ended: int, *, count: int
    ) -> None:
        try:
            await self._settle(batch, outcome, started, ended)
        except Exception:  # unacknowledged messages come back after ack_wait, answered idempotently
            log.exception("could not settle a written batch of %d", len(batch))
        finally:
            for _ in range(count):
                self._queue.task_done()

    async def _settle(self, batch: Sequence[Delivery], outcome: BatchOutcome, started: int, ended: int) -> None:
        """Acknowledge what was committed (hold what this version cannot decode, nak what must wait for the facts
        before it), then record the spans."""
        deferred = set(outcome.deferred)
        if deferred:  # the facts before them in the log are not applied yet: they come back in a moment
            self._metrics.batches.labels("deferred").inc()
            self._note_deferred(batch, deferred, outcome.cursor)
            for i in sorted(deferred):
                await batch[i].msg.nak(delay=DEFERRED_DELAY_SECONDS)
        settled = [
            (d, event) for i, (d, event) in enumerate(zip(batch, outcome.events, strict=True)) if i not in deferred
        ]
        good: list[tuple[Delivery, AppliedEvent]] = [(d, e) for d, e in settled if not isinstance(e, str)]
        for d, event in settled:
            if isinstance(event, str):
                await self._hold(d, event)
        self._note_ignored(outcome.ignored)
        if not good:
            return
        await ack_all(None, [d.msg for d, _ in good])
        if self._on_committed is not None:
            self._on_committed([event for _, event in good], outcome.publishes)
        self._metrics.applied(len(good))
        self._metrics.batch_seconds.observe((ended - started) / 1e9)
        now = to_micros(datetime.now(UTC))
        for _, event in good:
            self._metrics.apply_lag.observe(max(0.0, (now - event.admitted_at_us) / 1e6))
        self._trace(good, started, ended)

    async def _hold(self, d: Delivery, reason: str) -> None:
        """A message this version cannot decode is never dropped: it comes back after `hold_delay` (an upgraded
        replica, or this one after an upgrade, takes it) and, until then, /healthz says so."""
        seq = _stream_seq(d.msg)
        if seq not in self.held:
            self._metrics.malformed.inc()
            log.error(
                "ACCEPTED message %s on %s cannot be decoded by this version; held (back in %.0fs, never dropped): %s",
                seq,
                d.msg.subject,
                self._hold_delay,
                reason,
            )
        self.held[seq] = reason
        self._metrics.held.set(len(self.held))
        await d.msg.nak(delay=self._hold_delay)

    def _note_deferred(self, batch: Sequence[Delivery], deferred: set[int], cursor: int | None) -> None:
        """A warning, at most every `DEFERRED_LOG_SECONDS` while it lasts: messages wait at the order cursor for a
        fact another replica (or a redelivery) holds. Brief under load; a minute of it is a stall to look into."""
        now = time.monotonic()
        if now - self._deferred_logged < DEFERRED_LOG_SECONDS:
            return
        self._deferred_logged = now
        seqs = sorted(_stream_seq(batch[i].msg) for i in deferred)
        log.warning(
            "%d admitted events wait for the log's order: applied up to %s, this batch holds %d–%d and "
            "not the next (another replica or a redelivery has it); nak'ed to come back",
            len(seqs),
            cursor,
            seqs[0],
            seqs[-1],
        )

    def _note_ignored(self, ignored: Sequence[str]) -> None:
        """Fields of a newer contract left out to decode: counted, and said once per field."""
        for path in ignored:
            self._metrics.ignored_fields.labels(path).inc()
            if path not in self._ignored_seen:
                self._ignored_seen.add(path)
                log.warning("ACCEPTED carries %r, which this version does not know: decoded without it", path)

    def _trace(
        self, good: Sequence[tuple[Delivery, AppliedEvent]], started: int, ended: int, *, error: str | None = None
    ) -> None:
        """One span per message (parent: the report's trace), with the batch's DB write as its child."""
        messages = [
            MessageSpan(
                headers=d.msg.headers,
                name=f"reporting process {d.msg.subject}",
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": d.msg.subject,
                    "messaging.operation": "process",
                    "messaging.consumer.group.name": REPORTING_DURABLE,
                    "shinchoku.event_id": event.event_id,
                    "shinchoku.measure_id": event.measure_id,
                    "shinchoku.agency": event.agency,
                },
                start_ns=d.received_ns,
            )
            for d, event in good
        ]
        self._spans.record(messages, write_start_ns=started, write_end_ns=ended, error=error)
