"""Reporting consumes admitted closes and reviews from ACCEPTED (real nats-server, both databases)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import ACCEPTED_STREAM, REPORTING_DURABLE
from reporting.cycle.testing import admitted_close, admitted_review, publish_close, publish_review
from reporting.testing import (
    Admission,
    publish_admissions,
    put_catalog,
    reporting_settings,
    running_reporting,
    status_event,
    synthetic_measures,
    wait_caught_up,
)
from shinchoku_runtime.natsserver import NatsServer

Q = FiscalQuarter(2024, 3)


async def test_a_close_is_consumed_and_the_quarter_reads_closed(
    nats_server: NatsServer, admin_nc: Client, database_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(12)
    await put_catalog(admin_nc, measures)
    # A durable made before the cycle followed `accepted.>` only: it must come to read closes and reviews too.
    await admin_nc.jetstream().add_consumer(
        ACCEPTED_STREAM.name,
        ConsumerConfig(durable_name=REPORTING_DURABLE, ack_policy=AckPolicy.EXPLICIT, filter_subject="accepted.>"),
    )
    m = measures[0]
    report = status_event(
        measure_id=m.id,
        agency=str(m.lead_agencies[0]),
        quarter=Q,
        status="on_track",
        reported_at=datetime(2025, 1, 10, 9, tzinfo=TOKYO),
    )
    admitted = datetime(2025, 1, 10, 0, 0, 1, tzinfo=UTC)
    await publish_admissions(admin_nc, [Admission(report, admitted)])
    await publish_review(
        admin_nc,
        admitted_review(
            event_id=report["event_id"],
            agency=report["agency"],
            measure_id=m.id,
            fiscal_year=2024,
            quarter=3,
            decision="accepted",
            admitted_at=datetime(2025, 2, 1, tzinfo=UTC),
        ),
    )
    closed_at = datetime(2025, 2, 3, 1, 2, 3, tzinfo=UTC)
    await publish_close(admin_nc, admitted_close(fiscal_year=2024, quarter=3, admitted_at=closed_at))
    settings = reporting_settings(nats_server.plain_url, nats_server.passwords["reporting"], database_url, tmp_path)
    async with running_reporting(settings) as reporting:
        await wait_caught_up(admin_nc)
        queries = reporting.service.queries
        assert queries.is_closed(2024, 3)
        assert not queries.is_closed(2024, 4)
        assert queries.closed_quarters() == [Q]
        doc = (await reporting.http.get("/rollups/2024/3")).json()
        assert (doc["closed"], doc["revision"], doc["restated_at"]) == (True, 1, None)
        assert datetime.fromisoformat(doc["published_at"]) == closed_at
        assert doc["reported"] == 1
        still_open = (await reporting.http.get("/rollups/2024/4")).json()
        assert (still_open["closed"], still_open["revision"], still_open["published_at"]) == (False, None, None)
        # A second close of a closed quarter changes nothing.
        await publish_close(
            admin_nc, admitted_close(fiscal_year=2024, quarter=3, admitted_at=datetime(2025, 3, 1, tzinfo=UTC))
        )
        await wait_caught_up(admin_nc)
        again = (await reporting.http.get("/rollups/2024/3")).json()
        assert again["published_at"] == doc["published_at"]
