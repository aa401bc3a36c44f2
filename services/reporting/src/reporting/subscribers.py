"""The durable pull consumer `reporting` on ACCEPTED: batches in, one transaction each, acks after commit.

`AcceptedPuller` keeps pull requests outstanding on the durable consumer and receives the messages on an
inbox callback; whatever has arrived is handed over as one batch, so batches grow by themselves when the
writer is busy and a lone event is not held back waiting for company. `AcceptedWriter` has queued batches
decoded and applied by an `Applier` (a child process by default, see `reporting.workers`; one transaction,
possibly several batches merged) and acknowledges every message after the commit, so pulling the next
batch overlaps with writing this one; then it records each message's span. A database fault (or a writer
process that died) naks the messages with a delay: they come back, nothing is terminated for a fault of
ours. A message that is not AdmittedEvent JSON is terminated and logged.

Why not FastStream's `PullSub(batch=True)` here: with FastStream 0.7.8 and nats-py 2.16, when the batch
deadline is nearly spent nats-py's `fetch` raises the builtin `TimeoutError` rather than
`nats.errors.TimeoutError`; FastStream's batch loop does not catch it and drops the messages it had
gathered for that batch, which then come back only after `ack_wait`. Its per-message `next_msg` path also
caps near 12,000 messages/s before any work is done; this loop receives several times faster.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace

from contracts.streams import ACCEPTED_STREAM, REPORTING_DURABLE
from reporting.handlers import AppliedEvent, BatchOutcome
from reporting.metrics import ReportingMetrics
from reporting.repository import to_micros
from reporting.tracing import BatchSpans, MessageSpan
from reporting.workers import Applier
from shinchoku_runtime.batchpublish import ack_all

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Delivery:
    """One message of a pulled batch and when it arrived."""

    msg: Msg
    received_ns: int


def deliveries(messages: Sequence[Msg]) -> list[Delivery]:
    received = time.time_ns()
    return [Delivery(msg, received) for msg in messages]


def consumer_config(*, ack_wait: float, max_ack_pending: int) -> ConsumerConfig:
    """The durable consumer `reporting` (shared by every replica of the service)."""
    return ConsumerConfig(
        durable_name=REPORTING_DURABLE,
        description="Reporting: admitted events into the rollup store",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        filter_subject=ACCEPTED_STREAM.subjects[0],
    )


class AcceptedPuller:
    """Pulls batches from the durable consumer and awaits `handle` for each (which may make it wait)."""

    def __init__(
        self,
        nc: Client,
        handle: Callable[[list[Delivery]], Awaitable[None]],
        *,
        config: ConsumerConfig,
        batch: int = 1000,
        expires: float = 10.0,
        heartbeat: float = 2.0,
        requests_in_flight: int = 2,
    ) -> None:
        self._nc = nc
        self._handle = handle
        self._config = config
        self._batch = batch
        self._expires = expires
        self._heartbeat = heartbeat
        self._in_flight = requests_in_flight
        self._buffer: list[Msg] = []
        #: Messages still owed by each pull request in flight, oldest first.
        self._owed: collections.deque[int] = collections.deque()
        self._wakeup = asyncio.Event()
        self._last_heard = time.monotonic()
        self._sub: Any = None
        self._inbox = ""
        self._stopping = False
        self.running = False

    def stop(self) -> None:
        """Ask `run` to return (cancellation alone can be lost inside `asyncio.wait_for` on Python 3.11)."""
        self._stopping = True
        self._wakeup.set()

    async def ensure_consumer(self) -> None:
        js = self._nc.jetstream()
        try:
            await js.consumer_info(ACCEPTED_STREAM.name, REPORTING_DURABLE)
        except NotFoundError:
            await js.add_consumer(ACCEPTED_STREAM.name, self._config)
            log.info("created durable consumer %s on %s", REPORTING_DURABLE, ACCEPTED_STREAM.name)

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None:
            self._buffer.append(msg)
            if self._owed:
                self._owed[0] -= 1
                if self._owed[0] <= 0:
                    self._owed.popleft()
        elif status == "100":
            return  # idle heartbeat: the requests are alive
        else:
            # 408 request expired, 409 (max waiting, leadership change, consumer deleted…): that request is over.
            if self._owed:
                self._owed.popleft()
            if status == "409":
                log.info("pull request ended: %s %s", status, headers.get("Description") if headers else "")
        self._wakeup.set()

    async def _request(self) -> None:
        body = {
            "batch": self._batch,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        self._owed.append(self._batch)
        await self._nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{ACCEPTED_STREAM.name}.{REPORTING_DURABLE}",
            json.dumps(body).encode(),
            reply=self._inbox,
        )

    async def run(self) -> None:
        """Pull until cancelled; on cancellation the messages received but not handed over are nak'ed."""
        await self.ensure_consumer()
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
        self.running = True
        try:
            while not self._stopping:
                while len(self._owed) < self._in_flight and len(self._buffer) < self._batch:
                    await self._request()
                if self._buffer:
                    messages, self._buffer = self._buffer, []
                    await self._handle(deliveries(messages))
                    continue
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self._heartbeat)
                if time.monotonic() - self._last_heard > 3 * self._heartbeat:
                    # No message and no heartbeat: the requests were lost (a reconnect, a restarted
                    # server). Ask again, and recreate the consumer if it is gone.
                    self._owed.clear()
                    self._last_heard = time.monotonic()
                    with contextlib.suppress(Exception):
                        await self.ensure_consumer()
        finally:
            self.running = False
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            for msg in self._buffer:
                with contextlib.suppress(Exception):
                    await msg.nak()
            self._buffer = []


class AcceptedWriter:
    """Applies queued batches to the store and acknowledges them after the commit."""

    def __init__(
        self,
        applier: Applier,
        metrics: ReportingMetrics,
        *,
        db_system: str,
        retry_delay: float = 2.0,
        max_rows: int = 4000,
        queue_batches: int = 2,
        tracer: trace.Tracer | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        #: Called after each batch committed and acknowledged (the reading side warms its caches).
        self._on_committed = on_committed
        self._spans = BatchSpans(tracer or trace.get_tracer(__name__), db_system=db_system)
        self._applier = applier
        self._metrics = metrics
        self._retry_delay = retry_delay
        self._max_rows = max_rows
        self._queue: asyncio.Queue[list[Delivery]] = asyncio.Queue(maxsize=queue_batches)
        self._task: asyncio.Task[None] | None = None

    async def submit(self, batch: list[Delivery]) -> None:
        """Queue a batch (waits while the writer is behind: that is the back-pressure)."""
        await self._queue.put(batch)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="reporting-writer")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (so that it is acknowledged), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("writer stopped with batches still queued; they will be redelivered")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._applier.close()

    async def _run(self) -> None:
        # Acknowledging and tracing a written batch (this process) overlaps with writing the next one (the
        # writer process): one batch settles while the next is written, never more.
        settling: asyncio.Task[None] | None = None
        try:
            while True:
                batches = [await self._queue.get()]
                rows = len(batches[0])
                while rows < self._max_rows and not self._queue.empty():
                    batches.append(self._queue.get_nowait())
                    rows += len(batches[-1])
                written: tuple[Sequence[Delivery], BatchOutcome, int, int] | None = None
                try:
                    written = await self._write([d for batch in batches for d in batch])
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let the writer die: the messages stay unacknowledged and come back
                    log.exception("writer failed on a batch; its messages will be redelivered")
                if settling is not None:
                    await settling
                    settling = None
                if written is None:
                    for _ in batches:
                        self._queue.task_done()
                    continue
                settling = asyncio.create_task(self._settle_logged(*written, count=len(batches)))
        finally:
            if settling is not None:
                await asyncio.shield(settling)

    async def _write(self, batch: Sequence[Delivery]) -> tuple[Sequence[Delivery], BatchOutcome, int, int] | None:
        """Decode and write the batch; None when the writer process died (the batch was put back)."""
        started = time.time_ns()
        try:
            outcome = await self._applier.apply([d.msg.data for d in batch])
        except Exception as e:  # the worker died: nothing is known to be committed
            await self._retry(batch, f"{type(e).__name__}: {e}")
            return None
        return batch, outcome, started, time.time_ns()

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
        """Acknowledge what was committed (terminate what is not AdmittedEvent JSON), then record the spans."""
        good: list[tuple[Delivery, AppliedEvent]] = []
        for d, event in zip(batch, outcome.events, strict=True):
            if isinstance(event, str):
                self._metrics.malformed.inc()
                log.error("ACCEPTED message on %s is not AdmittedEvent JSON, terminated: %s", d.msg.subject, event)
                await d.msg.term()
            else:
                good.append((d, event))
        if outcome.error is not None:
            await self._retry([d for d, _ in good], outcome.error)
            self._trace(good, started, ended, error=outcome.error)
            return
        if not good:
            return
        await ack_all(None, [d.msg for d, _ in good])
        if self._on_committed is not None:
            self._on_committed()
        self._metrics.applied(len(good))
        self._metrics.batch_seconds.observe((ended - started) / 1e9)
        now = to_micros(datetime.now(UTC))
        for _, event in good:
            self._metrics.apply_lag.observe(max(0.0, (now - event.admitted_at_us) / 1e6))
        self._trace(good, started, ended)

    async def _retry(self, batch: Sequence[Delivery], error: str) -> None:
        self._metrics.batches.labels("retried").inc()
        log.warning("could not apply %d admitted events (%s); retrying in %.1fs", len(batch), error, self._retry_delay)
        for d in batch:
            await d.msg.nak(delay=self._retry_delay)

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
