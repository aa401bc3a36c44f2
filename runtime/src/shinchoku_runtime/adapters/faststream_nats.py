"""FastStream internals ingest's batch pull relies on, and nowhere else. Verified on FastStream 0.7.8 (bounded <0.8)
with nats-py 2.16.0.

FastStream 0.7.8's `PullSub(batch=True)` subscriber is what ingest consumes STATUS with (its public API: a
durable pull consumer, batches handed to the handler, manual acks). Two things it does not do, so two hooks:

* `batch-pull-subscription`: its consume loop catches `nats.errors.TimeoutError` around `fetch`, but nats-py
  2.16 also raises the builtin `TimeoutError` when a lingering pull request runs out of time. That escapes
  FastStream's loop: its consume task dies and restarts, and the messages already fetched for that batch sit
  unacknowledged until `ack_wait` redelivers them (30 s late). `guard_fetch_timeouts` wraps the nats-py pull
  subscription FastStream keeps in `subscriber.subscription` so the loop hands over the batch.
* It gathers each batch through nats-py's `fetch`, whose per-message cost `nats-py.fast-next-msg` removes
  (see `shinchoku_runtime.adapters.nats_py`); this module finds the pull subscriptions it applies to.

FastStream 0.7.8's batch pull is the public API here, and ingest keeps using it; it does not do what these hooks
do (its loop still catches only `nats.errors.TimeoutError`, and it fetches through nats-py's `fetch`). Measured
with `bench/hooks.py` (50,000 messages, batches of 1,000 fetched and acked): 33.8 µs of client CPU a message as
FastStream comes, 12.1 µs with the hooks; hence they stay.
"""

from __future__ import annotations

from typing import Any

from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from shinchoku_runtime.adapters.hooks import Hook, holds, need, register, source_says

LIBRARY = "faststream"
VERIFIED_ON = "0.7"

BATCH_PULL_SUBSCRIPTION = "faststream.batch-pull-subscription"


def _probe_batch_pull_subscription() -> None:
    broker = NatsBroker("nats://127.0.0.1:4222")

    @broker.subscriber(
        "probe.>", stream=JStream("PROBE", declare=False), durable="p", pull_sub=PullSub(batch_size=2, batch=True)
    )
    async def handler(batch: list[Any]) -> None:
        del batch

    (subscriber,) = broker.subscribers
    need(BATCH_PULL_SUBSCRIPTION, isinstance(subscriber, BatchPullStreamSubscriber), f"a {type(subscriber).__name__}")
    need(BATCH_PULL_SUBSCRIPTION, hasattr(subscriber, "subscription"), "no `subscription` on a batch pull subscriber")
    loop = BatchPullStreamSubscriber._consume_pull
    source_says(BATCH_PULL_SUBSCRIPTION, loop, "self.subscription.fetch(", "the batch loop no longer fetches from it")


register(
    Hook(
        BATCH_PULL_SUBSCRIPTION,
        LIBRARY,
        VERIFIED_ON,
        ("BatchPullStreamSubscriber.subscription", "BatchPullStreamSubscriber._consume_pull"),
        "the nats-py pull subscription a batch subscriber fetches from, to keep batches whose pull request expired",
        "a pull request expiring mid-batch restarts FastStream's loop; that batch comes back after ack_wait",
        _probe_batch_pull_subscription,
    )
)


def pull_subscriptions(broker: NatsBroker) -> list[JetStreamContext.PullSubscription]:
    """The nats-py pull subscriptions of the broker's pull subscribers (once `broker.start()` made them)."""
    if not holds(BATCH_PULL_SUBSCRIPTION):
        return []
    found = []
    for subscriber in broker.subscribers:
        pull = getattr(subscriber, "subscription", None)
        if isinstance(pull, JetStreamContext.PullSubscription):
            found.append(pull)
    return found


def guard_fetch_timeouts(pull: JetStreamContext.PullSubscription) -> None:
    """Make `pull.fetch` raise nats' `TimeoutError` for the builtin one, which FastStream's batch loop catches."""
    if getattr(pull, "_shinchoku_timeouts_guarded", False):
        return
    original = pull.fetch

    async def fetch(batch: int = 1, timeout: float | None = 5, heartbeat: float | None = None) -> list[Msg]:
        try:
            messages: list[Msg] = await original(batch, timeout, heartbeat)
        except NatsTimeoutError:
            raise
        except TimeoutError as e:
            raise NatsTimeoutError from e
        return messages

    pull.fetch = fetch  # type: ignore[method-assign]
    pull._shinchoku_timeouts_guarded = True  # type: ignore[attr-defined]
