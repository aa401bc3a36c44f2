"""A rolling upgrade never drops an admitted event: this (older) reporting meets what a newer ingest publishes.

An admission carrying fields this version does not know (the contracts change only additively) is counted, its
unknown fields left out and counted; an admission it cannot decode at all is held (nak'ed with a delay, redelivered,
/healthz 503 naming `decoding`) and never terminated, so that the upgraded replica can count it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from nats.aio.client import Client

from contracts.periods import FiscalQuarter
from contracts.streams import ACCEPTED_STREAM, MSG_ID_HEADER, REPORTING_DURABLE
from reporting import repository
from reporting.testing import (
    publish_admissions,
    put_catalog,
    random_admissions,
    reporting_settings,
    running_reporting,
    synthetic_measures,
)
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.natsserver import NatsServer

MEASURES = synthetic_measures(5)
OLD, NEWER, ALIEN = random_admissions(MEASURES, [FiscalQuarter(2024, 3)], 3, seed=11)


def _newer_ingest_body() -> bytes:
    """What a newer ingest publishes: an added field on the admission and one on the status event."""
    doc = json.loads(NEWER.body())
    doc["ingest_version"] = "2.1"
    doc["event"]["confidence"] = 0.9
    return json.dumps(doc).encode()


def _alien_body() -> bytes:
    """Not additive: a status this version has never heard of (a contract v2, or a corrupted message)."""
    doc = json.loads(ALIEN.body())
    doc["event"]["status"] = "paused"
    return json.dumps(doc).encode()


def _stored_event_ids(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(repository.LIVE.events.select()).mappings().all()
            return {str(r["event_id"]) for r in rows}
    finally:
        engine.dispose()


async def test_an_older_reporting_counts_a_newer_ingests_message_and_holds_what_it_cannot_read(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path
) -> None:
    await put_catalog(admin_nc, MEASURES)
    settings = reporting_settings(
        nats_server.plain_url, nats_server.passwords["reporting"], sqlite_url, tmp_path / "reporting", hold_delay=1.0
    )
    js = admin_nc.jetstream()
    async with running_reporting(settings) as reporting:
        await publish_admissions(admin_nc, [OLD])
        for admission, body in ((NEWER, _newer_ingest_body()), (ALIEN, _alien_body())):
            headers = {MSG_ID_HEADER: f"{admission.event['agency']}:{admission.event['event_id']}"}
            await js.publish(admission.subject, body, headers=headers, stream=ACCEPTED_STREAM.name)

        # The newer ingest's message is counted like the old one.
        deadline = time.monotonic() + 30
        wanted = {OLD.event["event_id"], NEWER.event["event_id"]}
        while not wanted <= _stored_event_ids(sqlite_url) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _stored_event_ids(sqlite_url) == wanted

        # The alien one is held: redelivered (not terminated), still owed to the consumer, and /healthz says so.
        while time.monotonic() < deadline:
            info = await js.consumer_info(ACCEPTED_STREAM.name, REPORTING_DURABLE)
            if info.num_redelivered >= 1:
                break
            await asyncio.sleep(0.1)
        assert info.num_redelivered >= 1
        assert info.num_ack_pending + info.num_pending == 1  # held, neither acknowledged nor terminated
        health = await reporting.http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["checks"]["decoding"] is False
        metrics = (await reporting.http.get("/metrics")).text
        assert 'shinchoku_reporting_ignored_fields_total{field="event.confidence"} 1.0' in metrics
        assert 'shinchoku_reporting_ignored_fields_total{field="ingest_version"} 1.0' in metrics
        assert "shinchoku_reporting_held_messages 1.0" in metrics

    # An upgraded reporting would take it; here the stream still holds it for that (nothing was dropped).
    assert (await js.stream_info(ACCEPTED_STREAM.name)).state.messages == 3
