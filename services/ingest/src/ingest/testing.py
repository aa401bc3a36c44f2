"""Test and benchmark support: sample measures as the catalog publishes them, events, and waiting on streams."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import sqlalchemy as sa
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType

from contracts.catalog import Measure, Target
from contracts.events import AdmittedEvent
from contracts.streams import CATALOG_BUCKET
from shinchoku_runtime.db import normalise_url

SAMPLE_MEASURES = [
    Measure(
        id="1-25",
        section=1,
        section_title="デジタル化による成長戦略",
        title="e-Taxの利用促進",
        lead_agencies=["mof", "digital"],
        targets=[Target(index=0, text="e-Tax 80％"), Target(index=1, text="法人 100％")],
    ),
    Measure(
        id="2-3",
        section=2,
        section_title="医療・教育・防災・こども等の準公共分野のデジタル化",
        title="オンライン資格確認",
        lead_agencies=["mhlw"],
        targets=[],
    ),
    Measure(
        id="4-1",
        section=4,
        section_title="誰一人取り残されないデジタル社会",
        title="デジタル推進委員",
        lead_agencies=["digital", "mic"],
        targets=[Target(index=0, text="5万人")],
    ),
]


def event_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "measure_id": "1-25",
        "agency": "mof",
        "fiscal_year": 2024,
        "quarter": 3,
        "status": "on_track",
        "progress": 45,
        "reported_at": "2024-12-20T17:00:00+09:00",
    }
    body.update(overrides)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


async def put_measures(nc: Client, measures: list[Measure]) -> None:
    """Stand in for the catalog: create the CATALOG bucket (if needed) and put Measure JSON in it."""
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=CATALOG_BUCKET, history=1, storage=StorageType.FILE))
    for m in measures:
        await kv.put(m.id, m.model_dump_json().encode())


async def wait_for_event(
    http: httpx.AsyncClient, event_id: str, timeout: float = 10.0, *, agency: str | None = None
) -> dict[str, Any]:
    """GET /events/{id} (of `agency`, when several agencies used the id) until ingest has decided it."""
    deadline = asyncio.get_running_loop().time() + timeout
    params = {"agency": agency} if agency is not None else {}
    while True:
        response = await http.get(f"/events/{event_id}", params=params)
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        assert response.status_code == 404, response.text
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"event {event_id} not decided within {timeout}s")
        await asyncio.sleep(0.05)


async def stream_messages(nc: Client, stream: str) -> list[Any]:
    """Every message of a stream, in order (read directly by sequence)."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        try:
            out.append(await js.get_msg(stream, seq))
        except Exception:
            continue
    return out


async def wait_for_count(nc: Client, stream: str, count: int, timeout: float = 20.0) -> int:
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        n = (await js.stream_info(stream)).state.messages
        if n >= count or asyncio.get_running_loop().time() > deadline:
            return int(n)
        await asyncio.sleep(0.05)


def store_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select outcome, count(*) from decision group by outcome")).all()
            admitted_ids = conn.execute(
                sa.text("select count(distinct event_id) from decision where outcome = 'admitted'")
            ).scalar_one()
    finally:
        engine.dispose()
    return {**{outcome: int(n) for outcome, n in rows}, "distinct_admitted": int(admitted_ids)}


async def assert_exactly_once(admin_nc: Client, url: str, event_ids: set[str], duplicates: int) -> None:
    """ACCEPTED holds each event once, the store admitted each once, and counted the identical resends."""
    assert await wait_for_count(admin_nc, "ACCEPTED", len(event_ids), timeout=60) == len(event_ids)
    await asyncio.sleep(0.5)  # anything extra would show up now
    accepted = await stream_messages(admin_nc, "ACCEPTED")
    ids = [str(AdmittedEvent.model_validate_json(m.data).event.event_id) for m in accepted]
    assert len(ids) == len(event_ids)
    assert set(ids) == event_ids
    deadline = time.monotonic() + 30
    while True:
        counts = store_counts(url)
        if counts.get("duplicate", 0) >= duplicates or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert counts.get("admitted") == len(event_ids)
    assert counts["distinct_admitted"] == len(event_ids)
    assert counts.get("duplicate", 0) == duplicates
    assert counts.get("rejected", 0) == 0
    assert (await admin_nc.jetstream().stream_info("REJECTED")).state.messages == 0
    info = await admin_nc.jetstream().consumer_info("STATUS", "ingest")
    assert info.num_pending == 0


async def publish_events(publisher: Any, bodies: list[dict[str, Any]]) -> None:
    """Publish each body on status.mof.1-25 through an AgencyPublisher."""
    for body in bodies:
        await publisher.publish_raw("status.mof.1-25", encode(body))
