"""The runtime's pull loop (`PullConsumer`) against a real nats-server: a durable consumer followed, a replay read."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from shinchoku_runtime.batchpublish import ack_all
from shinchoku_runtime.pull import PullConsumer


async def _stream(nc: Client, count: int, *, start: int = 0) -> None:
    js = nc.jetstream()
    if start == 0:
        await js.add_stream(StreamConfig(name="PULL", subjects=["pull.>"]))
    for i in range(start, start + count):
        await js.publish(f"pull.{i}", str(i).encode(), headers={"Nats-Msg-Id": f"m{i}"})


def _durable() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name="follower",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        filter_subject="pull.>",
    )


async def test_a_durable_consumer_is_followed_in_batches_and_acknowledged(admin_nc: Client) -> None:
    await _stream(admin_nc, 25)
    consumer = PullConsumer(admin_nc, stream="PULL", config=_durable(), batch=10, heartbeat=0.5)
    seen: list[Msg] = []
    sizes: list[int] = []

    async def handle(batch: list[Msg]) -> None:
        sizes.append(len(batch))
        seen.extend(batch)
        await ack_all(admin_nc, batch)
        if len(seen) >= 25:
            consumer.stop()

    await asyncio.wait_for(consumer.follow(handle), 20)
    assert [m.data for m in seen] == [str(i).encode() for i in range(25)]
    assert max(sizes) <= 2 * 10  # what two requests in flight deliver at most
    assert not consumer.running
    await admin_nc.flush()
    deadline = time.monotonic() + 10
    while (info := await admin_nc.jetstream().consumer_info("PULL", "follower")).num_ack_pending:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert info.ack_floor.stream_seq == 25


async def test_a_lone_message_is_handed_over_at_once(admin_nc: Client) -> None:
    await _stream(admin_nc, 0)
    consumer = PullConsumer(admin_nc, stream="PULL", config=_durable(), batch=1000, expires=10.0)
    arrived = asyncio.Event()
    handed: list[float] = []

    async def handle(batch: list[Msg]) -> None:
        handed.append(time.monotonic())
        await ack_all(admin_nc, batch)
        arrived.set()

    following = asyncio.create_task(consumer.follow(handle))
    try:
        while not consumer.running:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the pull requests are waiting on the server
        published = time.monotonic()
        await _stream(admin_nc, 1, start=1)
        await asyncio.wait_for(arrived.wait(), 5)
        assert handed[0] - published < 1.0  # not held back until the request's 10 s expire
    finally:
        consumer.stop()
        await asyncio.wait_for(following, 10)


async def test_a_replay_reads_to_the_end_and_then_what_came_since(admin_nc: Client) -> None:
    await _stream(admin_nc, 23)
    reader = PullConsumer.replay(admin_nc, stream="PULL", name="replay", filter_subject="pull.>", start_seq=3, batch=5)
    await reader.open()
    try:
        first = [payload for batch in [b async for b in reader.batches()] for payload in batch]
        await _stream(admin_nc, 4, start=23)
        then = [payload for batch in [b async for b in reader.batches()] for payload in batch]
    finally:
        await reader.close()
    assert first == [(f"pull.{i}".encode(), str(i).encode()) for i in range(2, 23)]
    assert then == [(f"pull.{i}".encode(), str(i).encode()) for i in range(23, 27)]
    names = [c.name async for c in _consumers(admin_nc)]
    assert "replay" not in names  # the ephemeral consumer is deleted on close


async def _consumers(nc: Client):  # type: ignore[no-untyped-def]
    for info in await nc.jetstream().consumers_info("PULL"):
        yield info
