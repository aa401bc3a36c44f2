"""The catalog mirror as the `ingest` NATS user runs it: within its permissions, and current."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from contracts.agencies import Agency
from contracts.events import CatalogChanged
from contracts.streams import CATALOG_CHANGED
from ingest.testing import SAMPLE_MEASURES, put_measures


async def test_mirroring_a_full_catalog_stays_within_ingest_permissions(
    start_ingest: object, admin_nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Enough data for JetStream flow control: the watch's replies to it must be allowed to the ingest user."""
    caplog.set_level(logging.WARNING)
    base = SAMPLE_MEASURES[0]
    measures = [
        base.model_copy(update={"id": f"{s}-{n}", "description": ["施策の説明" * 800]})
        for s in range(1, 7)
        for n in range(1, 61)
    ]
    await put_measures(admin_nc, measures)
    running = await start_ingest()  # type: ignore[operator]
    mirror = running.runtime.mirror
    await asyncio.wait_for(mirror.loaded.wait(), 20)
    assert len(mirror) == len(measures)
    await asyncio.sleep(0.5)
    violations = [r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage()]
    assert violations == []


async def test_the_mirror_follows_puts_deletes_and_announcements(
    start_ingest: object, admin_nc: Client, catalog_kv: object
) -> None:
    running = await start_ingest()  # type: ignore[operator]
    mirror = running.runtime.mirror
    await asyncio.wait_for(mirror.loaded.wait(), 10)
    kv = await admin_nc.jetstream().key_value("CATALOG")
    changed = SAMPLE_MEASURES[0].model_copy(update={"lead_agencies": [Agency.cao]})
    await kv.put("1-25", changed.model_dump_json().encode())
    await kv.delete("2-3")
    for _ in range(100):
        if mirror.cached("1-25")[1] == changed and not mirror.cached("2-3")[0]:
            break
        await asyncio.sleep(0.05)
    assert mirror.cached("1-25") == (True, changed)
    assert mirror.cached("2-3") == (False, None)
    # An announcement on catalog.changed refreshes the ids it names from the bucket.
    mirror._measures["4-1"] = SAMPLE_MEASURES[0]  # stale on purpose
    announcement = CatalogChanged(revision="r2", measures_total=2, changed_ids=["4-1"], at=datetime.now(UTC))
    await admin_nc.publish(CATALOG_CHANGED, announcement.model_dump_json().encode())
    for _ in range(100):
        if mirror.cached("4-1")[1] == SAMPLE_MEASURES[2]:
            break
        await asyncio.sleep(0.05)
    assert mirror.cached("4-1") == (True, SAMPLE_MEASURES[2])
