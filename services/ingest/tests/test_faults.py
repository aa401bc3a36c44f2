"""Faults during processing lose nothing and duplicate nothing: database outages, NATS restarts, a killed
ingest, a publish that failed after the commit, and two replicas racing on one durable consumer.

Tests whose behaviour depends on the database run on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from contracts.streams import ACCEPTED_STREAM
from ingest.testing import (
    SAMPLE_MEASURES,
    assert_exactly_once,
    event_body,
    publish_events,
    store_counts,
    stream_messages,
    wait_for_count,
)
from shinchoku.client import AgencyPublisher
from shinchoku_runtime.db import normalise_url
from shinchoku_runtime.natsclient import ensure_streams, stream_config
from shinchoku_runtime.testing import pg_admin_url

Publishers = Callable[[str], Awaitable[AgencyPublisher]]


@pytest.fixture
def ingest_db_url(database_url: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL."""
    return database_url


# --- the database goes away ------------------------------------------------------------------------------------


@contextlib.contextmanager
def database_outage(url: str) -> Iterator[None]:
    """Make the store unavailable for real, then bring it back.

    SQLite: another process holds an exclusive lock (as a backup or a migration would), so every write
    times out with "database is locked". PostgreSQL: the database refuses new connections and every
    existing one is killed.
    """
    if url.startswith("sqlite"):
        lock = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.execute("COMMIT")
            lock.close()
        return
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(normalise_url(pg_admin_url()), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
        )
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


async def test_a_database_outage_loses_nothing_and_duplicates_nothing(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client, ingest_db_url: str
) -> None:
    running = await start_ingest(sqlite_busy_timeout_ms=200, retry_delay_max=0.5)
    mof = await publisher_for("mof")
    before = [event_body() for _ in range(40)]
    during = [event_body() for _ in range(60)]
    await publish_events(mof, before)
    await wait_for_count(admin_nc, "ACCEPTED", len(before))
    with database_outage(ingest_db_url):
        await publish_events(mof, during + during[:10])  # ten identical resends in the middle of it
        await asyncio.sleep(1.5)
        health = await running.http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["checks"]["database"] is False
        assert (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages == len(before)
    after = [event_body() for _ in range(20)]
    await publish_events(mof, after + before[:5])
    event_ids = {b["event_id"] for b in before + during + after}
    await assert_exactly_once(admin_nc, ingest_db_url, event_ids, duplicates=15)
    metrics = (await running.http.get("/metrics")).text
    assert 'shinchoku_ingest_transient_faults_total{fault="database"}' in metrics
    assert (await running.http.get("/healthz")).status_code == 200


async def test_a_stream_that_refuses_writes_makes_ingest_unready_and_loses_nothing(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client, ingest_db_url: str
) -> None:
    """ACCEPTED refuses new messages (as a full disk or a lost quorum would): /healthz says so, nothing is acked
    until the stream takes writes again, and then every event is admitted once."""
    running = await start_ingest(retry_delay_max=0.5)
    js = admin_nc.jetstream()
    mof = await publisher_for("mof")
    before = [event_body() for _ in range(20)]
    await publish_events(mof, before)
    await wait_for_count(admin_nc, "ACCEPTED", len(before))
    assert (await running.http.get("/healthz")).json()["checks"]["jetstream"] is True

    limited = stream_config(ACCEPTED_STREAM)
    limited.max_msgs = len(before)
    limited.discard = DiscardPolicy.NEW
    await js.update_stream(limited)
    during = [event_body() for _ in range(30)]
    await publish_events(mof, during)
    deadline = asyncio.get_running_loop().time() + 15
    while (health := await running.http.get("/healthz")).status_code == 200:
        assert asyncio.get_running_loop().time() < deadline, "ingest stayed ready while ACCEPTED refused writes"
        await asyncio.sleep(0.1)
    body = health.json()
    assert health.status_code == 503
    assert body["checks"] == {"nats": True, "database": True, "jetstream": False}
    assert list(body["publishing"]) == ["ACCEPTED"]
    assert (await js.stream_info("ACCEPTED")).state.messages == len(before)
    assert (await js.consumer_info("STATUS", "ingest")).num_ack_pending > 0  # put back, not acked

    await ensure_streams(js)  # the shared definition again
    event_ids = {b["event_id"] for b in before + during}
    await assert_exactly_once(admin_nc, ingest_db_url, event_ids, duplicates=0)
    health = await running.http.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["publishing"] == {}


async def test_a_message_no_replica_ever_settles_is_recorded_undeliverable(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client, ingest_db_url: str
) -> None:
    """Each replica that holds one message dies or hangs before deciding it (here: the handler drops it), until
    the broker gives up after `max_deliver`: ingest hears the broker's advisory and records the message as an
    `undeliverable` rejection, once (two replicas hear the advisory), with its original bytes; the messages
    around it are admitted as usual."""
    poison = event_body()

    def drop_poison(handle: Callable[[list[Any]], Awaitable[None]]) -> Callable[[list[Any]], Awaitable[None]]:
        async def dropping(msgs: list[Any]) -> None:  # the process holding the poison "dies" before deciding it
            kept = [m for m in msgs if poison["event_id"] not in m.data.decode()]
            if kept:
                await handle(kept)

        return dropping

    # Two replicas: both hear the advisory, one record comes of it.
    replicas = [await start_ingest(max_deliver=3, ack_wait=5.0, batch_size=10) for _ in range(2)]
    for replica in replicas:
        handler = replica.runtime.handler
        assert handler is not None
        handler.handle = drop_poison(handler.handle)
    running = replicas[0]
    mof = await publisher_for("mof")
    around = [event_body() for _ in range(10)]
    await publish_events(mof, [*around[:5], poison, *around[5:]])
    assert await wait_for_count(admin_nc, "REJECTED", 1, timeout=40) == 1
    rejected = (await stream_messages(admin_nc, "REJECTED"))[0]
    body = json.loads(rejected.data)
    assert body["reason"] == "undeliverable"
    assert body["event_id"] == poison["event_id"]
    assert body["subject"] == "status.mof.1-25"
    assert json.loads(base64.b64decode(body["payload_b64"])) == poison
    assert "3 deliveries" in body["message"]
    assert "NOT admitted" in body["message"]
    await asyncio.sleep(1.0)  # any second record (another advisory, a late redelivery) would show by now
    assert (await admin_nc.jetstream().stream_info("REJECTED")).state.messages == 1
    counts = store_counts(ingest_db_url)
    assert counts["rejected"] == 1
    assert counts["admitted"] == counts["distinct_admitted"] == len(around)
    response = await running.http.get(f"/events/{poison['event_id']}")
    assert response.status_code == 200
    assert response.json()["reason"] == "undeliverable"


async def test_two_replicas_decide_each_event_once(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client, ingest_db_url: str
) -> None:
    """Two ingest processes share the durable consumer and the store: races end in one decision per message."""
    await start_ingest(batch_size=7)
    await start_ingest(batch_size=5)
    mof = await publisher_for("mof")
    bodies = [event_body() for _ in range(150)]
    # Every event twice, the second copy close behind: the two replicas often hold the two copies at once.
    await publish_events(mof, [b for body in bodies for b in (body, body)])
    conflicting = {**bodies[0], "status": "delayed"}
    await publish_events(mof, [conflicting])
    event_ids = {b["event_id"] for b in bodies}
    assert await wait_for_count(admin_nc, "REJECTED", 1) == 1
    assert await wait_for_count(admin_nc, "ACCEPTED", len(event_ids), timeout=60) == len(event_ids)
    await asyncio.sleep(0.5)
    assert (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages == len(event_ids)
    counts = store_counts(ingest_db_url)
    assert counts["admitted"] == counts["distinct_admitted"] == len(event_ids)
    assert counts["duplicate"] == len(bodies)
    assert counts["rejected"] == 1


def test_sample_catalog_has_the_measures_the_tests_use() -> None:
    assert {m.id for m in SAMPLE_MEASURES} >= {"1-25", "2-3", "4-1"}
