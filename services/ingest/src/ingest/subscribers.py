"""The durable pull consumer `ingest` on STATUS, shared by every ingest replica.

Consumer settings, chosen together:

- `ack_wait` 30 s: a batch normally takes well under a second; the slowest legitimate batch (catalog
  timeout 2 s + SQLite busy timeout 5 s + PubAck timeout 10 s) still finishes inside it. It only fires
  when a replica died or hung, and then another replica should get the messages soon.
- No consumer `backoff` list: ingest delays its own retries with `nak(delay)` growing 1, 2, 4 … 60 s per
  delivery (`retry_delay_max`); an ack timeout (dead replica) should be retried promptly, not later.
- `max_deliver` 30: with those delays a message survives about 25 minutes of database or NATS outage
  before it is dead-lettered as `undeliverable` on REJECTED (on its last delivery, by ingest itself).
  Meanwhile the consumer slows itself down (`BatchHandler._pause_if_failing`) so the outage does not burn
  the deliveries of the whole backlog.
- `max_ack_pending` 20 000: room for several replicas' batches in flight (batches of 1,000, 4 in flight each).
- Explicit acks, sent by the handler (FastStream's ack policy is MANUAL): FastStream's default would
  terminate a message whose handler raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faststream.middlewares import AckPolicy as FastStreamAckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.streams import INGEST_DURABLE, STATUS_STREAM, agency_inbox_prefix
from ingest.config import IngestSettings
from ingest.handlers import BatchHandler
from shinchoku_runtime.adapters.faststream_nats import guard_fetch_timeouts, pull_subscriptions
from shinchoku_runtime.adapters.nats_py import fast_next_msg


def consumer_config(settings: IngestSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=INGEST_DURABLE,
        description="ingest: decides every status event exactly once (shared by all ingest replicas)",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
        # No filter: every subject of STATUS (the ministries' reports and the secretariat's commands), in one
        # order. Not `filter_subjects=` listing them: nats-server 2.15 matches each message against a consumer's
        # several filters, a cost of ≈25 µs of its CPU per message (measured on reporting's consumer of ACCEPTED,
        # bench/reporting.py: 32 → 7 µs per event); a consumer without a filter skips that.
    )


async def ensure_consumer(js: JetStreamContext, settings: IngestSettings) -> None:
    """Create the durable consumer, or bring a live one to these settings (the server updates it in place)."""
    await js.add_consumer(STATUS_STREAM.name, consumer_config(settings))


async def raw_batch(message: Any) -> list[Msg]:
    """Hand the handler the nats-py messages themselves: ingest decodes and validates each one."""
    raw: list[Msg] = message.raw_message
    return raw


def register(broker: NatsBroker, settings: IngestSettings, handler: Callable[[], BatchHandler]) -> None:
    """Subscribe the batch handler; `handler` is called once the broker is connected."""

    @broker.subscriber(
        STATUS_STREAM.subjects[0],
        stream=JStream(STATUS_STREAM.name, declare=False),
        durable=INGEST_DURABLE,
        config=consumer_config(settings),
        pull_sub=PullSub(batch_size=settings.batch_size, timeout=settings.batch_wait, batch=True),
        ack_policy=FastStreamAckPolicy.MANUAL,
        # The pull's own inbox: under the connection's prefix (`_INBOX_ingest`), the only one ingest may hear.
        inbox_prefix=f"{agency_inbox_prefix(settings.nats_user)}.".encode() if settings.nats_user else b"_INBOX.",
        decoder=raw_batch,
        title="ingest:status",
        description="Decides every STATUS message: admitted on ACCEPTED or rejected with a reason on REJECTED",
    )
    async def on_status(batch: list[Msg]) -> None:
        await handler().handle(batch)


def tune_pull_fetch(broker: NatsBroker) -> None:
    """Make FastStream's batch pulls keep their batches and receive fast (call after `broker.start()`).

    Two library hooks, fenced in the runtime: `faststream.batch-pull-subscription` (a pull request expiring
    mid-batch no longer loses the batch until `ack_wait`) and `nats-py.fast-next-msg` (messages that have
    arrived are handed over without a task and a timer each); see `shinchoku_runtime.adapters`.
    """
    for pull in pull_subscriptions(broker):
        guard_fetch_timeouts(pull)
        fast_next_msg(pull)
