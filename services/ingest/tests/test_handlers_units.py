"""Small parts of the batch handler checked against what nats-py itself reads off real messages."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from sqlalchemy.dialects import sqlite

from ingest import queries, repository
from ingest.delivery import delivery_info
from ingest.domain import LateAdmission, NewClaim
from ingest.repository import DecisionRecord, StoredDecision, WriteConflict, sqlite_datetime
from shinchoku_runtime.db import make_engine


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


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 26, 15, 10, 28, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    ],
)
def test_sqlite_datetimes_are_written_as_sqlalchemy_writes_them(moment: datetime) -> None:
    dialect = sqlite.dialect()
    process = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    assert sqlite_datetime(moment) == process(moment)


def test_the_sqlite_batch_write_reads_back_exactly(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ingest.sqlite'}")
    repository.create_schema(engine)
    received = datetime(2026, 11, 26, 15, 10, 28, 5, tzinfo=UTC)
    row: dict[str, Any] = {
        "stream_seq": 7,
        "event_id": "0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11",
        "outcome": "rejected",
        "reason": "not_lead",
        "message": "主担当外 (not_lead): …",
        "subject": "status.mof.1-25",
        "agency": "mof",
        "measure_id": "1-25",
        "received_at": received,
        "admitted_at": None,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "content_hash": "c" * 32,
        "rejection_id": "STATUS-7",
        "payload": b"{\xe6\x97\xa5}",
    }
    claim = NewClaim(row["event_id"], "c" * 32, "mof", 7, None)
    repository.write_batch(engine, decisions=[DecisionRecord(**row)], claims=[claim], late_admissions=[])
    stored = repository.load_stored(engine, seqs=[7])[7]
    assert stored == StoredDecision(**{k: v for k, v in row.items() if k != "payload"})
    (record,), total = queries.list_rejections(engine, agency="mof", reason=None, limit=10, offset=0)
    assert (record.payload, total) == (row["payload"], 1)
    key = ("mof", row["event_id"])
    assert repository.load_priors(engine, keys=[key])[key].content_hash == "c" * 32
    # The same message again, or the same event id claimed again: nothing is written, the batch is refused.
    with pytest.raises(WriteConflict):
        repository.write_batch(engine, decisions=[DecisionRecord(**row)], claims=[], late_admissions=[])
    with pytest.raises(WriteConflict):
        repository.write_batch(
            engine, decisions=[DecisionRecord(**{**row, "stream_seq": 8})], claims=[claim], late_admissions=[]
        )
    assert repository.load_stored(engine, seqs=[8]) == {}
    # A late admission by an identical resend.
    repository.write_batch(
        engine,
        decisions=[DecisionRecord(**{**row, "stream_seq": 9, "outcome": "admitted", "admitted_at": received})],
        claims=[],
        late_admissions=[LateAdmission("mof", row["event_id"], 9)],
    )
    assert repository.load_priors(engine, keys=[key])[key].admitted
