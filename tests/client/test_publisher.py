"""The ministry client's batches against a real nats-server: atomic where the stream allows it (one write, one
acknowledgement, consecutive sequences), one by one where it does not, and a denied subject fails fast."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client

from contracts.events import StatusEvent
from contracts.streams import agency_inbox_prefix
from shinchoku_client import AgencyPublisher, PermissionDenied, Sent
from shinchoku_client.batch import supports_atomic
from shinchoku_runtime.natsserver import NatsServer


def report(agency: str, measure: str, status: str = "on_track") -> StatusEvent:
    return StatusEvent.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "measure_id": measure,
            "agency": agency,
            "fiscal_year": 2024,
            "quarter": 3,
            "status": status,
            "reported_at": datetime(2024, 12, 20, 8, tzinfo=UTC),
        }
    )


#: Where mof's reports are stored (its share of STATUS, which STATUS copies in).
MOF_STREAM = "STATUS_mof"


async def stored(admin_nc: Client) -> list[dict[str, Any]]:
    """Every message mof's stream stored (sequence, subject, payload), in order."""
    js = admin_nc.jetstream()
    info = await js.stream_info(MOF_STREAM)
    out: list[dict[str, Any]] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(MOF_STREAM, seq)
        out.append({"seq": seq, "subject": msg.subject, "data": msg.data})
    return out


async def test_a_batch_is_stored_atomically_in_order(nats_server: NatsServer, admin_nc: Client) -> None:
    events = [report("mof", m) for m in ("1-25", "1-26", "1-27", "1-28", "1-29")]
    heard: list[Sent] = []
    async with AgencyPublisher(nats_server.plain_url, agency="mof", password=nats_server.passwords["mof"]) as p:
        assert p._nc is not None
        assert supports_atomic(p._nc), f"nats-server {p._nc.connected_server_version}"
        sent = await p.publish_batch(events, on_sent=heard.append)
    assert [s.index for s in sent] == [0, 1, 2, 3, 4]
    assert all(s.ok and s.atomic for s in sent)
    assert [s.seq for s in sent] == [1, 2, 3, 4, 5]
    assert sorted(s.index for s in heard) == [0, 1, 2, 3, 4]
    messages = await stored(admin_nc)
    assert [m["data"] for m in messages] == [e.model_dump_json().encode() for e in events]
    assert [m["subject"] for m in messages] == [f"status.mof.{e.measure_id}" for e in events]


async def test_a_stream_that_refuses_batches_gets_the_reports_one_by_one(
    nats_server: NatsServer, admin_nc: Client
) -> None:
    js = admin_nc.jetstream()
    config = (await js.stream_info(MOF_STREAM)).config
    await js.update_stream(dataclasses.replace(config, allow_atomic=False))
    assert not (await js.stream_info(MOF_STREAM)).config.allow_atomic
    events = [report("mof", m) for m in ("1-25", "1-26", "1-27")]
    async with AgencyPublisher(nats_server.plain_url, agency="mof", password=nats_server.passwords["mof"]) as p:
        sent = await p.publish_batch(events)
    assert all(s.ok and not s.atomic for s in sent), sent
    assert sorted(m["data"] for m in await stored(admin_nc)) == sorted(e.model_dump_json().encode() for e in events)


async def test_atomic_false_publishes_one_by_one(nats_server: NatsServer, admin_nc: Client) -> None:
    events = [report("mof", m) for m in ("1-25", "1-26")]
    async with AgencyPublisher(nats_server.plain_url, agency="mof", password=nats_server.passwords["mof"]) as p:
        sent = await p.publish_batch(events, atomic=False)
    assert all(s.ok and not s.atomic for s in sent)
    assert len(await stored(admin_nc)) == 2


async def test_a_batch_on_another_agencys_subject_fails_fast_and_stores_nothing(
    nats_server: NatsServer, admin_nc: Client
) -> None:
    events = [report("mof", "1-25")]
    # mof's reports over mic's connection: the broker refuses the subjects.
    as_mic = {"user": "mic", "password": nats_server.passwords["mic"], "inbox_prefix": agency_inbox_prefix("mic")}
    publisher = AgencyPublisher(nats_server.plain_url, agency="mof", connect_options=as_mic)
    t0 = time.monotonic()
    async with publisher:
        with pytest.raises(PermissionDenied, match=r"status\.mof\.1-25"):
            await publisher.publish_batch(events)
    assert time.monotonic() - t0 < publisher.timeout
    assert await stored(admin_nc) == []
