"""The public reads closed quarters as of the closed quarters only (DESIGN.md "Principals and access", issue #16).

A closed quarter's measure list carries each measure's cross-quarter progress (`latest_status`,
`latest_quarter`, the targets' observations, ratings and overdue counts), the rollup the plan-wide target
summary, the history every quarter reported on. For the public all of it must be computed from closed
quarters' reports: what the public reads of a closed quarter does not change when an agency reports on an
open quarter, and nothing of that report (its event id, status, KPI value, quarter) reaches the public, in
JSON, CSV, xlsx or the dashboard's pages (whose live refresh does not even learn that it came). The secretariat
and the reporting agency still read it.
Real nats-server, both databases, the app in process.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openpyxl
from nats.aio.client import Client

from contracts.periods import TOKYO, FiscalQuarter
from reporting.cycle.testing import admitted_close, publish_close
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
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_runtime.natsserver import NatsServer

CLOSED = FiscalQuarter(2024, 3)
OPEN = FiscalQuarter(2024, 4)
#: A KPI value and a note that appear nowhere but in the open quarter's report.
OPEN_VALUE = 61.375
OPEN_NOTE = "open-quarter-note-7f3a"


def _xlsx_text(body: bytes) -> str:
    book = openpyxl.load_workbook(io.BytesIO(body), read_only=True)
    return "\n".join(
        " ".join("" if cell is None else str(cell) for cell in row)
        for sheet in book
        for row in sheet.iter_rows(values_only=True)
    )


async def test_the_public_reads_a_closed_quarter_as_of_closed_quarters_only(
    nats_server: NatsServer, admin_nc: Client, database_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(40)
    await put_catalog(admin_nc, measures)
    m = next(x for x in measures if len(x.lead_agencies) == 1 and x.targets)
    agency = str(m.lead_agencies[0])
    closed_report = status_event(
        measure_id=m.id,
        agency=agency,
        quarter=CLOSED,
        status="on_track",
        reported_at=datetime(2025, 1, 5, 9, tzinfo=TOKYO),
        kpis=[{"target": 0, "value": 10.0, "as_of": "2024-12-01"}],
    )
    await publish_admissions(admin_nc, [Admission(closed_report, datetime(2025, 1, 5, 0, 0, 1, tzinfo=UTC))])
    await publish_close(
        admin_nc, admitted_close(fiscal_year=2024, quarter=3, admitted_at=datetime(2025, 2, 3, tzinfo=UTC))
    )
    settings = reporting_settings(nats_server.plain_url, nats_server.passwords["reporting"], database_url, tmp_path)
    async with running_reporting(settings) as reporting:
        await wait_caught_up(admin_nc)
        issuer = EmbeddedIssuer.load(settings.data_dir)
        own_token = issuer.mint(principal_named(agency, "tester"), ttl=timedelta(minutes=10))
        transport = httpx.ASGITransport(app=reporting.app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://reporting") as public,
            httpx.AsyncClient(
                transport=transport, base_url="http://reporting", headers={"Authorization": f"Bearer {own_token}"}
            ) as own,
        ):
            json_paths = [
                "/rollups/2024/3",
                "/rollups/2024",
                "/rollups/2024/3/measures?limit=1000",
                f"/rollups/2024/3/measures?agency={agency}",
                f"/measures/{m.id}/history",
            ]
            csv_paths = [
                "/rollups/2024/3?format=csv",
                "/rollups/2024?format=csv",
                "/rollups/2024/3/measures?format=csv",
                f"/measures/{m.id}/history?format=csv",
            ]
            xlsx_paths = [p.replace("format=csv", "format=xlsx") for p in csv_paths]
            pages = ["/dashboard?fy=2024&q=3", f"/dashboard/measures/{m.id}?fy=2024&q=3"]

            async def public_reads() -> dict[str, str]:
                out: dict[str, str] = {}
                for path in json_paths + csv_paths + xlsx_paths + pages:
                    response = await public.get(path)
                    assert response.status_code == 200, (path, response.text)
                    out[path] = _xlsx_text(response.content) if "xlsx" in path else response.text
                return out

            async def public_live_version() -> str:
                response = await public.get("/dashboard/live?fy=2024&q=3")
                assert response.status_code == 200, response.text
                version: str = response.json()["version"]
                return version

            before = await public_reads()
            live_before = await public_live_version()
            # An agency reports on the open quarter: a new status, a KPI observation, a note.
            open_report = status_event(
                measure_id=m.id,
                agency=agency,
                quarter=OPEN,
                status="delayed",
                reported_at=datetime(2025, 2, 10, 9, tzinfo=TOKYO),
                kpis=[{"target": 0, "value": OPEN_VALUE, "as_of": "2025-02-01"}],
                note=OPEN_NOTE,
            )
            await publish_admissions(admin_nc, [Admission(open_report, datetime(2025, 2, 10, 0, 0, 1, tzinfo=UTC))])
            await wait_caught_up(admin_nc)

            # The agency and the secretariat read it, in the closed quarter's list too (its latest status).
            for reader in (own, reporting.http):
                item = next(
                    i
                    for i in (await reader.get("/rollups/2024/3/measures?limit=1000")).json()["items"]
                    if i["measure_id"] == m.id
                )
                assert (item["latest_status"], item["latest_quarter"]) == ("delayed", OPEN.label)
                assert item["targets"][0]["observation"]["event_id"] == open_report["event_id"]
                history = (await reader.get(f"/measures/{m.id}/history")).json()
                assert open_report["event_id"] in {e for i in history["items"] for e in i["event_ids"]}

            after = await public_reads()
            # The public's page is not even told that something was admitted (it would reload for nothing).
            assert await public_live_version() == live_before
            for path, text in after.items():
                for mark in (open_report["event_id"], str(OPEN_VALUE), OPEN_NOTE, OPEN.label):
                    assert mark not in text, (path, mark)
                if path not in pages:  # the pages carry the time they were rendered
                    assert text == before[path], path
            item = next(
                i
                for i in (await public.get("/rollups/2024/3/measures?limit=1000")).json()["items"]
                if i["measure_id"] == m.id
            )
            assert (item["latest_status"], item["latest_quarter"]) == ("on_track", CLOSED.label)
            assert item["targets"][0]["observation"]["event_id"] == closed_report["event_id"]
            assert item["targets"][0]["observed"] == 10.0
