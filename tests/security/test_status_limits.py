"""The broker refuses what ingest would refuse for size, and bounds what one agency can store per measure, so a
runaway client cannot fill the disk for everyone: the publisher hears the refusal, nothing is stored, and every
other agency and measure goes on."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.js.errors import APIError

from contracts.admission import MAX_PAYLOAD_BYTES
from contracts.streams import STATUS_MAX_MSGS_PER_SUBJECT, STATUS_STREAM, agency_inbox_prefix, status_subject
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.natsserver import NatsServer


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
    try:
        js = nc.jetstream()
        with pytest.raises(APIError, match="message size exceeds maximum allowed"):
            await js.publish(status_subject("mof", "1-25"), b"x" * (MAX_PAYLOAD_BYTES * 2), stream=STATUS_STREAM.name)
        ack = await js.publish(status_subject("mof", "1-25"), b"x" * MAX_PAYLOAD_BYTES, stream=STATUS_STREAM.name)
        assert ack.seq == 1  # the largest message ingest decides still goes through
    finally:
        await nc.close()
    assert (await admin_nc.jetstream().stream_info(STATUS_STREAM.name)).state.messages == 1


async def test_one_agency_filling_one_measure_stops_there(nats_server: NatsServer, admin_nc: Client) -> None:
    runaway, other = await _agency(nats_server, "mof"), await _agency(nats_server, "digital")
    try:
        js = runaway.jetstream(publish_async_max_pending=500)
        subject = status_subject("mof", "1-25")
        for _ in range(STATUS_MAX_MSGS_PER_SUBJECT):
            await js.publish_async(subject, b"{}", stream=STATUS_STREAM.name)
        await js.publish_async_completed()
        with pytest.raises(APIError, match="maximum messages per subject exceeded"):
            await js.publish(subject, b"{}", stream=STATUS_STREAM.name)
        # The same agency's other measures, and the other agencies, go on.
        await js.publish(status_subject("mof", "1-26"), b"{}", stream=STATUS_STREAM.name)
        await other.jetstream().publish(status_subject("digital", "1-25"), b"{}", stream=STATUS_STREAM.name)
    finally:
        await asyncio.gather(runaway.close(), other.close())
    info = await admin_nc.jetstream().stream_info(STATUS_STREAM.name, subjects_filter=">")
    assert info.state.subjects == {
        subject: STATUS_MAX_MSGS_PER_SUBJECT,
        status_subject("mof", "1-26"): 1,
        status_subject("digital", "1-25"): 1,
    }
