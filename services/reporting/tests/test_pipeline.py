"""ACCEPTED → reporting → HTTP on a real nats-server and both databases, against an independent computation.

Admitted events are published straight onto ACCEPTED as the admin user (with Nats-Msg-Id, as ingest
does) in a shuffled order with corrections, ties, duplicates and late reports; the catalog is a KV bucket
of synthetic measures. The expected rollups below are written out plainly and do not use reporting's code.

One module of ~700 lines on purpose: its tests share that scenario and its independent computation (`Expected`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from nats.aio.client import Client

from contracts.catalog import Measure, Target
from contracts.periods import TOKYO, FiscalQuarter
from reporting import rebuild, repository
from reporting.rebuild import rebuild_store
from reporting.testing import (
    Admission,
    publish_admissions,
    put_catalog,
    random_admissions,
    reporting_settings,
    running_reporting,
    synthetic_measures,
    wait_caught_up,
)
from shinchoku.issuer import EmbeddedIssuer, StackAuth
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.natsserver import NatsServer, free_port

JST = ZoneInfo("Asia/Tokyo")
RANK = {"delayed": 0, "at_risk": 1, "suspended": 2, "not_started": 3, "on_track": 4, "completed": 5}
ALL_STATUSES = [*RANK, "unreported"]
AGENCIES = [
    "digital", "mic", "mhlw", "mext", "mlit", "meti", "cas", "nisc", "cao",
    "moj", "cfa", "maff", "npa", "mof", "env", "ppc", "jinji",
]  # fmt: skip
ADOPTED = date(2024, 6, 21)
QUARTERS = [(2024, 3), (2024, 4), (2025, 1)]


# --- an independent computation ----------------------------------------------------------------


def quarter_end(fy: int, q: int) -> date:
    month = {1: 6, 2: 9, 3: 12, 4: 3}[q]
    year = fy + 1 if q == 4 else fy
    return (date(year, month, 28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def deadline(fy: int, q: int) -> datetime:
    """The end of the quarter's last day plus 30 days, in Tokyo."""
    return datetime.combine(quarter_end(fy, q) + timedelta(days=31), time(0), tzinfo=JST)


def previous_quarter(fy: int, q: int) -> tuple[int, int]:
    return (fy - 1, 4) if q == 1 else (fy, q - 1)


@dataclass
class Report:
    event_id: str
    measure_id: str
    agency: str
    fy: int
    q: int
    status: str
    reported_at: datetime
    admitted_at: datetime
    kpis: list[dict[str, Any]]
    #: What on-time is judged by: when the platform received it (DESIGN.md "Rollup semantics").
    judged_at: datetime


class Expected:
    def __init__(self, measures: list[Measure], admissions: list[Admission]) -> None:
        self.measures = measures
        self.reports: dict[str, Report] = {}
        for a in admissions:
            e = a.event
            if e["event_id"] in self.reports:
                continue
            self.reports[e["event_id"]] = Report(
                e["event_id"],
                e["measure_id"],
                e["agency"],
                e["fiscal_year"],
                e["quarter"],
                e["status"],
                datetime.fromisoformat(e["reported_at"]),
                a.admitted_at,
                e.get("kpis", []),
                a.judged_at,
            )

    def effective(self, fy: int, q: int, as_of: datetime | None = None) -> dict[tuple[str, str], Report]:
        best: dict[tuple[str, str], Report] = {}
        for r in self.reports.values():
            if (r.fy, r.q) != (fy, q) or (as_of is not None and r.admitted_at > as_of):
                continue
            key = (r.measure_id, r.agency)
            if key not in best or (r.reported_at, r.event_id) > (best[key].reported_at, best[key].event_id):
                best[key] = r
        return best

    def statuses(self, fy: int, q: int, as_of: datetime | None = None) -> dict[str, str]:
        eff = self.effective(fy, q, as_of)
        out = {}
        for m in self.measures:
            mine = [eff[(m.id, a)].status for a in m.lead_agencies if (m.id, a) in eff]
            out[m.id] = min(mine, key=RANK.__getitem__) if mine else "unreported"
        return out

    def rollup(self, fy: int, q: int, as_of: datetime | None = None) -> dict[str, Any]:
        eff = self.effective(fy, q, as_of)
        statuses = self.statuses(fy, q, as_of)

        def empty() -> dict[str, Any]:
            return {"measures_total": 0, "reported": 0, "on_time": 0, "by_status": dict.fromkeys(ALL_STATUSES, 0)}

        whole, sections, agencies = empty(), {str(s): empty() for s in range(1, 7)}, {a: empty() for a in AGENCIES}
        for m in self.measures:
            status = statuses[m.id]
            reports = [eff[(m.id, a)] for a in m.lead_agencies if (m.id, a) in eff]
            on_time = bool(reports) and all(r.judged_at <= deadline(fy, q) for r in reports)
            for bucket in (whole, sections[str(m.section)]):
                bucket["measures_total"] += 1
                bucket["by_status"][status] += 1
                bucket["reported"] += status != "unreported"
                bucket["on_time"] += on_time
            for a in m.lead_agencies:
                bucket = agencies[a]
                own = eff.get((m.id, a))
                bucket["measures_total"] += 1
                bucket["by_status"][own.status if own else "unreported"] += 1
                bucket["reported"] += own is not None
                bucket["on_time"] += own is not None and own.judged_at <= deadline(fy, q)
        for bucket in [whole, *sections.values(), *agencies.values()]:
            total = bucket["measures_total"]
            bucket["coverage"] = bucket["reported"] / total if total else 0.0
            bucket["on_time_rate"] = bucket["on_time"] / total if total else 0.0
        before = self.statuses(*previous_quarter(fy, q), as_of)
        worse = [
            m.id
            for m in self.measures
            if "unreported" not in (before[m.id], statuses[m.id]) and RANK[statuses[m.id]] < RANK[before[m.id]]
        ]
        better = [
            m.id
            for m in self.measures
            if "unreported" not in (before[m.id], statuses[m.id]) and RANK[statuses[m.id]] > RANK[before[m.id]]
        ]
        return {**whole, "by_section": sections, "by_agency": agencies, "moved_worse": worse, "moved_better": better}

    def latest_status(self, m: Measure) -> str:
        quarters = sorted(
            {(r.fy, r.q) for r in self.reports.values() if r.measure_id == m.id and r.agency in m.lead_agencies}
        )
        return self.statuses(*quarters[-1])[m.id] if quarters else "unreported"

    def targets(self, m: Measure, today: date) -> list[tuple[bool, str]]:
        """(overdue, rating) per target."""
        latest = self.latest_status(m)
        observations: dict[int, tuple[date, datetime, str, float]] = {}
        for fy, q in {(r.fy, r.q) for r in self.reports.values()}:
            for (measure_id, _), r in self.effective(fy, q).items():
                if measure_id != m.id or r.agency not in m.lead_agencies:
                    continue
                for k in r.kpis:
                    # An as_of after its report counts as of the report's day (Asia/Tokyo).
                    as_of = min(date.fromisoformat(k["as_of"]), r.reported_at.astimezone(TOKYO).date())
                    seen = (as_of, r.reported_at, r.event_id, k["value"])
                    if k["target"] < len(m.targets) and (
                        k["target"] not in observations or seen > observations[k["target"]]
                    ):
                        observations[k["target"]] = seen
        out = []
        for i, t in enumerate(m.targets):
            # Overdue per target: past due, and neither met by the latest observed value nor completed.
            met = i in observations and t.value is not None and observations[i][3] >= t.value
            overdue = t.due_date is not None and t.due_date < today and latest != "completed" and not met
            if i not in observations or not t.value or t.due_date is None:
                rating = "N"
            else:
                observed_on, _, _, value = observations[i]
                period = (t.due_date - ADOPTED).days
                share = 1.0 if period <= 0 else min(1.0, max(0.0, (observed_on - ADOPTED).days / period))
                rating = "A" if value / t.value >= share else "B"
            out.append((overdue, rating))
        return out


# --- the scenario ------------------------------------------------------------------------------


def scenario(seed: int = 11) -> tuple[list[Measure], list[Admission], list[Admission]]:
    """Measures, the admissions in publishing order, and the extra copies that reach reporting twice."""
    rnd = random.Random(seed)
    measures = synthetic_measures(30, seed=seed)
    # One measure with targets long past due and one due far ahead, so that `overdue` is known either way.
    measures[0] = measures[0].model_copy(
        update={
            "targets": [
                Target(index=0, text="past (50％ 2019年度)", due_date=date(2020, 3, 31), value=50, unit="％"),
                Target(index=1, text="future (100％ 2098年度)", due_date=date(2099, 3, 31), value=100, unit="％"),
                Target(index=2, text="no value", due_date=date(2099, 3, 31)),
            ]
        }
    )
    quarters = [FiscalQuarter(*q) for q in QUARTERS]
    base = random_admissions(measures, quarters, 500, seed=seed, admitted_from=datetime(2025, 2, 1, tzinfo=UTC))
    later = datetime(2025, 6, 1, tzinfo=UTC)
    extra: list[Admission] = []
    for i, a in enumerate(rnd.sample(base, 120)):
        # Corrections: a later report (some after the on-time deadline), admitted later.
        reported = datetime.fromisoformat(a.event["reported_at"]) + timedelta(hours=rnd.randint(1, 24 * 50))
        event = {
            **a.event,
            "event_id": str(uuid.uuid4()),
            "status": rnd.choice(list(RANK)),
            "reported_at": reported.isoformat(),
        }
        extra.append(Admission(event, later + timedelta(minutes=i)))
    for i, a in enumerate(rnd.sample(base, 40)):
        # Ties: the same reported_at in another offset; the greater event id wins.
        same = datetime.fromisoformat(a.event["reported_at"]).astimezone(UTC)
        event = {
            **a.event,
            "event_id": str(uuid.uuid4()),
            "status": rnd.choice(list(RANK)),
            "reported_at": same.isoformat(),
        }
        extra.append(Admission(event, later + timedelta(hours=5, minutes=i)))
    # The measure with targets gets observations, one per target.
    m0 = measures[0]
    for i, value in enumerate((30.0, 1.0, 5.0)):
        event = {
            "event_id": str(uuid.uuid4()),
            "schema_version": 1,
            "measure_id": m0.id,
            "agency": str(m0.lead_agencies[0]),
            "fiscal_year": 2025,
            "quarter": 1,
            "status": "on_track",
            "reported_at": "2025-07-10T10:00:00+09:00",
            "kpis": [{"target": i, "value": value, "as_of": "2025-06-30"}],
        }
        extra.append(Admission(event, later + timedelta(hours=9, minutes=i)))
    admissions = base + extra
    rnd.shuffle(admissions)
    duplicates = rnd.sample(admissions, 60)
    return measures, admissions, duplicates


async def publish(admin_nc: Client, admissions: list[Admission], duplicates: list[Admission] = ()) -> None:  # type: ignore[assignment]
    js = admin_nc.jetstream()
    for a in admissions:
        await js.publish(a.subject, a.body(), headers={"Nats-Msg-Id": a.event_id})
    for a in duplicates:
        # The same event again: once within the duplicate window (the broker drops it), once as if after it.
        await js.publish(a.subject, a.body(), headers={"Nats-Msg-Id": a.event_id})
        await js.publish(a.subject, a.body(), headers={"Nats-Msg-Id": f"{a.event_id}-republished"})


def _close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9


def assert_tally(actual: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    for key in ("measures_total", "reported", "on_time"):
        assert actual[key] == expected[key], f"{where}: {key} {actual[key]} != {expected[key]}"
    assert _close(actual["coverage"], expected["coverage"]), where
    assert _close(actual["on_time_rate"], expected["on_time_rate"]), where
    assert actual["by_status"] == expected["by_status"], where


async def assert_rollups(http: Any, expected: Expected, today: date, *, as_of: datetime | None = None) -> None:
    for fy, q in [*QUARTERS, (2023, 1)]:
        params = {"as_of": as_of.isoformat()} if as_of else {}
        response = await http.get(f"/rollups/{fy}/{q}", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        want = expected.rollup(fy, q, as_of)
        where = f"FY{fy}Q{q}"
        assert (body["fiscal_year"], body["quarter"], body["label"]) == (fy, q, where)
        assert body["period_end"] == quarter_end(fy, q).isoformat()
        assert_tally(body, want, where)
        assert set(body["by_agency"]) == set(AGENCIES)
        for agency in AGENCIES:
            assert_tally(body["by_agency"][agency], want["by_agency"][agency], f"{where} {agency}")
        assert set(body["by_section"]) == {"1", "2", "3", "4", "5", "6"}
        for section in body["by_section"]:
            assert_tally(body["by_section"][section], want["by_section"][section], f"{where} section {section}")
        previous = expected.rollup(*previous_quarter(fy, q), as_of)
        assert_tally(body["previous"], previous, f"{where} previous")
        assert sorted(body["moved_worse"]) == sorted(want["moved_worse"])
        assert sorted(body["moved_better"]) == sorted(want["moved_better"])
        if as_of is None:
            overdue = sum(o for m in expected.measures for o, _ in expected.targets(m, today))
            assert body["overdue_targets"] == overdue


async def assert_measures(http: Any, expected: Expected, today: date) -> None:
    for fy, q in QUARTERS:
        response = await http.get(f"/rollups/{fy}/{q}/measures", params={"limit": 1000})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(expected.measures)
        eff = expected.effective(fy, q)
        statuses = expected.statuses(fy, q)
        before = expected.statuses(*previous_quarter(fy, q))
        items = {i["measure_id"]: i for i in body["items"]}
        assert [i["measure_id"] for i in body["items"]] == [m.id for m in expected.measures]  # document order
        for m in expected.measures:
            item = items[m.id]
            assert item["status"] == statuses[m.id], m.id
            assert item["previous_status"] == before[m.id]
            assert [lead["agency"] for lead in item["leads"]] == list(m.lead_agencies)
            for lead in item["leads"]:
                own = eff.get((m.id, lead["agency"]))
                if own is None:
                    assert (lead["status"], lead["event_id"], lead["on_time"]) == ("unreported", None, None)
                else:
                    assert lead["status"] == own.status
                    assert lead["event_id"] == own.event_id
                    assert datetime.fromisoformat(lead["reported_at"]) == own.reported_at
                    assert lead["on_time"] == (own.judged_at <= deadline(fy, q))
            assert item["event_ids"] == [eff[(m.id, a)].event_id for a in m.lead_agencies if (m.id, a) in eff]
            assert [(t["overdue"], t["rating"]) for t in item["targets"]] == expected.targets(m, today), m.id
        # Filters drill down from the rollup's counts.
        rollup = (await http.get(f"/rollups/{fy}/{q}")).json()
        for agency in ("digital", "mic"):
            listed = (await http.get(f"/rollups/{fy}/{q}/measures", params={"agency": agency, "limit": 1000})).json()
            assert listed["total"] == rollup["by_agency"][agency]["measures_total"]
            delayed = (
                await http.get(f"/rollups/{fy}/{q}/measures", params={"agency": agency, "status": "delayed"})
            ).json()
            assert delayed["total"] == rollup["by_agency"][agency]["by_status"]["delayed"]
            assert all(i["agency_status"] == "delayed" for i in delayed["items"])
        for section in ("1", "2"):
            listed = (await http.get(f"/rollups/{fy}/{q}/measures", params={"section": section})).json()
            assert listed["total"] == rollup["by_section"][section]["measures_total"]
        for status in ALL_STATUSES:
            listed = (await http.get(f"/rollups/{fy}/{q}/measures", params={"status": status})).json()
            assert listed["total"] == rollup["by_status"][status]
        page = (await http.get(f"/rollups/{fy}/{q}/measures", params={"limit": 7, "offset": 7})).json()
        assert [i["measure_id"] for i in page["items"]] == [m.id for m in expected.measures[7:14]]
        assert (page["total"], page["limit"], page["offset"]) == (len(expected.measures), 7, 7)


async def assert_year_and_history(http: Any, expected: Expected) -> None:
    year = (await http.get("/rollups/2024")).json()
    assert [q["label"] for q in year["quarters"]] == ["FY2024Q1", "FY2024Q2", "FY2024Q3", "FY2024Q4"]
    for quarter in year["quarters"]:
        alone = (await http.get(f"/rollups/2024/{quarter['quarter']}")).json()
        assert {k: v for k, v in quarter.items() if k != "has_started"} == alone
    for m in expected.measures[:8]:
        history = (await http.get(f"/measures/{m.id}/history")).json()
        with_data = sorted(
            {(r.fy, r.q) for r in expected.reports.values() if r.measure_id == m.id and r.agency in m.lead_agencies}
        )
        assert [(i["fiscal_year"], i["quarter"]) for i in history["items"]] == with_data
        for item in history["items"]:
            assert item["status"] == expected.statuses(item["fiscal_year"], item["quarter"])[m.id]
            assert item["label"] == f"FY{item['fiscal_year']}Q{item['quarter']}"
        assert history["latest_status"] == expected.latest_status(m)


async def assert_csv(http: Any, expected: Expected) -> None:
    response = await http.get("/rollups/2024/3", params={"format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert len(rows) == 1 + 6 + 17
    whole = expected.rollup(2024, 3)
    assert rows[0]["scope"] == "government"
    assert int(rows[0]["delayed"]) == whole["by_status"]["delayed"]
    assert int(rows[0]["reported"]) == whole["reported"]
    measures = await http.get("/rollups/2024/3/measures", params={"format": "csv"})
    assert len(list(csv.DictReader(io.StringIO(measures.content.decode("utf-8-sig"))))) == len(expected.measures)
    history = await http.get(f"/measures/{expected.measures[0].id}/history", params={"format": "csv"})
    assert history.content.startswith("\ufeff".encode())


def snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                "events": repository.table_rows(conn, repository.LIVE.events),
                "effective_reports": repository.table_rows(conn, repository.LIVE.effective),
            }
    finally:
        engine.dispose()


def today_in_tokyo() -> date:
    return datetime.now(JST).date()


@pytest.mark.timeout(240)
async def test_rollups_match_an_independent_computation(
    nats_server: NatsServer,
    admin_nc: Client,
    reporting_nc: Client,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small replay batches, so that the rebuild's writer processes share the stream between them.
    monkeypatch.setattr(rebuild, "REQUEST_BATCH", 97)
    measures, admissions, duplicates = scenario()
    await put_catalog(admin_nc, measures)
    settings = reporting_settings(
        nats_server.plain_url, nats_server.passwords["reporting"], database_url, tmp_path / "reporting", batch_size=50
    )
    expected = Expected(measures, admissions)
    async with running_reporting(settings) as reporting:
        half = len(admissions) // 2
        await publish(admin_nc, admissions[:half], duplicates)
        await publish(admin_nc, admissions[half:])
        await wait_caught_up(admin_nc)
        today = today_in_tokyo()
        await assert_rollups(reporting.http, expected, today)
        await assert_measures(reporting.http, expected, today)
        await assert_year_and_history(reporting.http, expected)
        await assert_csv(reporting.http, expected)

        # As published: only what had been admitted by then.
        ordered = sorted(a.admitted_at for a in admissions)
        for moment in (ordered[len(ordered) // 3], ordered[-50]):
            await assert_rollups(reporting.http, expected, today, as_of=moment.astimezone(JST))

        # Every event stored once, whatever came twice.
        incremental = snapshot(database_url)
        assert len(incremental["events"]) == len(expected.reports)

        # Rebuild (with the service running) equals the incremental store row for row.
        engine = make_engine(database_url)
        try:
            result = await rebuild_store(engine, reporting_nc, progress=False)
        finally:
            engine.dispose()
        assert result.events_stored == len(expected.reports)
        assert snapshot(database_url) == incremental
        await assert_rollups(reporting.http, expected, today)

        # A rebuild while events keep arriving loses none of them.
        more = random_admissions(
            measures, [FiscalQuarter(2025, 1)], 300, seed=99, admitted_from=datetime(2025, 8, 1, tzinfo=UTC)
        )
        engine = make_engine(database_url)
        try:
            publishing = asyncio.create_task(publish(admin_nc, more))
            await asyncio.sleep(0.05)
            await rebuild_store(engine, reporting_nc, progress=False)
            await publishing
        finally:
            engine.dispose()
        await wait_caught_up(admin_nc)
        expected = Expected(measures, admissions + more)
        await assert_rollups(reporting.http, expected, today)
        assert len(snapshot(database_url)["events"]) == len(expected.reports)


async def test_bad_inputs_are_4xx_with_a_message(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path
) -> None:
    await put_catalog(admin_nc, synthetic_measures(12))
    settings = reporting_settings(nats_server.plain_url, nats_server.passwords["reporting"], sqlite_url, tmp_path)
    async with running_reporting(settings) as reporting:
        http = reporting.http
        cases = {
            "/rollups/1899/1": 400,
            "/rollups/9999/1": 400,
            "/rollups/2024/5": 400,
            "/rollups/2024/0": 400,
            "/rollups/20x4/1": 422,
            "/rollups/abc": 422,
            "/rollups/2024/3?as_of=yesterday": 400,
            "/rollups/2024/3?as_of=2025-01-01T00:00:00": 400,
            "/rollups/2024/3?as_of=2025-01-01": 400,
            "/rollups/2024/3?format=xml": 422,
            "/rollups/2024/3/measures?agency=nasa": 400,
            "/rollups/2024/3/measures?section=7": 400,
            "/rollups/2024/3/measures?section=one": 422,
            "/rollups/2024/3/measures?status=fine": 400,
            "/rollups/2024/3/measures?limit=0": 422,
            "/rollups/2024/3/measures?limit=5000": 422,
            "/rollups/2024/3/measures?offset=-1": 422,
            "/measures/9-99/history": 404,
            "/measures/nonsense/history": 404,
        }
        for path, status in cases.items():
            response = await http.get(path)
            assert response.status_code == status, (path, response.text)
            assert response.json()["detail"], path
        # An unencoded '+' in the offset arrives as a space and is still understood; 'Z' too.
        assert (await http.get("/rollups/2024/3?as_of=2025-01-01T00:00:00 09:00")).status_code == 200
        assert (await http.get("/rollups/2024/3", params={"as_of": "2025-01-01T00:00:00Z"})).status_code == 200
        docs = await http.get("/docs")
        assert docs.status_code == 200
        spec = (await http.get("/openapi.json")).json()
        assert "/rollups/{fiscal_year}/{quarter}" in spec["paths"]
        metrics = (await http.get("/metrics")).text
        assert "shinchoku_reporting_rollup_freshness_seconds" in metrics


async def test_catalog_changes_are_followed(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(12)
    await put_catalog(admin_nc, measures)
    settings = reporting_settings(nats_server.plain_url, nats_server.passwords["reporting"], sqlite_url, tmp_path)
    async with running_reporting(settings) as reporting:
        assert (await reporting.http.get("/rollups/2024/3")).json()["measures_total"] == len(measures)
        kv = await admin_nc.jetstream().key_value("CATALOG")
        extra = measures[0].model_copy(update={"id": "6-99", "section": 6})
        await kv.put(extra.id, extra.model_dump_json().encode())
        await kv.delete(measures[1].id)
        for _ in range(100):
            body = (await reporting.http.get("/rollups/2024/3")).json()
            # Both changes followed (the put and the delete are two updates of the mirror: read between them,
            # the rollup counts the added measure and still the deleted one; seen once in CI).
            added = body["by_section"]["6"]["measures_total"] == sum(m.section == 6 for m in measures) + 1
            if added and body["measures_total"] == len(measures):
                break
            await asyncio.sleep(0.05)
        assert body["measures_total"] == len(measures)  # one added, one deleted
        assert (await reporting.http.get(f"/measures/{measures[1].id}/history")).status_code == 404


def _service_env(nats_server: NatsServer, database_url: str, data_dir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "SHINCHOKU_REPORTING_NATS_URL": nats_server.plain_url,
        "SHINCHOKU_REPORTING_NATS_USER": "reporting",
        "SHINCHOKU_REPORTING_NATS_PASSWORD": nats_server.passwords["reporting"],
        "SHINCHOKU_REPORTING_DATABASE_URL": database_url,
        "SHINCHOKU_REPORTING_DATA_DIR": str(data_dir),
        "SHINCHOKU_REPORTING_PORT": str(port),
        "SHINCHOKU_REPORTING_BATCH_SIZE": "100",
        "SHINCHOKU_REPORTING_ACK_WAIT": "3",
        "OTEL_SDK_DISABLED": "true",
    }


async def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} not healthy after {timeout}s")
            await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
async def test_killed_mid_stream_and_restarted_gives_the_same_rollups(
    nats_server: NatsServer, admin_nc: Client, database_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(60, seed=5)
    await put_catalog(admin_nc, measures)
    quarters = [FiscalQuarter(2024, 3), FiscalQuarter(2024, 4)]
    # Enough that the kill lands well before the end: the consumer applies ≈ 20,000 events a second at best, and the
    # kill comes a few milliseconds after the first 600 are acknowledged (4,000 were once all applied by then).
    admissions = random_admissions(measures, quarters, 12_000, seed=5)
    port = free_port()
    env = _service_env(nats_server, database_url, tmp_path / "reporting", port)
    # Small transactions, so that the stream is applied in many steps and the kill lands between two of them (by
    # default queued batches merge up to 4,000 rows: a service that fell behind for a moment applied all 4,000
    # in one transaction, and the kill came after the whole stream, once in CI).
    env["SHINCHOKU_REPORTING_MAX_ROWS_PER_TRANSACTION"] = "200"
    auth = StackAuth(EmbeddedIssuer.prepare(tmp_path / "reporting"))
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "reporting.log").open("ab")
    js = admin_nc.jetstream()
    process = subprocess.Popen([sys.executable, "-m", "reporting"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await _wait_http(f"{base}/healthz")
        publishing = asyncio.create_task(publish_admissions(admin_nc, admissions))
        while (await js.consumer_info("ACCEPTED", "reporting")).ack_floor.stream_seq < 600:
            await asyncio.sleep(0.005)
        process.kill()  # SIGKILL: no shutdown, whatever batch was being written is lost mid-transaction
        process.wait(10)
        applied = (await js.consumer_info("ACCEPTED", "reporting")).ack_floor.stream_seq
        await publishing
        assert applied < len(admissions), "the kill came after the whole stream was applied"

        process = subprocess.Popen([sys.executable, "-m", "reporting"], env=env, stdout=log, stderr=subprocess.STDOUT)
        await _wait_http(f"{base}/healthz")
        await wait_caught_up(admin_nc, timeout=60)
        expected = Expected(measures, admissions)
        async with httpx.AsyncClient(base_url=base, auth=auth) as http:
            for q in quarters:
                body = (await http.get(f"/rollups/{q.fiscal_year}/{q.quarter}")).json()
                want = expected.rollup(q.fiscal_year, q.quarter)
                assert_tally(body, want, q.label)
                for agency in AGENCIES:
                    assert_tally(body["by_agency"][agency], want["by_agency"][agency], f"{q.label} {agency}")
                for section in body["by_section"]:
                    assert_tally(body["by_section"][section], want["by_section"][section], f"{q.label} {section}")
        assert len(snapshot(database_url)["events"]) == len(admissions)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


async def test_a_writer_process_that_dies_is_replaced_and_nothing_is_lost(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(20, seed=2)
    await put_catalog(admin_nc, measures)
    settings = reporting_settings(
        nats_server.plain_url, nats_server.passwords["reporting"], sqlite_url, tmp_path, writer_processes=1
    )
    quarter = FiscalQuarter(2024, 3)
    first = random_admissions(measures, [quarter], 200, seed=1)
    second = random_admissions(measures, [quarter], 200, seed=2, admitted_from=datetime(2025, 3, 1, tzinfo=UTC))
    async with running_reporting(settings) as reporting:
        await publish_admissions(admin_nc, first)
        await wait_caught_up(admin_nc)
        writers = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit()
            and (p / "stat").exists()
            and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(os.getpid())
            and b"spawn_main" in (p / "cmdline").read_bytes()
        ]
        assert writers, "no writer process found"
        for pid in writers:
            os.kill(pid, signal.SIGKILL)
        await publish_admissions(admin_nc, second)
        await wait_caught_up(admin_nc, timeout=60)
        body = (await reporting.http.get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}")).json()
    expected = Expected(measures, first + second)
    assert_tally(body, expected.rollup(quarter.fiscal_year, quarter.quarter), quarter.label)
    assert len(snapshot(sqlite_url)["events"]) == len(expected.reports)


@pytest.mark.timeout(120)
async def test_a_writer_killed_mid_rebuild_fails_it_at_once_and_leaves_the_store_alone(
    admin_nc: Client, reporting_nc: Client, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rebuild, "REQUEST_BATCH", 20)  # many small batches: the replay takes a while
    measures = synthetic_measures(30)
    await publish_admissions(admin_nc, random_admissions(measures, [FiscalQuarter(2025, 1)], 6000, seed=8))
    engine = make_engine(database_url)
    try:
        repository.create_store(engine)
        before = snapshot(database_url)
        running = asyncio.create_task(rebuild_store(engine, reporting_nc, progress=False))
        deadline = asyncio.get_running_loop().time() + 20
        while not [p for p in multiprocessing.active_children() if p.is_alive()]:
            assert asyncio.get_running_loop().time() < deadline, "the rebuild started no writer process"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        victim = next(p for p in multiprocessing.active_children() if p.is_alive())
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RuntimeError, match="writer process"):
            await running
        # At once: not after waiting for the other writer to time out.
        assert asyncio.get_running_loop().time() - started < 10
        assert not [p for p in multiprocessing.active_children() if p.is_alive()]
        assert snapshot(database_url) == before
    finally:
        engine.dispose()
