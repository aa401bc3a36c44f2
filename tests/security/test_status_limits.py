"""The broker refuses what ingest would refuse for size, and bounds what one agency can store, per measure and in
all: the publisher hears the refusal at once (a JetStream error, never a timeout), nothing is stored, and every
other agency and measure goes on."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.js.errors import APIError

from contracts.admission import MAX_PAYLOAD_BYTES
from contracts.streams import (
    AGENCY_STATUS_MAX_BYTES,
    AGENCY_STATUS_MAX_MSGS,
    STATUS_MAX_MSGS_PER_SUBJECT,
    STATUS_STREAM,
    agency_inbox_prefix,
    agency_status_stream,
    status_subject,
)
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import status_sequence


async def _agency(server: NatsServer, agency: str) -> Client:
    return await connect(
        server.plain_url,
        name=f"test-{agency}",
        user=agency,
        password=server.passwords[agency],
        inbox_prefix=agency_inbox_prefix(agency),
    )


async def test_a_message_larger_than_ingest_takes_is_refused_by_the_broker(
    nats_server: NatsServer, admin_nc: Client
) -> None:
    nc = await _agency(nats_server, "mof")
    subject = status_subject("mof", "1-25")
    try:
        js = nc.jetstream()
        with pytest.raises(APIError, match="message size exceeds maximum allowed"):
            await js.publish(subject, b"x" * (MAX_PAYLOAD_BYTES * 2), stream=agency_status_stream("mof"))
        ack = await js.publish(subject, b"x" * MAX_PAYLOAD_BYTES, stream=agency_status_stream("mof"))
        assert ack.seq == 1  # the largest message ingest decides still goes through
    finally:
        await nc.close()
    # ... and reaches STATUS (whose copy carries a source header on top: STATUS takes that much more).
    assert await status_sequence(admin_nc.jetstream(), subject, ack) == 1
    assert (await admin_nc.jetstream().stream_info(STATUS_STREAM.name)).state.messages == 1


async def test_one_agency_filling_one_measure_stops_there(nats_server: NatsServer, admin_nc: Client) -> None:
    runaway, other = await _agency(nats_server, "mof"), await _agency(nats_server, "digital")
    try:
        js = runaway.jetstream(publish_async_max_pending=500)
        subject = status_subject("mof", "1-25")
        for _ in range(STATUS_MAX_MSGS_PER_SUBJECT):
            await js.publish_async(subject, b"{}", stream=agency_status_stream("mof"))
        await js.publish_async_completed()
        with pytest.raises(APIError, match="maximum messages per subject exceeded"):
            await js.publish(subject, b"{}", stream=agency_status_stream("mof"))
        # The same agency's other measures, and the other agencies, go on.
        last = await js.publish(status_subject("mof", "1-26"), b"{}", stream=agency_status_stream("mof"))
        await other.jetstream().publish(
            status_subject("digital", "1-25"), b"{}", stream=agency_status_stream("digital")
        )
    finally:
        await asyncio.gather(runaway.close(), other.close())
    await status_sequence(admin_nc.jetstream(), status_subject("mof", "1-26"), last)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        info = await admin_nc.jetstream().stream_info(STATUS_STREAM.name, subjects_filter=">")
        if info.state.messages >= STATUS_MAX_MSGS_PER_SUBJECT + 2 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert info.state.subjects == {
        subject: STATUS_MAX_MSGS_PER_SUBJECT,
        status_subject("mof", "1-26"): 1,
        status_subject("digital", "1-25"): 1,
    }


async def test_each_agency_has_a_bounded_share_by_default(admin_nc: Client) -> None:
    """Every agency's own stream is bounded in bytes and messages with discard new, and STATUS sources each."""
    js = admin_nc.jetstream()
    status = (await js.stream_info(STATUS_STREAM.name)).config
    sources = sorted(s.name for s in status.sources or [])
    from contracts.agencies import Agency

    assert sources == sorted(agency_status_stream(a) for a in Agency)
    for agency in Agency:
        config = (await js.stream_info(agency_status_stream(agency))).config
        assert config.subjects == [f"status.{agency.value}.>"]
        assert (config.max_bytes, config.max_msgs) == (AGENCY_STATUS_MAX_BYTES, AGENCY_STATUS_MAX_MSGS)
        assert config.discard == "new"
        # STATUS takes whatever an agency's stream took, with the source header on top: a copy is never refused.
        assert status.max_msg_size is not None
        assert config.max_msg_size is not None
        assert status.max_msg_size >= config.max_msg_size + 4096
