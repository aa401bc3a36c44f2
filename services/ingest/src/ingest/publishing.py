"""Publishing a batch's outcomes: one atomic batch per stream, its PubAck awaited behind the next batch.

With `sync_interval: always` each stored write is an fsync: an atomic batch is one write and one PubAck
for all its messages. A batch holding a message the stream already has (a redelivery whose earlier publish
was stored) is refused whole by the broker and republished message by message; the duplicate window drops
the copies. A missing or refused PubAck is a NATS fault for every message of its batch (they are retried
later) and makes the stream unhealthy until its next PubAck.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanContext

from contracts.streams import MSG_ID_HEADER
from ingest.delivery import Delivery, Fault, FaultKind
from ingest.domain import clean
from ingest.health import WorkHealth
from ingest.records import Outgoing
from shinchoku_runtime.batchpublish import BatchAck, OutMessage, publish_atomic
from shinchoku_runtime.propagation import inject_span_context


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
    """One stream's atomic batch, waiting for its PubAck."""

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

    def add(self, d: Delivery, out: Outgoing, span: SpanContext | None) -> None:
        headers = {MSG_ID_HEADER: out.msg_id}
        inject_span_context(headers, span or d.span.context)
        batch = self._streams.get(out.stream)
        if batch is None:
            batch = self._streams[out.stream] = _StreamBatch()
        batch.messages.append(OutMessage(out.subject, out.payload, headers))
        batch.sent.append(Sent(d, span, out.subject))

    def streams(self) -> Iterable[tuple[str, list[OutMessage], list[Sent]]]:
        for stream, batch in self._streams.items():
            yield stream, batch.messages, batch.sent


class Publisher:
    def __init__(self, nc: Client, health: WorkHealth, *, timeout: float) -> None:
        self._nc = nc
        self._health = health
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
                self._health.published(f.stream)
                results.append(Published(f.stream, f.sent, f.started_ns, ended, None, f.ack.result().fell_back))
                continue
            detail = "no PubAck (timeout)" if isinstance(error, NatsTimeoutError) else f"publish failed: {error!r}"
            fault = Fault(FaultKind.nats, detail)
            for sent in f.sent:
                sent.delivery.fail(fault)
            self._health.publish_failed(f.stream, clean(detail, 200))
            results.append(Published(f.stream, f.sent, f.started_ns, ended, detail, False))
        return results
