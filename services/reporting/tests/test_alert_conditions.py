"""Alert conditions on plain values: when each kind holds and when it stops, and the diff that raises and resolves."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from contracts.alerts import AlertKind
from contracts.catalog import SECTION_TITLES, Measure, Target
from contracts.periods import TOKYO, FiscalQuarter
from reporting.alerts.conditions import (
    AlertInputs,
    Condition,
    Review,
    conditions,
    implausible_jump,
    lead_progress,
)
from reporting.alerts.evaluate import RAISED, RESOLVED, transitions
from reporting.alerts.messages import last_on_time_day
from reporting.domain import KpiReading, LeadReport, effective_reports
from reporting.progress import measure_progress

Q3 = FiscalQuarter(2024, 3)
Q4 = FiscalQuarter(2024, 4)
TARGET = Target(index=0, text="利用率 80％（2024年度末）", due_date=date(2025, 3, 31), value=80, unit="％")
SOLO = Measure(
    id="1-25",
    section=1,
    section_title=SECTION_TITLES[1],
    title="e-Taxの利用促進",
    lead_agencies=["mof"],
    targets=[TARGET],
)
SHARED = Measure(
    id="4-1", section=4, section_title=SECTION_TITLES[4], title="デジタル推進委員", lead_agencies=["digital", "mic"]
)
N = 0


def report(
    measure: Measure, agency: str, q: FiscalQuarter, status: str = "on_track", *, kpi: float | None = None
) -> LeadReport:
    global N
    N += 1
    kpis = (KpiReading(0, kpi, q.end),) if kpi is not None else ()
    return LeadReport(
        measure.id, agency, q.fiscal_year, q.quarter, status, q.end_at + timedelta(days=3), f"{N:036d}", kpis=kpis
    )


def holding(
    reports: list[LeadReport],
    now: datetime,
    *,
    reviews: Mapping[tuple[str, str], Review] | None = None,
    since: FiscalQuarter | None = None,
) -> dict[str, Condition]:
    found: dict[str, Condition] = conditions(AlertInputs([SOLO, SHARED], reports, reviews or {}, now, since))
    return found


def kinds(found: dict[str, Condition], measure_id: str | None = None) -> set[tuple[str, str]]:
    return {(c.kind.value, c.agency) for c in found.values() if measure_id is None or c.measure_id == measure_id}


def test_due_then_missing_then_reported() -> None:
    deadline = Q3.on_time_deadline
    assert last_on_time_day(Q3) == date(2025, 1, 30)
    assert kinds(holding([], deadline - timedelta(days=15), since=Q3), "1-25") == set()
    due = holding([], deadline - timedelta(days=14), since=Q3)
    assert ("report_due", "mof") in kinds(due, "1-25")
    (c,) = [c for c in due.values() if c.kind == AlertKind.report_due and c.measure_id == "1-25"]
    assert (c.fiscal_year, c.quarter, c.alert_id) == (2024, 3, "report_due.mof.1-25.2024.3.-")
    for text in (c.message_ja, c.message_en):
        assert "2025-01-30" in text
        assert "1-25" in text
    missing = holding([], deadline + timedelta(seconds=1), since=Q3)
    assert ("report_missing", "mof") in kinds(missing, "1-25")
    assert ("report_due", "mof") not in kinds(missing, "1-25")
    late = holding([report(SOLO, "mof", Q3)], deadline + timedelta(days=2), since=Q3)
    assert not {"report_due", "report_missing"} & {k for k, _ in kinds(late, "1-25")}


def test_stale_after_two_quarters_without_a_report() -> None:
    q2 = FiscalQuarter(2024, 2)
    reports = [report(SOLO, "mof", q2), report(SHARED, "digital", q2), report(SHARED, "mic", q2)]
    after_q4 = Q4.on_time_deadline + timedelta(days=1)
    found = holding(reports, after_q4)
    assert ("stale", "mof") in kinds(found, "1-25")
    assert ("stale", "digital") in kinds(found, "4-1")
    (c,) = [c for c in found.values() if c.kind == AlertKind.stale and c.agency == "mof"]
    assert "FY2024Q2" in c.message_en  # its last report
    found = holding([*reports, report(SOLO, "mof", Q4)], after_q4)
    assert ("stale", "mof") not in kinds(found, "1-25")


def test_returned_until_a_new_report_or_acceptance() -> None:
    first = report(SOLO, "mof", Q3)
    now = Q3.on_time_deadline
    returned = Review("r1", first.event_id, "returned", "数値の根拠を添付してください", now)
    found = holding([first], now, reviews={("mof", first.event_id): returned})
    (c,) = [c for c in found.values() if c.kind == AlertKind.returned]
    assert c.refs == (first.event_id, "r1")
    assert "数値の根拠を添付してください" in c.message_ja
    assert not [
        c
        for c in holding([report(SOLO, "mof", Q3)], now, reviews={("mof", first.event_id): returned}).values()
        if c.kind == AlertKind.returned
    ]
    accepted = Review("r2", first.event_id, "accepted", None, now)
    assert not [
        c
        for c in holding([first], now, reviews={("mof", first.event_id): accepted}).values()
        if c.kind == AlertKind.returned
    ]


def test_target_overdue_per_target_and_lead() -> None:
    after_due = datetime(2025, 4, 2, tzinfo=TOKYO)
    assert ("target_overdue", "mof") in kinds(holding([report(SOLO, "mof", Q4, kpi=70)], after_due), "1-25")
    # Met but not completed: not overdue.
    assert ("target_overdue", "mof") not in kinds(holding([report(SOLO, "mof", Q4, kpi=81)], after_due), "1-25")
    assert ("target_overdue", "mof") not in kinds(holding([report(SOLO, "mof", Q4, "completed")], after_due), "1-25")
    before_due = datetime(2025, 3, 31, 12, tzinfo=TOKYO)
    assert ("target_overdue", "mof") not in kinds(holding([report(SOLO, "mof", Q4)], before_due), "1-25")


def test_co_lead_disagreement_and_worsened_in_the_latest_quarter() -> None:
    now = Q4.on_time_deadline
    q3 = [report(SHARED, "digital", Q3, "on_track"), report(SHARED, "mic", Q3, "on_track")]
    q4 = [report(SHARED, "digital", Q4, "delayed"), report(SHARED, "mic", Q4, "on_track")]
    found = kinds(holding([*q3, *q4], now), "4-1")
    assert {("co_lead_disagreement", "digital"), ("co_lead_disagreement", "mic")} <= found
    assert {("worsened", "digital"), ("worsened", "mic")} <= found
    one_step = [report(SHARED, "digital", Q4, "not_started"), report(SHARED, "mic", Q4, "on_track")]  # 1 step apart
    found = kinds(holding([*q3, *one_step], now), "4-1")
    assert ("co_lead_disagreement", "mic") not in found
    assert ("worsened", "mic") in found
    # A later quarter that is not worse ends both.
    q1 = FiscalQuarter(2025, 1)
    later = [report(SHARED, "digital", q1, "delayed"), report(SHARED, "mic", q1, "at_risk")]
    found = kinds(holding([*q3, *q4, *later], q1.on_time_deadline), "4-1")
    assert not {k for k, _ in found} & {"worsened", "co_lead_disagreement"}


def test_kpi_jump_until_corrected_or_accepted() -> None:
    assert [implausible_jump(40, 85, "％"), implausible_jump(40, 60, "％")] == [True, False]
    assert [implausible_jump(100, v, "件") for v in (1000, 9, 900, -5)] == [True, True, False, True]
    now = Q4.on_time_deadline
    before, jumped = report(SOLO, "mof", Q3, kpi=40), report(SOLO, "mof", Q4, kpi=4)
    found = [c for c in holding([before, jumped], now).values() if c.kind == AlertKind.kpi_jump]
    assert [(c.agency, c.target_index, c.refs) for c in found] == [("mof", 0, (jumped.event_id, before.event_id))]
    accepted = {("mof", jumped.event_id): Review("r", jumped.event_id, "accepted", None, now)}
    assert not [c for c in holding([before, jumped], now, reviews=accepted).values() if c.kind == AlertKind.kpi_jump]


def test_raised_once_resolved_once_raised_again_as_a_new_occurrence() -> None:
    now = Q3.on_time_deadline - timedelta(days=1)
    found = {k: c for k, c in holding([], now, since=Q3).items() if c.measure_id == "1-25"}
    first = transitions({}, found, at_us=1)
    assert [(c.before, c.after.state, c.after.occurrence) for c in first] == [(None, RAISED, 1)]
    rows = {c.after.alert_id: c.after for c in first}
    assert transitions(rows, found, at_us=2) == []  # still holds: nothing to do
    resolved = transitions(rows, {}, at_us=3)
    assert [(c.after.state, c.after.resolved_at_us, c.after.raised_at_us) for c in resolved] == [(RESOLVED, 3, 1)]
    rows = {c.after.alert_id: c.after for c in resolved}
    assert transitions(rows, {}, at_us=4) == []
    again = transitions(rows, found, at_us=5)
    assert [(c.after.state, c.after.occurrence, c.after.resolved_at_us) for c in again] == [(RAISED, 2, None)]


def test_reporting_alerts_look_from_the_quarter_before_the_first_live_report_was_received() -> None:
    received = datetime(2026, 12, 2, 10, tzinfo=TOKYO)  # FY2026Q3: reports received now can be for FY2026Q2 on
    now = datetime(2027, 1, 10, tzinfo=TOKYO)  # FY2026Q2's deadline (2026-10-30) has passed, Q3 is not due yet
    old = report(SOLO, "mof", FiscalQuarter(2000, 1))._replace(received_at=received)
    found = holding([old], now)
    missing = {(c.fiscal_year, c.quarter) for c in found.values() if c.kind == AlertKind.report_missing}
    assert missing == {(2026, 2)}  # not FY2000Q2 … FY2026Q1: history older than the platform is not owed to it
    assert ("stale", "mof") not in kinds(found)  # one closed quarter looked at: not two running without a report

    # Backfilled history alone starts nothing; the first live report does.
    history = [report(SOLO, "mof", FiscalQuarter(2025, q))._replace(backfilled=True) for q in (1, 2, 3)]
    assert not {c.kind for c in holding(history, now).values()} & {AlertKind.report_missing, AlertKind.report_due}
    live = report(SHARED, "digital", FiscalQuarter(2026, 2))._replace(received_at=received)
    owed = {
        (c.agency, c.measure_id, c.fiscal_year, c.quarter)
        for c in holding([*history, live], now).values()
        if c.kind == AlertKind.report_missing
    }
    assert owed == {("mof", "1-25", 2026, 2), ("mic", "4-1", 2026, 2)}
    # Set explicitly, `since` wins.
    found = holding([old], now, since=FiscalQuarter(2026, 1))
    assert {(c.fiscal_year, c.quarter) for c in found.values() if c.kind == AlertKind.report_missing} == {
        (2026, 1),
        (2026, 2),
    }


def test_without_reports_only_targets_past_due_hold() -> None:
    assert holding([], datetime(2025, 1, 1, tzinfo=UTC)) == {}
    assert kinds(holding([], datetime(2030, 1, 1, tzinfo=UTC))) == {("target_overdue", "mof")}


def test_lead_progress_is_measure_progress() -> None:
    """The alerts' cheap progress equals `reporting.progress.measure_progress` on random reports of leads and
    non-leads across quarters."""
    rnd = random.Random(5)
    statuses = ("on_track", "at_risk", "delayed", "completed", "not_started", "suspended")
    quarters = [FiscalQuarter(2024, n) for n in (1, 2, 3, 4)]
    for _ in range(200):
        reports = [
            report(
                rnd.choice((SOLO, SHARED)),
                rnd.choice(("mof", "digital", "mic", "mhlw")),
                rnd.choice(quarters),
                rnd.choice(statuses),
                kpi=rnd.choice((None, rnd.uniform(0, 100))),
            )
            for _ in range(rnd.randrange(0, 6))
        ]
        for measure in (SOLO, SHARED):
            mine = list(effective_reports(r for r in reports if r.measure_id == measure.id).values())
            assert lead_progress(measure, mine) == measure_progress(measure, mine)
