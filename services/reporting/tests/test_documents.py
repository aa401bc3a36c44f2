"""Every reporting route's JSON is exactly its declared response model, over real data.

Admitted events (corrections, late reports, KPI observations, notes, a reporter's name) on measures whose
targets state baselines and milestones go through a real nats-server into a real reporting app on SQLite and
on PostgreSQL. Each route's answer, with and without filters and `as_of`, must validate strictly against the
model the route declares in the OpenAPI document, and dump back to the very same JSON: no key the model does
not declare, none it declares missing, every value of its declared type.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from pydantic import BaseModel

from contracts.catalog import Baseline, DateRange, Measure, Milestone
from contracts.periods import TOKYO, FiscalQuarter
from reporting.domain import ROLLUP_STATUSES
from reporting.schemas import STATUS_NAMES, HistoryOut, MeasureListOut, RevisionsOut, RollupOut, YearOut
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
from shinchoku_runtime.natsserver import NatsServer

QUARTERS = [FiscalQuarter(2024, 3), FiscalQuarter(2024, 4), FiscalQuarter(2025, 1)]
ADMITTED_FROM = datetime(2025, 2, 1, tzinfo=UTC)


def with_stated_targets(measures: list[Measure]) -> list[Measure]:
    """Some targets state a baseline, a direction, a milestone and an approximate period, as the plan does."""
    out = []
    for i, measure in enumerate(measures):
        if measure.targets and i % 3 == 0:
            first = measure.targets[0].model_copy(
                update={
                    "baseline": Baseline(value=12.5, as_of=date(2022, 3, 31), unit="％"),
                    "direction": "increase",
                    "milestones": [
                        Milestone(due_date=date(2025, 3, 31), value=30.0, unit="％", text="2024年度末 30％")
                    ],
                    "due_approximate": True,
                    "due_range": DateRange(start=date(2026, 4, 1), end=date(2027, 3, 31)),
                    "due_note": "2026年度を目途: the fiscal year",
                }
            )
            measure = measure.model_copy(update={"targets": [first, *measure.targets[1:]]})
        out.append(measure)
    return out


def admissions(measures: list[Measure]) -> list[Admission]:
    base = random_admissions(measures, QUARTERS, 400, seed=23, admitted_from=ADMITTED_FROM)
    corrections: list[Admission] = []
    for i, a in enumerate(base[:60]):
        reported = datetime.fromisoformat(a.event["reported_at"]) + timedelta(days=40)  # later, and late
        event = {**a.event, "event_id": f"{a.event_id[:-12]}{i:012d}", "reported_at": reported.isoformat()}
        if i % 3 == 0:
            event["reporter"] = "山田 太郎"
        corrections.append(Admission(event, ADMITTED_FROM + timedelta(days=30, minutes=i)))
    return [*base, *corrections]


def assert_is_exactly(model: type[BaseModel], body: bytes, where: str) -> Any:
    """The JSON validates strictly against `model` and is what the validated document dumps to."""
    document = model.model_validate_json(body, strict=True)
    parsed = json.loads(body)
    assert document.model_dump(mode="json") == parsed, f"{where}: not exactly a {model.__name__}"
    return parsed


async def get_exactly(http: httpx.AsyncClient, model: type[BaseModel], path: str, **params: Any) -> Any:
    response = await http.get(path, params=params)
    assert response.status_code == 200, (path, params, response.text[:300])
    return assert_is_exactly(model, response.content, f"{path} {params}")


def test_by_status_names_the_domains_statuses() -> None:
    assert STATUS_NAMES == ROLLUP_STATUSES


@pytest.mark.timeout(180)
async def test_every_route_answers_exactly_its_response_model(
    nats_server: NatsServer, admin_nc: Client, database_url: str, tmp_path: Path
) -> None:
    measures = with_stated_targets(synthetic_measures(48, seed=8))
    published = admissions(measures)
    await put_catalog(admin_nc, measures)
    settings = reporting_settings(
        nats_server.plain_url, nats_server.passwords["reporting"], database_url, tmp_path / "reporting"
    )
    async with running_reporting(settings) as reporting:
        await publish_admissions(admin_nc, published)
        await wait_caught_up(admin_nc)
        http = reporting.http
        spec = (await http.get("/openapi.json")).json()
        declared = {
            path: operation["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/")[-1]
            for path, operation in spec["paths"].items()
            if path.startswith(("/rollups", "/measures"))
        }
        assert declared == {
            "/rollups/{fiscal_year}/{quarter}": RollupOut.__name__,
            "/rollups/{fiscal_year}/{quarter}/measures": MeasureListOut.__name__,
            "/rollups/{fiscal_year}/{quarter}/revisions": RevisionsOut.__name__,
            "/rollups/{fiscal_year}": YearOut.__name__,
            "/measures/{measure_id}/history": HistoryOut.__name__,
        }

        moments = [None, ADMITTED_FROM + timedelta(minutes=3), ADMITTED_FROM + timedelta(days=30, minutes=20)]
        as_of = [{} if m is None else {"as_of": m.astimezone(TOKYO).isoformat()} for m in moments]
        leads = sorted({str(a) for m in measures for a in m.lead_agencies})
        seen_reporter = seen_observation = seen_baseline = seen_rated_from_baseline = False
        for q in [*QUARTERS, FiscalQuarter(2023, 1)]:
            base = f"/rollups/{q.fiscal_year}/{q.quarter}"
            for params in as_of:
                await get_exactly(http, RollupOut, base, **params)
                listed = await get_exactly(http, MeasureListOut, f"{base}/measures", limit=1000, **params)
                assert listed["total"] == len(measures)
                for item in listed["items"]:
                    seen_reporter |= any(lead["reporter"] for lead in item["leads"])
                    seen_observation |= any(t["observation"] for t in item["targets"])
                    seen_baseline |= any(t["baseline"] and t["milestones"] for t in item["targets"])
                    # Rated by `reporting.ratings`: from the baseline's date, the milestone on its own.
                    seen_rated_from_baseline |= any(
                        t["baseline"]
                        and t["observation"]
                        and t["rating_start"] == "2022-03-31"
                        and [m["value"] for m in t["milestone_ratings"]] == [30.0]
                        and t["milestone_ratings"][0]["rating"] in ("A", "B")
                        for t in item["targets"]
                    )
            filters: list[dict[str, Any]] = [
                {"agency": leads[0]},
                {"agency": leads[1], "status": "delayed"},
                {"section": 2},
                {"status": "unreported"},
                {"status": "on_track", "limit": 3, "offset": 2},
                {"agency": leads[0], **as_of[1]},
            ]
            for params in filters:
                await get_exactly(http, MeasureListOut, f"{base}/measures", **params)
            await get_exactly(http, RevisionsOut, f"{base}/revisions")
        for fiscal_year in (2023, 2024, 2025):
            for params in as_of:
                year = await get_exactly(http, YearOut, f"/rollups/{fiscal_year}", **params)
                assert [quarter["label"] for quarter in year["quarters"]] == [
                    f"FY{fiscal_year}Q{n}" for n in (1, 2, 3, 4)
                ]
        reported = {a.event["measure_id"] for a in published}
        for measure in measures:
            history = await get_exactly(http, HistoryOut, f"/measures/{measure.id}/history")
            assert bool(history["items"]) == (measure.id in reported)
        assert seen_reporter, "no lead carried a reporter: the data does not reach that field"
        assert seen_observation, "no target carried an observation: the data does not reach that field"
        assert seen_baseline, "no target carried a baseline and a milestone: the data does not reach those fields"
        assert seen_rated_from_baseline, "no observed target was rated from its baseline with its milestone rated"
