"""Issue #15, hole 1: an admission ingest stored is never reported lost, and reaches ACCEPTED eventually.

The decision table is ingest's outbox: a decision is committed, then published, and `published_seq` records
where it landed. A stored decision is never dead-lettered; a reconciler publishes what stayed unpublished,
and notices a stream that holds less than ingest published there. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from contracts.events import AdmittedEvent
from contracts.streams import ACCEPTED_STREAM
from ingest.app import IngestRuntime
from ingest.outbox_repository import PassLock
from ingest.testing import encode, event_body, publish_events, stream_messages, wait_for_count, wait_for_event
from shinchoku.client import AgencyPublisher
from shinchoku.issuer import EmbeddedIssuer
from shinchoku_runtime.auth import AuthSettings
from shinchoku_runtime.db import normalise_url
from shinchoku_runtime.natsclient import ensure_streams, stream_config
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import left_after_stop, other_connections

from .conftest import ingest_settings

Publishers = Callable[[str], Awaitable[AgencyPublisher]]


@pytest.fixture
def ingest_db_url(database_url: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL."""
    return database_url


async def refuse_writes(admin_nc: Client) -> None:
    """ACCEPTED refuses new messages from now on (discard new at its current count), as a full disk would."""
    js = admin_nc.jetstream()
    limited = stream_config(ACCEPTED_STREAM)
    limited.max_msgs = max(1, (await js.stream_info("ACCEPTED")).state.messages)
    limited.discard = DiscardPolicy.NEW
    await js.update_stream(limited)


async def settled(admin_nc: Client, timeout: float) -> None:
    """Wait until the consumer holds nothing: every STATUS message was acked or given up by the broker."""
    js = admin_nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await js.consumer_info("STATUS", "ingest")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"STATUS not settled: {info}"
        await asyncio.sleep(0.2)


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


async def test_an_admission_stored_while_accepted_refuses_writes_is_never_reported_lost(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """The issue's scenario: the report's publish is acknowledged and ingest stores the admission, but ACCEPTED
    refuses writes for longer than the redelivery horizon. Nothing may say "NOT admitted" (no `undeliverable`
    on REJECTED), /healthz and the metric show the unpublished admission while it lasts, and once ACCEPTED takes
    writes again the admission reaches it without any resend; a resend after that adds no copy."""
    running = await start_ingest(max_deliver=3, retry_delay_max=1, reconcile_interval=0.5, unpublished_alarm=2)
    mof = await publisher_for("mof")
    before = event_body()
    await publish_events(mof, [before])
    await wait_for_count(admin_nc, "ACCEPTED", 1)
    await refuse_writes(admin_nc)

    report = event_body()
    await mof.publish_raw("status.mof.1-25", encode(report))
    assert (await wait_for_event(running.http, report["event_id"]))["outcome"] == "admitted"
    await settled(admin_nc, timeout=40)  # all three deliveries spent
    await asyncio.sleep(1.0)  # the broker's max-deliveries advisory, and any late dead letter, would show by now
    js = admin_nc.jetstream()
    assert (await js.stream_info("REJECTED")).state.messages == 0, "an admitted report was dead-lettered"
    assert (await wait_for_event(running.http, report["event_id"]))["outcome"] == "admitted"
    assert (await js.stream_info("ACCEPTED")).state.messages == 1

    deadline = asyncio.get_running_loop().time() + 10
    while (health := await running.http.get("/healthz")).status_code == 200:
        assert asyncio.get_running_loop().time() < deadline, "healthy while an admission stays unpublished"
        await asyncio.sleep(0.2)
    outbox = health.json()["outbox"]
    assert outbox["unpublished"] == 1
    assert outbox["oldest_seconds"] >= 2
    assert metric((await running.http.get("/metrics")).text, "shinchoku_ingest_unpublished_decisions") == 1

    await ensure_streams(js)  # ACCEPTED takes writes again; nobody resends
    assert await wait_for_count(admin_nc, "ACCEPTED", 2, timeout=15) == 2
    accepted = [AdmittedEvent.model_validate_json(m.data) for m in await stream_messages(admin_nc, "ACCEPTED")]
    assert [str(a.event.event_id) for a in accepted] == [before["event_id"], report["event_id"]]
    deadline = asyncio.get_running_loop().time() + 10
    while (health := await running.http.get("/healthz")).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, health.text
        await asyncio.sleep(0.2)
    assert health.json()["outbox"]["unpublished"] == 0
    assert metric((await running.http.get("/metrics")).text, "shinchoku_ingest_unpublished_decisions") == 0

    await mof.publish_raw("status.mof.1-25", encode(report))  # the ministry resends anyway: counted once
    await settled(admin_nc, timeout=10)
    await asyncio.sleep(0.5)
    assert (await js.stream_info("ACCEPTED")).state.messages == 2
    assert (await js.stream_info("REJECTED")).state.messages == 0


async def test_a_resend_of_an_unpublished_admission_publishes_it(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """Without waiting for the reconciler (its interval is an hour here), the ministry's resend of an admitted
    event whose admission never reached ACCEPTED publishes that admission, as it was admitted."""
    running = await start_ingest(max_deliver=3, retry_delay_max=1, reconcile_interval=3600)
    mof = await publisher_for("mof")
    await publish_events(mof, [event_body()])
    await wait_for_count(admin_nc, "ACCEPTED", 1)
    await refuse_writes(admin_nc)
    report = event_body()
    await mof.publish_raw("status.mof.1-25", encode(report))
    first = await wait_for_event(running.http, report["event_id"])
    assert first["outcome"] == "admitted"
    await settled(admin_nc, timeout=40)
    js = admin_nc.jetstream()
    await ensure_streams(js)
    await asyncio.sleep(1.0)
    assert (await js.stream_info("ACCEPTED")).state.messages == 1  # nothing republished it yet

    await mof.publish_raw("status.mof.1-25", encode(report))
    assert await wait_for_count(admin_nc, "ACCEPTED", 2, timeout=10) == 2
    last = (await stream_messages(admin_nc, "ACCEPTED"))[-1]
    admitted = AdmittedEvent.model_validate_json(last.data)
    assert str(admitted.event.event_id) == report["event_id"]
    assert admitted.admitted_at.isoformat().replace("+00:00", "Z") == first["admitted_at"]
    assert (last.headers or {})["Nats-Msg-Id"] == f"mof:{report['event_id']}"
    again = await wait_for_event(running.http, report["event_id"])
    assert [a["outcome"] for a in again["attempts"]] == ["duplicate"]
    assert (await js.stream_info("REJECTED")).state.messages == 0


async def test_a_reset_accepted_stream_is_noticed_and_refilled(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """ACCEPTED deleted and declared again (a reset, or a restore from an older backup) holds less than ingest
    published there: the reconciler says so (metric, log) and publishes again what the stream lost."""
    running = await start_ingest(reconcile_interval=0.5)
    mof = await publisher_for("mof")
    bodies = [event_body() for _ in range(5)]
    await publish_events(mof, bodies)
    assert await wait_for_count(admin_nc, "ACCEPTED", 5) == 5
    await asyncio.sleep(1.0)  # the PubAcks' sequences are recorded
    js = admin_nc.jetstream()
    await js.delete_stream("ACCEPTED")
    await ensure_streams(js)
    assert await wait_for_count(admin_nc, "ACCEPTED", 5, timeout=15) == 5
    ids = {
        str(AdmittedEvent.model_validate_json(m.data).event.event_id)
        for m in await stream_messages(admin_nc, "ACCEPTED")
    }
    assert ids == {b["event_id"] for b in bodies}
    text = (await running.http.get("/metrics")).text
    assert metric(text, "shinchoku_ingest_stream_shortfalls_total", '{stream="ACCEPTED"}') >= 1
    assert metric(text, "shinchoku_ingest_republished_total", '{stream="ACCEPTED"}') == 5
    await asyncio.sleep(1.5)  # later passes find the stream whole again
    assert (await js.stream_info("ACCEPTED")).state.messages == 5
    assert (await running.http.get("/healthz")).json()["outbox"]["short_streams"] == {}


async def test_a_dead_letter_is_published_by_the_outbox_when_rejected_refuses_it(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """The `undeliverable` rejection itself is a stored decision: if REJECTED cannot take it at once, the
    reconciler publishes it later (it is never only in a log line)."""
    running = await start_ingest(reconcile_interval=0.5, catalog_timeout=0.2, max_deliver=3, retry_delay_max=1)
    mof = await publisher_for("mof")
    js = admin_nc.jetstream()
    await js.delete_stream("REJECTED")  # REJECTED away: the dead letter is stored, its publish fails
    body = event_body(measure_id="6-17")  # not in the catalog's bucket, and nobody answers the catalog: waits
    await mof.publish_raw("status.mof.6-17", encode(body))
    await settled(admin_nc, timeout=40)
    found = await wait_for_event(running.http, body["event_id"])
    assert found["reason"] == "undeliverable"
    await ensure_streams(js)
    assert await wait_for_count(admin_nc, "REJECTED", 1, timeout=15) == 1
    (rejected,) = await stream_messages(admin_nc, "REJECTED")
    assert json.loads(rejected.data)["reason"] == "undeliverable"


async def test_every_published_decision_gets_its_mark_under_load(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client, ingest_db_url: str
) -> None:
    """Two replicas, batches in flight, resends and rejections: once the stream is drained, every decision the
    replicas published is marked with where it landed (the marks rode in later batches or were flushed), so the
    outbox is empty and the reconciler had nothing to publish again."""
    replicas = [await start_ingest(batch_size=50), await start_ingest(batch_size=70)]
    mof = await publisher_for("mof")
    bodies = [event_body() for _ in range(400)]
    await publish_events(mof, [*bodies, *bodies[:40]])
    await publish_events(mof, [{**b, "status": "delayed"} for b in bodies[:25]])  # conflicts: on REJECTED
    assert await wait_for_count(admin_nc, "ACCEPTED", 400, timeout=60) == 400
    assert await wait_for_count(admin_nc, "REJECTED", 25, timeout=30) == 25
    await settled(admin_nc, timeout=30)
    deadline = asyncio.get_running_loop().time() + 10
    while (outbox := (await replicas[0].http.get("/healthz")).json()["outbox"])["unpublished"]:
        assert asyncio.get_running_loop().time() < deadline, outbox
        await asyncio.sleep(0.2)
    engine = sa.create_engine(normalise_url(ingest_db_url))
    try:
        with engine.connect() as conn:
            marks = conn.execute(
                sa.text("SELECT outcome, published_seq FROM decision WHERE outcome <> 'duplicate'")
            ).all()
    finally:
        engine.dispose()
    by_outcome: dict[str, list[int]] = {}
    for outcome, seq in marks:
        by_outcome.setdefault(outcome, []).append(seq)
    assert sorted(by_outcome["admitted"]) == list(range(1, 401))  # exact: each atomic batch's own sequences
    assert sorted(by_outcome["rejected"]) == list(range(1, 26))
    for replica in replicas:
        text = (await replica.http.get("/metrics")).text
        assert not re.search(r"^shinchoku_ingest_republished_total\{", text, re.MULTILINE)  # nothing republished


async def test_stopping_ingest_mid_pass_leaves_no_lock_and_no_connection(
    nats_server: NatsServer, admin_nc: Client, catalog_kv: Any, ingest_db_url: str, tmp_path: Path
) -> None:
    """Ingest stopped while its reconciler is in a pass (passes back to back here) holds nothing afterwards: not
    the pass lock (PostgreSQL's advisory lock on a connection left idle in transaction, or SQLite's lock file),
    and no connection to its database. A pass cancelled while one of its statements ran in a thread used to
    leave that thread's connection behind: checked out after the engine was disposed, or holding the lock for
    good (what a later ingest on the same store, or the test's DROP DATABASE, then met)."""
    issuer = EmbeddedIssuer.prepare(tmp_path / "issuer")
    auth = AuthSettings(_env_file=None, mode="embedded", jwks_url=issuer.jwks_path.as_uri())
    probe = sa.create_engine(normalise_url(ingest_db_url))
    try:
        for cycle in range(12):
            settings = ingest_settings(nats_server, ingest_db_url, tmp_path, reconcile_interval=0.001)
            runtime = IngestRuntime(settings, auth=auth)
            await runtime.start()
            await asyncio.wait_for(runtime.consuming.wait(), 20)
            await asyncio.sleep(0.05 + 0.013 * cycle)  # stopped at a different point of a pass each time
            await runtime.stop()
            left = await left_after_stop(probe, _held_after_stop)
            assert not left, f"cycle {cycle}: ingest stopped, still held: {left}"
    finally:
        probe.dispose()


def _held_after_stop(probe: sa.Engine) -> list[str]:
    """What a stopped ingest still holds on its store: the pass lock, connections (PostgreSQL)."""
    held = []
    lock = PassLock(probe)
    if lock.acquire():
        lock.release()
    else:
        held.append("the reconciler's pass lock")
    if probe.dialect.name == "postgresql":
        held += [f"a connection ({c})" for c in other_connections(probe)]
    return held
