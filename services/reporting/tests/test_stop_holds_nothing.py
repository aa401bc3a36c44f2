"""A stopped reporting service holds no connection to its store (PostgreSQL), whatever its loops were doing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from nats.aio.client import Client

from contracts.periods import TOKYO, FiscalQuarter
from reporting.testing import (
    Admission,
    publish_admissions,
    put_catalog,
    reporting_settings,
    running_reporting,
    status_event,
    synthetic_measures,
)
from shinchoku_runtime.db import normalise_url
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import left_after_stop


async def test_stopping_reporting_while_its_loops_read_leaves_no_connection(
    nats_server: NatsServer, admin_nc: Client, database_url: str, tmp_path: Path
) -> None:
    """The alerts' evaluation (back to back here), their publisher and the publication outbox each read the store
    in a thread. Cancelled at stop while one ran, the thread went on after the engine was disposed and its
    connection stayed open, checked out of a pool nobody would close (what a test's DROP DATABASE then met)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("connections are the PostgreSQL server's to count")
    measures = synthetic_measures(40)
    await put_catalog(admin_nc, measures)
    reports = [
        Admission(
            status_event(
                measure_id=m.id,
                agency=str(m.lead_agencies[0]),
                quarter=FiscalQuarter(2024, 3),
                status="on_track",
                reported_at=datetime(2025, 1, 10, 9, tzinfo=TOKYO),
            ),
            datetime(2025, 1, 10, 0, 0, 1, tzinfo=UTC),
        )
        for m in measures
    ]
    await publish_admissions(admin_nc, reports)
    settings = reporting_settings(
        nats_server.plain_url,
        nats_server.passwords["reporting"],
        database_url,
        tmp_path,
        alert_min_interval=0,
        alert_tick_seconds=0.001,
        alert_full_every_seconds=0.001,
        writer_processes=0,
    )
    probe = sa.create_engine(normalise_url(database_url))
    try:
        for cycle in range(16):
            async with running_reporting(settings):
                await asyncio.sleep(0.05 + 0.017 * cycle)  # stopped at a different point of its loops each time
            left = await left_after_stop(probe)
            assert not left, f"cycle {cycle}: reporting stopped, still connected: {left}"
    finally:
        probe.dispose()
