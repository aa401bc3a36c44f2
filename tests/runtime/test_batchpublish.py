"""Atomic batches on a real nats-server: all or nothing, one PubAck, duplicates fall back per message."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.streams import agency_inbox_prefix
from shinchoku_runtime.batchpublish import MAX_BATCH, BatchPublishError, OutMessage, ack_all, publish_atomic
from shinchoku_runtime.natsserver import NatsServer


def _accepted(ids: list[str]) -> list[OutMessage]:
    return [OutMessage(f"accepted.mof.1-{i}", f"event {i}".encode(), {"Nats-Msg-Id": i}) for i in ids]


async def test_a_batch_is_stored_once_and_a_retry_is_deduplicated(admin_nc: Client) -> None:
    js = admin_nc.jetstream()
    ack = await publish_atomic(admin_nc, "ACCEPTED", _accepted(["1", "2", "3"]))
    assert (ack.count, ack.last_seq, ack.fell_back) == (3, 3, False)
    # The same batch again (an earlier commit whose PubAck was lost), plus one new message.
    again = await publish_atomic(admin_nc, "ACCEPTED", _accepted(["1", "2", "3", "4"]))
    assert again.fell_back
    info = await js.stream_info("ACCEPTED")
    assert info.state.messages == 4
    messages = [await js.get_msg("ACCEPTED", seq) for seq in range(1, 5)]
    assert [m.data for m in messages] == [b"event 1", b"event 2", b"event 3", b"event 4"]


async def test_batches_larger_than_the_server_limit_are_chunked(admin_nc: Client) -> None:
    ids = [str(i) for i in range(MAX_BATCH + 250)]
    ack = await publish_atomic(admin_nc, "ACCEPTED", _accepted(ids))
    assert ack.count == len(ids)
    assert (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages == len(ids)


async def test_an_agency_publishes_a_batch_on_its_own_subjects(nats_server: NatsServer, admin_nc: Client) -> None:
    nc = await nats.connect(
        nats_server.plain_url,
        user="mof",
        password=nats_server.passwords["mof"],
        inbox_prefix=agency_inbox_prefix("mof"),
    )
    try:
        ack = await publish_atomic(nc, "STATUS_mof", [OutMessage(f"status.mof.1-{i}", b"{}") for i in range(1, 51)])
        assert (ack.stream, ack.count) == ("STATUS_mof", 50)
    finally:
        await nc.close()
    # STATUS copies the agency's stream in: all 50, in a moment.
    deadline = asyncio.get_running_loop().time() + 10
    while (await admin_nc.jetstream().stream_info("STATUS")).state.messages < 50:
        assert asyncio.get_running_loop().time() < deadline, "STATUS did not copy the batch in"
        await asyncio.sleep(0.05)
    assert (await admin_nc.jetstream().stream_info("STATUS")).state.messages == 50


async def test_a_refused_batch_stores_nothing(admin_nc: Client) -> None:
    huge = OutMessage("accepted.mof.1-1", b"x" * (3 * 1024 * 1024), {"Nats-Msg-Id": "huge"})
    with pytest.raises(BatchPublishError):
        await publish_atomic(admin_nc, "ACCEPTED", [*_accepted(["a", "b"]), huge])
    assert (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages == 0


async def test_the_block_path_stores_what_the_public_path_stores(admin_nc: Client) -> None:
    """Messages written as one block and ones published by nats-py arrive with the same subject, headers, data."""
    js = admin_nc.jetstream()
    headers = {"Nats-Msg-Id": "", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    block = [
        OutMessage(f"accepted.mof.1-{i}", f"日本語 {i}".encode(), {**headers, "Nats-Msg-Id": f"b{i}"}) for i in range(3)
    ]
    await publish_atomic(admin_nc, "ACCEPTED", block)
    # A header value nats-py would strip keeps these on the public path.
    public = [
        OutMessage(f"accepted.mof.1-{i}", f"日本語 {i}".encode(), {**headers, "Nats-Msg-Id": f"p{i}", "X-Pad": " x "})
        for i in range(3)
    ]
    await publish_atomic(admin_nc, "ACCEPTED", public)
    stored = [await js.get_msg("ACCEPTED", seq) for seq in range(1, 7)]
    for b, p in zip(stored[:3], stored[3:], strict=True):
        assert (b.subject, b.data) == (p.subject, p.data)
        assert b.headers is not None
        assert p.headers is not None
        assert b.headers["traceparent"] == p.headers["traceparent"] == headers["traceparent"]
        assert b.headers["Nats-Msg-Id"][1:] == p.headers["Nats-Msg-Id"][1:]
    assert [m.headers["Nats-Batch-Sequence"] for m in stored if m.headers] == ["1", "2", "3"] * 2


async def test_ack_all_acknowledges_every_message(admin_nc: Client) -> None:
    js = admin_nc.jetstream()
    await publish_atomic(admin_nc, "ACCEPTED", _accepted([str(i) for i in range(20)]))
    await js.add_consumer("ACCEPTED", ConsumerConfig(durable_name="acks", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    sub = await js.pull_subscribe_bind("acks", "ACCEPTED")
    msgs = await sub.fetch(20, timeout=5)
    assert len(msgs) == 20
    await ack_all(admin_nc, msgs[:15])
    await msgs[15].ack()
    await ack_all(admin_nc, msgs)  # the ones acked already are not acked again
    await admin_nc.flush()
    # The server takes the acks in order, but its consumer applies them a moment later (another goroutine):
    # poll for a while instead of reading the state once (read at once under load, it once showed none yet).
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        info = await js.consumer_info("ACCEPTED", "acks")
        if info.num_ack_pending == 0 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (info.num_ack_pending, info.num_redelivered, info.ack_floor.stream_seq) == (0, 0, 20)
