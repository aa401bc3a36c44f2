"""Small parts of the batch handler checked against what nats-py itself reads off real messages."""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from ingest.handlers import delivery_info


async def test_delivery_info_reads_what_nats_py_reads(admin_nc: Client) -> None:
    js = admin_nc.jetstream()
    await js.add_stream(StreamConfig(name="UNIT", subjects=["unit.>"]))
    for i in range(3):
        await js.publish(f"unit.{i}", b"x", stream="UNIT")
    await js.add_consumer("UNIT", ConsumerConfig(durable_name="u", ack_policy=AckPolicy.EXPLICIT, ack_wait=1))
    sub = await js.pull_subscribe_bind("u", "UNIT")
    first = await sub.fetch(3, timeout=5)
    for msg in first:
        await msg.nak()
    again = await sub.fetch(3, timeout=5)  # delivered twice now
    for msg in [*first, *again]:
        fresh = Msg(admin_nc, subject=msg.subject, reply=msg.reply, data=msg.data)  # nothing memoised
        meta = fresh.metadata
        assert delivery_info(msg) == (meta.sequence.stream, meta.num_delivered, meta.timestamp)
    assert {delivery_info(m)[1] for m in again} == {2}


def test_a_domain_reply_is_read_by_nats_py(admin_nc: Client) -> None:
    reply = "$JS.ACK.hub.ACCHASH.STATUS.ingest.3.42.40.1795704531200000000.7.tok"
    msg = Msg(admin_nc, subject="status.mof.1-25", reply=reply, data=b"")
    seq, delivered, stored = delivery_info(msg)
    assert (seq, delivered) == (42, 3)
    assert stored == msg.metadata.timestamp
