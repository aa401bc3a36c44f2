"""The dashboard's view models and pages over a fake rollup source (no NATS, no database, no browser).

One module of ~420 lines on purpose: every page and view model here is checked against the one `FakeSource`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from contracts.events import SEVERITY_ORDER, UNREPORTED
from contracts.periods import TOKYO, FiscalQuarter
from reporting.dashboard import router
from reporting.dashboard.models import Group, HistoryEntry, LeadReport, MeasureHistory, MeasureInfo, MeasureRow, Rollup
from reporting.dashboard.routes import get_source
from reporting.dashboard.source import ApiSource, SourceError
from reporting.dashboard.state import BadState, ViewState
from reporting.dashboard.view import (
    bar,
    delta_points,
    grid,
    group_from_rows,
    row_status,
    status_changes,
)
from shinchoku_runtime.auth import Principal, Role

Q3 = FiscalQuarter(2024, 3)
Q2 = FiscalQuarter(2024, 2)
NOW = datetime(2025, 6, 1, 12, tzinfo=TOKYO)


@dataclass(frozen=True)
class Report:
    quarter: FiscalQuarter
    measure_id: str
    agency: str
    status: str
    reported_at: datetime
    event_id: str
    note: str | None = None


MEASURES: list[MeasureInfo] = [
    MeasureInfo(id="1-1", section=1, title="マイナンバー制度の推進", lead_agencies=["digital"]),
    MeasureInfo(id="1-2", section=1, title="データの品質の確保", lead_agencies=["digital", "mic"]),
    MeasureInfo(id="1-10", section=1, title="e-Taxの利用促進", lead_agencies=["mof"]),
    MeasureInfo(id="2-1", section=2, title="医療DX", lead_agencies=["mhlw", "digital"]),
    MeasureInfo(id="6-1", section=6, title="DFFT", lead_agencies=["digital"]),
]


def _at(q: FiscalQuarter, days: int) -> datetime:
    return q.end_at + timedelta(days=days)


REPORTS: list[Report] = [
    Report(Q2, "1-1", "digital", "at_risk", _at(Q2, 5), "e-1"),
    Report(Q2, "1-2", "digital", "on_track", _at(Q2, 5), "e-2"),
    Report(Q2, "1-2", "mic", "on_track", _at(Q2, 5), "e-3"),
    Report(Q3, "1-1", "digital", "on_track", _at(Q3, 3), "e-4", note="順調に推移"),
    Report(Q3, "1-2", "digital", "completed", _at(Q3, 3), "e-5"),
    Report(Q3, "1-2", "mic", "delayed", _at(Q3, 40), "e-6"),
    Report(Q3, "2-1", "mhlw", "at_risk", _at(Q3, 10), "e-7"),
]

_RANK = {s.value: i for i, s in enumerate(SEVERITY_ORDER)}


class FakeSource:
    """Rolls up a fixed list of reports the way DESIGN.md says (latest reported_at wins per lead)."""

    def __init__(self, reports: list[Report]) -> None:
        self.reports = reports

    def _rows(self, quarter: FiscalQuarter, as_of: datetime | None) -> list[MeasureRow]:
        rows = []
        for m in MEASURES:
            leads = []
            for agency in m.lead_agencies:
                mine = [
                    r
                    for r in self.reports
                    if r.quarter == quarter
                    and r.measure_id == m.id
                    and r.agency == agency
                    and (as_of is None or r.reported_at <= as_of)
                ]
                best = max(mine, key=lambda r: (r.reported_at, r.event_id), default=None)
                leads.append(
                    LeadReport(
                        agency=agency,
                        status=best.status if best else None,
                        event_id=best.event_id if best else None,
                        reported_at=best.reported_at if best else None,
                        on_time=quarter.is_on_time(best.reported_at) if best else None,
                        note=best.note if best else None,
                    )
                )
            statuses = [lead.status for lead in leads if lead.status]
            status = min(statuses, key=_RANK.__getitem__) if statuses else UNREPORTED
            rows.append(MeasureRow(measure_id=m.id, section=m.section, status=status, title=m.title, leads=leads))
        return rows

    async def rollup(self, quarter: FiscalQuarter, *, as_of: datetime | None) -> Rollup:
        rows = self._rows(quarter, as_of)
        whole = group_from_rows(rows, None)
        agencies = {a for m in MEASURES for a in m.lead_agencies}
        by_agency = {
            a: group_from_rows([r for r in rows if any(lead.agency == a for lead in r.leads)], a) for a in agencies
        }
        by_section = {str(s): group_from_rows([r for r in rows if r.section == s], None) for s in range(1, 7)}
        return Rollup(
            fiscal_year=quarter.fiscal_year,
            quarter=quarter.quarter,
            label=quarter.label,
            **whole.model_dump(exclude={"overdue_targets"}),
            by_agency=by_agency,
            by_section=by_section,
        )

    async def measures(
        self, quarter: FiscalQuarter, *, as_of: datetime | None, filters: dict[str, str]
    ) -> list[MeasureRow]:
        changes = status_changes(self._rows(quarter, as_of), self._rows(quarter.previous(), as_of))
        rows = [
            r.model_copy(
                update={
                    "movement": "better"
                    if r.measure_id in changes.improved
                    else "worse"
                    if r.measure_id in changes.worsened
                    else None
                }
            )
            for r in self._rows(quarter, as_of)
        ]
        if "agency" in filters:
            rows = [r for r in rows if any(lead.agency == filters["agency"] for lead in r.leads)]
        if "section" in filters:
            rows = [r for r in rows if str(r.section) == filters["section"]]
        return rows

    async def history(self, measure_id: str) -> MeasureHistory:
        info = next((m for m in MEASURES if m.id == measure_id), None)
        if info is None:
            raise SourceError(404, f"no such measure: {measure_id}")
        entries = []
        for q in sorted({r.quarter for r in self.reports if r.measure_id == measure_id}):
            row = next(r for r in self._rows(q, None) if r.measure_id == measure_id)
            entries.append(
                HistoryEntry(
                    fiscal_year=q.fiscal_year, quarter=q.quarter, label=q.label, status=row.status, leads=row.leads
                )
            )
        return MeasureHistory(measure=info, quarters=entries)

    async def last_admitted(self) -> str | None:
        return max(r.reported_at for r in self.reports).isoformat() if self.reports else None

    async def year(self, fiscal_year: int) -> list[Rollup]:
        return [await self.rollup(FiscalQuarter(fiscal_year, q), as_of=None) for q in range(1, 5)]


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    source = FakeSource(REPORTS)
    app.dependency_overrides[get_source] = lambda: source
    return TestClient(app)


def test_state_round_trips_through_the_url() -> None:
    state = ViewState.from_query({"fy": "2024", "q": "3", "agency": "mic", "section": "1", "view": "published"})
    assert state.quarter == Q3
    assert state.query() == "?fy=2024&q=3&agency=mic&section=1&view=published"
    assert ViewState.from_query({"lang": "en"}).query(agency="mof") == "?agency=mof&lang=en"
    assert ViewState().query() == ""


@pytest.mark.parametrize(
    "query",
    [
        {"fy": "x"},
        {"fy": "2024", "q": "5"},
        {"agency": "nope"},
        {"section": "7"},
        {"view": "then"},
        {"as_of": "yesterday"},
    ],
)
def test_bad_state_is_refused_with_a_reason(query: dict[str, str]) -> None:
    with pytest.raises(BadState):
        ViewState.from_query(query)


def test_an_explicit_moment_holds_until_a_named_view_is_picked() -> None:
    shared = ViewState.from_query({"fy": "2024", "q": "3", "as_of": "2025-02-01T00:00:00+09:00"})
    assert shared.as_of == datetime(2025, 2, 1, tzinfo=TOKYO)
    assert shared.query() == "?fy=2024&q=3&as_of=2025-02-01T00%3A00%3A00%2B09%3A00"
    assert ViewState.from_query({"as_of": "2025-02-01T00:00:00 09:00", "view": "as_of"}).as_of is not None
    picked = ViewState.from_query({"fy": "2024", "q": "3", "as_of": "2025-02-01T00:00:00+09:00", "view": "now"})
    assert picked.as_of is None
    assert picked.query() == "?fy=2024&q=3"


def test_bar_orders_best_to_worst_and_speaks_its_counts() -> None:
    b = bar({"delayed": 1, "completed": 3, "unreported": 4}, "ja")
    assert [s.status for s in b.segments][:2] == ["completed", "on_track"]
    assert b.total == 8
    assert "完了 3件" in b.aria
    assert "未報告 4件" in b.aria
    assert b.segments[1].width == "0.000%"


def test_deltas_in_points() -> None:
    d = delta_points(0.5, 0.25)
    assert d is not None
    assert d.text == "+25.0pt"
    assert d.direction == "up"
    assert delta_points(None, 0.1) is None


async def test_status_changes_ignore_silence() -> None:
    source = FakeSource(REPORTS)
    now_rows, prev_rows = (
        await source.measures(Q3, as_of=None, filters={}),
        await source.measures(Q2, as_of=None, filters={}),
    )
    changes = status_changes(now_rows, prev_rows)
    # 1-1 at_risk → on_track is better; 1-2 on_track → delayed (mic) is worse; 2-1 was unreported.
    assert changes.improved == ["1-1"]
    assert changes.worsened == ["1-2"]


async def test_agency_filter_shows_the_agencys_own_report() -> None:
    rows = await FakeSource(REPORTS).measures(Q3, as_of=None, filters={"agency": "digital"})
    row = next(r for r in rows if r.measure_id == "1-2")
    assert row.status == "delayed"
    assert row_status(row, "digital") == "completed"
    cells = {c.measure_id: c for s in grid(rows, ViewState(agency="digital")) for c in s.cells}
    assert cells["1-2"].status == "completed"
    assert cells["2-1"].status == UNREPORTED


def test_group_from_rows_counts_on_time_only_when_every_lead_was() -> None:
    rows = [
        MeasureRow(
            measure_id="1-1",
            section=1,
            status="on_track",
            leads=[LeadReport(agency="digital", status="on_track", on_time=True)],
        ),
        MeasureRow(
            measure_id="1-2",
            section=1,
            status="delayed",
            leads=[
                LeadReport(agency="digital", status="on_track", on_time=True),
                LeadReport(agency="mic", status="delayed", on_time=False),
            ],
        ),
        MeasureRow(measure_id="1-3", section=1, status=UNREPORTED, leads=[LeadReport(agency="mic")]),
    ]
    g = group_from_rows(rows, None)
    assert (g.measures_total, g.reported, g.on_time) == (3, 2, 1)
    assert g.by_status["delayed"] == 1
    assert g.by_status[UNREPORTED] == 1
    assert group_from_rows(rows, "digital") == Group(
        measures_total=3,
        reported=2,
        coverage=2 / 3,
        on_time=2,
        by_status=g.by_status | {"delayed": 0, "on_track": 2, UNREPORTED: 1},
        overdue_targets=0,
    )


def test_overview_renders_counts_grid_and_tables(client: TestClient) -> None:
    html = client.get("/dashboard?fy=2024&q=3").text
    assert '<html lang="ja">' in html
    assert 'data-testid="reported">3<' in html
    assert 'data-testid="grid-count">5<' in html
    assert html.count('class="cell st-') == 5
    assert 'data-status="unreported" data-count="2"' in html  # 1-10 and 6-1 are silent
    assert 'aria-label="1-2 データの品質の確保 — 遅延"' in html
    assert "/rollups/2024/3/measures?format=csv" in html
    assert 'data-testid="agency-table"' in html
    assert 'data-testid="improved"><span aria-hidden="true">↑</span> 改善 1<' in html
    assert 'data-testid="worsened"><span aria-hidden="true">↓</span> 悪化 1<' in html
    assert "Ministry of Internal Affairs and Communications" in html


def test_root_defaults_to_the_latest_quarter_with_data(client: TestClient) -> None:
    html = client.get("/").text
    assert "FY2024Q3" in html


def test_overview_in_english_with_filters(client: TestClient) -> None:
    html = client.get("/dashboard?fy=2024&q=3&section=1&lang=en").text
    assert '<html lang="en">' in html
    assert 'data-testid="grid-count">3<' in html
    assert "Status distribution for section 1" in html
    assert "section=1" in html.split('data-testid="csv-measures"')[0].rsplit("href=", 1)[1]


def test_partial_answers_only_the_live_part(client: TestClient) -> None:
    html = client.get("/dashboard?fy=2024&q=3&partial=1").text
    assert "<html" not in html
    assert 'data-testid="coverage"' in html


def test_live_fingerprint_changes_when_a_report_is_admitted() -> None:
    app = FastAPI()
    app.include_router(router)
    source = FakeSource(list(REPORTS))
    app.dependency_overrides[get_source] = lambda: source
    client = TestClient(app)
    before = client.get("/dashboard/live?fy=2024&q=3").json()["version"]
    assert client.get("/dashboard/live?fy=2024&q=3").json()["version"] == before
    source.reports.append(Report(Q3, "6-1", "digital", "on_track", _at(Q3, 1), "e-8"))
    assert client.get("/dashboard/live?fy=2024&q=3").json()["version"] != before
    page = client.get("/dashboard?fy=2024&q=3").text
    assert f'data-version="{client.get("/dashboard/live?fy=2024&q=3").json()["version"]}"' in page


def test_bad_url_is_a_400_page_not_a_500(client: TestClient) -> None:
    response = client.get("/dashboard?fy=2024&q=9")
    assert response.status_code == 400
    assert "quarter must be 1–4" in response.text


def test_measure_page_shows_history_reports_and_lineage(client: TestClient) -> None:
    html = client.get("/dashboard/measures/1-2").text
    assert "データの品質の確保" in html
    assert len(re.findall(r'<li[^>]* data-quarter="FY2024Q\d" data-status', html)) == 2  # one per quarter with data
    assert '<li data-quarter="FY2024Q2" data-status="on_track">' in html
    assert html.count('<tr data-quarter="FY2024Q2">') == 2  # each lead's past report
    assert 'aria-current="true" class="current" data-quarter="FY2024Q3"' in html
    assert "http://127.0.0.1:8002/events/e-6" in html
    assert "shinchoku trace e-6" in html


def test_unknown_measure_is_a_404_page(client: TestClient) -> None:
    response = client.get("/dashboard/measures/9-9")
    assert response.status_code == 404


def test_static_files_are_served_and_nothing_else(client: TestClient) -> None:
    assert client.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/dashboard/static/../routes.py").status_code == 404
    assert client.get("/dashboard/static/nope.js").status_code == 404


def test_pages_fetch_nothing_from_outside(client: TestClient) -> None:
    for path in ("/dashboard?fy=2024&q=3", "/dashboard/measures/1-1"):
        html = client.get(path).text
        for attr in ('src="http', 'href="//', 'src="//', "@import", "url(http"):
            assert attr not in html
    css = client.get("/dashboard/static/dashboard.css").text
    assert "http" not in css


def test_a_submitted_form_redirects_to_the_short_shareable_url(client: TestClient) -> None:
    response = client.get("/dashboard?lang=en&fy=2024&q=3&agency=&section=2&view=now", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard?fy=2024&q=3&section=2&lang=en"
    assert client.get("/dashboard?fy=2024&q=3&section=2&lang=en", follow_redirects=False).status_code == 200


def test_a_silent_lead_has_no_status() -> None:
    lead = LeadReport.model_validate({"agency": "mic", "status": "unreported", "event_id": None})
    assert lead.status is None


async def test_api_source_reads_the_binding_shapes_in_process() -> None:
    api = FastAPI()

    @api.get("/rollups/{fy}/{q}")
    def rollup(fy: int, q: int, as_of: str | None = None) -> dict[str, object]:
        if q > 4:
            raise HTTPException(422, "quarter must be 1–4")
        return {"fiscal_year": fy, "quarter": q, "label": f"FY{fy}Q{q}", "reported": 3, "as_of": as_of, "extra": 1}

    @api.get("/rollups/{fy}/{q}/measures")
    def measures(fy: int, q: int, agency: str | None = None) -> dict[str, object]:
        lead = {"agency": agency or "mic", "status": "unreported", "event_id": None}
        return {"items": [{"measure_id": "1-1", "section": 1, "status": "unreported", "leads": [lead]}], "total": 1}

    @api.get("/measures/{measure_id}/history")
    def history(measure_id: str) -> dict[str, object]:
        if measure_id != "1-1":
            raise HTTPException(404, f"no such measure: {measure_id}")
        item = {"fiscal_year": 2024, "quarter": 3, "status": "on_track", "leads": []}
        return {"measure": {"id": "1-1", "section": 1, "title": "t"}, "items": [item], "total": 1}

    @api.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"status": "unavailable", "last_admitted_at": "2025-03-01T00:00:00+00:00"}, 503)

    source = ApiSource(api)
    moment = datetime(2025, 1, 31, tzinfo=TOKYO)
    answer = await source.rollup(Q3, as_of=moment)
    assert (answer.label, answer.reported) == ("FY2024Q3", 3)
    rows = await source.measures(Q3, as_of=None, filters={"agency": "cfa"})
    assert rows[0].leads[0].agency == "cfa"
    assert rows[0].leads[0].status is None
    hist = await source.history("1-1")
    assert hist.measure is not None
    assert [e.label or (e.fiscal_year, e.quarter) for e in hist.quarters] == [(2024, 3)]
    with pytest.raises(SourceError) as caught:
        await source.history("9-9")
    assert caught.value.status == 404
    assert "no such measure" in caught.value.message
    # The live refresh's mark: for the signed-in; the public is not told when anything is admitted.
    assert await source.last_admitted() is None
    signed_in = ApiSource(api, Principal(Role.secretariat, None, "x"))
    assert await signed_in.last_admitted() == "2025-03-01T00:00:00+00:00"
