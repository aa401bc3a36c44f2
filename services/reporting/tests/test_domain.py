"""Rollup arithmetic over plain values: no NATS, no database."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta

import pytest

from contracts.agencies import Agency
from contracts.catalog import PLAN_ADOPTED, SECTION_TITLES, Measure, Target
from contracts.events import SEVERITY_ORDER, UNREPORTED
from contracts.periods import TOKYO, FiscalQuarter
from reporting.domain import (
    ROLLUP_STATUSES,
    KpiReading,
    LeadReport,
    Tally,
    combined_status,
    effective_reports,
    measure_standing,
    movement,
    rollup_quarter,
    trend,
)
from reporting.progress import Observation, measure_progress, target_standings
from reporting.ratings import elapsed_share, is_overdue, rate_kpi

Q3 = FiscalQuarter(2024, 3)


def measure(measure_id: str, *leads: str, targets: tuple[Target, ...] = ()) -> Measure:
    section = int(measure_id.split("-")[0])
    return Measure(
        id=measure_id,
        section=section,
        section_title=SECTION_TITLES[section],
        title=f"measure {measure_id}",
        lead_agencies=[Agency(a) for a in leads],
        targets=list(targets),
    )


def report(
    measure_id: str = "1-1",
    agency: str = "digital",
    status: str = "on_track",
    at: datetime = datetime(2024, 12, 20, 17, 0, tzinfo=TOKYO),
    event_id: str = "00000000-0000-4000-8000-000000000001",
    quarter: FiscalQuarter = Q3,
    kpis: tuple[KpiReading, ...] = (),
) -> LeadReport:
    return LeadReport(
        measure_id=measure_id,
        agency=agency,
        fiscal_year=quarter.fiscal_year,
        quarter=quarter.quarter,
        status=status,
        reported_at=at,
        event_id=event_id,
        kpis=kpis,
    )


def by_measure(*reports: LeadReport) -> dict[str, dict[str, LeadReport]]:
    out: dict[str, dict[str, LeadReport]] = {}
    for r in effective_reports(reports).values():
        out.setdefault(r.measure_id, {})[r.agency] = r
    return out


# --- effective report ------------------------------------------------------------------------


def test_latest_report_wins_whatever_the_arrival_order() -> None:
    base = datetime(2024, 12, 1, 9, 0, tzinfo=TOKYO)
    reports = [
        report(status=status, at=base + timedelta(hours=i), event_id=f"00000000-0000-4000-8000-00000000000{i}")
        for i, status in enumerate(["on_track", "delayed", "at_risk", "completed"])
    ]
    for order in itertools.permutations(reports):
        (effective,) = effective_reports(order).values()
        assert effective.status == "completed"


def test_ties_on_reported_at_go_to_the_greater_event_id() -> None:
    at = datetime(2024, 12, 1, 9, 0, tzinfo=TOKYO)
    low = report(status="delayed", at=at, event_id="0f000000-0000-4000-8000-000000000000")
    high = report(status="on_track", at=at, event_id="f0000000-0000-4000-8000-000000000000")
    assert effective_reports([low, high])[low.key].event_id == high.event_id
    assert effective_reports([high, low])[low.key].event_id == high.event_id


def test_the_same_instant_in_another_offset_is_a_tie() -> None:
    tokyo = report(status="delayed", at=datetime(2024, 12, 1, 9, 0, tzinfo=TOKYO), event_id="b" + "0" * 35)
    utc = report(status="on_track", at=datetime(2024, 12, 1, 0, 0, tzinfo=UTC), event_id="a" + "0" * 35)
    assert effective_reports([utc, tokyo])[tokyo.key].status == "delayed"


def test_effective_reports_are_kept_per_agency_and_quarter() -> None:
    reports = [
        report(agency="mic"),
        report(agency="mof", event_id="00000000-0000-4000-8000-000000000002"),
        report(quarter=Q3.next(), event_id="00000000-0000-4000-8000-000000000003"),
    ]
    assert len(effective_reports(reports)) == 3


# --- combined status -------------------------------------------------------------------------


def test_severity_order() -> None:
    assert [s.value for s in SEVERITY_ORDER] == [
        "delayed",
        "at_risk",
        "suspended",
        "not_started",
        "on_track",
        "completed",
    ]
    for i, worse in enumerate(SEVERITY_ORDER):
        for better in SEVERITY_ORDER[i:]:
            assert combined_status([better.value, worse.value]) == worse.value
            assert combined_status([worse.value, better.value]) == worse.value


def test_silence_is_unreported() -> None:
    assert combined_status([]) == UNREPORTED
    standing = measure_standing(measure("1-1", "digital"), {})
    assert standing.status == UNREPORTED
    assert not standing.reported
    assert not standing.on_time
    assert standing.event_ids == ()


def test_co_leads_combine_by_severity_and_count_their_own_report() -> None:
    m = measure("2-5", "mhlw", "digital")
    mhlw = report("2-5", "mhlw", "completed", event_id="00000000-0000-4000-8000-0000000000a1")
    digital = report("2-5", "digital", "at_risk", event_id="00000000-0000-4000-8000-0000000000a2")
    outsider = report("2-5", "mof", "delayed", event_id="00000000-0000-4000-8000-0000000000a3")
    rollup = rollup_quarter(Q3, [m], by_measure(mhlw, digital, outsider))
    assert rollup.measures[0].status == "at_risk"  # the non-lead's `delayed` does not count
    assert rollup.measures[0].event_ids == (mhlw.event_id, digital.event_id)  # lead order
    assert rollup.overall.by_status["at_risk"] == 1
    assert rollup.by_agency["mhlw"].by_status["completed"] == 1
    assert rollup.by_agency["digital"].by_status["at_risk"] == 1
    assert rollup.by_agency["mof"].measures_total == 0
    assert rollup.by_section[2].measures_total == 1


def test_one_co_lead_silent() -> None:
    m = measure("2-5", "mhlw", "digital")
    rollup = rollup_quarter(Q3, [m], by_measure(report("2-5", "digital", "on_track")))
    assert rollup.overall.by_status["on_track"] == 1
    assert rollup.overall.reported == 1
    assert rollup.by_agency["mhlw"].by_status[UNREPORTED] == 1
    assert rollup.by_agency["mhlw"].reported == 0
    assert rollup.by_agency["digital"].reported == 1


# --- on time and fiscal-quarter boundaries ---------------------------------------------------


@pytest.mark.parametrize(
    ("quarter", "deadline"),
    [
        # Q3 ends 12-31: on time through 2025-01-30 (the end of that day, Tokyo).
        (FiscalQuarter(2024, 3), datetime(2025, 1, 31, 0, 0, tzinfo=TOKYO)),
        # Q4 ends 03-31 of FY+1: on time through 2025-04-30.
        (FiscalQuarter(2024, 4), datetime(2025, 5, 1, 0, 0, tzinfo=TOKYO)),
        # Q1 of the next fiscal year starts 04-01.
        (FiscalQuarter(2025, 1), datetime(2025, 7, 31, 0, 0, tzinfo=TOKYO)),
    ],
)
def test_on_time_boundary(quarter: FiscalQuarter, deadline: datetime) -> None:
    assert report(quarter=quarter, at=deadline).on_time
    assert not report(quarter=quarter, at=deadline + timedelta(microseconds=1)).on_time
    # The same instant written in UTC is judged the same way.
    assert report(quarter=quarter, at=deadline.astimezone(UTC)).on_time


@pytest.mark.parametrize(
    ("moment", "label"),
    [
        (datetime(2025, 3, 31, 23, 59, 59, tzinfo=TOKYO), "FY2024Q4"),
        (datetime(2025, 4, 1, 0, 0, tzinfo=TOKYO), "FY2025Q1"),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=TOKYO), "FY2024Q3"),
        (datetime(2025, 1, 1, 0, 0, tzinfo=TOKYO), "FY2024Q4"),
        # 2025-03-31T15:00Z is already April 1st in Tokyo.
        (datetime(2025, 3, 31, 15, 0, tzinfo=UTC), "FY2025Q1"),
    ],
)
def test_fiscal_quarter_boundaries(moment: datetime, label: str) -> None:
    assert FiscalQuarter.of_moment(moment).label == label


def test_trend_crosses_the_fiscal_year() -> None:
    m = [measure("1-1", "digital"), measure("1-2", "digital"), measure("1-3", "digital")]
    q4, q1 = FiscalQuarter(2024, 4), FiscalQuarter(2025, 1)
    assert q1.previous() == q4
    before = rollup_quarter(
        q4,
        m,
        by_measure(
            report("1-1", status="on_track", quarter=q4),
            report("1-2", status="delayed", quarter=q4, event_id="00000000-0000-4000-8000-000000000002"),
        ),
    )
    now = rollup_quarter(
        q1,
        m,
        by_measure(
            report("1-1", status="at_risk", quarter=q1),
            report("1-2", status="completed", quarter=q1, event_id="00000000-0000-4000-8000-000000000002"),
            report("1-3", status="delayed", quarter=q1, event_id="00000000-0000-4000-8000-000000000003"),
        ),
    )
    moved = trend(now, before)
    assert moved.moved_worse == ("1-1",)
    assert moved.moved_better == ("1-2",)  # 1-3 was unreported before: not a move
    assert movement(UNREPORTED, "delayed") is None
    assert movement("on_track", "on_track") == "same"


# --- tallies ---------------------------------------------------------------------------------


def test_tally_always_has_seven_statuses_and_safe_rates() -> None:
    empty = Tally()
    assert tuple(empty.by_status) == ROLLUP_STATUSES
    assert len(ROLLUP_STATUSES) == 7
    assert empty.coverage == 0.0
    assert empty.on_time_rate == 0.0


def test_on_time_needs_every_effective_report_on_time() -> None:
    m = measure("1-1", "mic", "digital")
    late = Q3.on_time_deadline + timedelta(seconds=1)
    rollup = rollup_quarter(
        Q3,
        [m],
        by_measure(report("1-1", "mic"), report("1-1", "digital", at=late, event_id="0" * 35 + "9")),
    )
    assert rollup.overall.reported == 1
    assert rollup.overall.on_time == 0
    assert rollup.by_agency["mic"].on_time == 1
    assert rollup.by_agency["digital"].on_time == 0
    assert rollup.overall.coverage == 1.0


def test_rollup_counts_each_measure_once() -> None:
    rnd = random.Random(7)
    measures = [
        measure(f"{s}-{n}", *rnd.sample(["digital", "mic", "mof"], rnd.randint(1, 2)))
        for s in (1, 3)
        for n in (1, 2, 3)
    ]
    reports = [
        report(m.id, str(a), rnd.choice(ROLLUP_STATUSES[:6]), event_id=f"{i:036d}")
        for i, (m, a) in enumerate((m, a) for m in measures for a in m.lead_agencies)
        if rnd.random() < 0.7
    ]
    rollup = rollup_quarter(Q3, measures, by_measure(*reports))
    assert rollup.overall.measures_total == len(measures)
    assert sum(rollup.overall.by_status.values()) == len(measures)
    assert sum(t.measures_total for t in rollup.by_section.values()) == len(measures)
    assert sum(t.measures_total for t in rollup.by_agency.values()) == sum(len(m.lead_agencies) for m in measures)


# --- targets, KPIs, A/B/N --------------------------------------------------------------------

TARGET = Target(index=0, text="利用率（80％ 2026年度）", due_date=date(2027, 3, 31), value=80, unit="％")


def observation(value: float, on: date) -> Observation:
    reported = datetime.combine(on + timedelta(days=5), datetime.min.time(), TOKYO)
    return Observation(value, on, "digital", "0" * 36, reported)


def test_elapsed_share() -> None:
    assert elapsed_share(PLAN_ADOPTED, TARGET.due_date or date.max) == 0.0
    assert elapsed_share(date(2030, 1, 1), date(2027, 3, 31)) == 1.0
    assert elapsed_share(date(2024, 1, 1), date(2027, 3, 31)) == 0.0
    assert elapsed_share(date(2025, 1, 1), date(2024, 3, 31)) == 1.0  # due before the plan was adopted
    half = PLAN_ADOPTED + (date(2027, 3, 31) - PLAN_ADOPTED) / 2
    assert elapsed_share(half, date(2027, 3, 31)) == pytest.approx(0.5, abs=0.001)


def test_rating_a_b_n() -> None:
    halfway = PLAN_ADOPTED + (date(2027, 3, 31) - PLAN_ADOPTED) / 2  # elapsed share 0.5
    assert rate_kpi(TARGET, None).rating == "N"
    assert rate_kpi(TARGET, observation(40, halfway)).rating == "A"  # 0.5 ≥ 0.5
    assert rate_kpi(TARGET, observation(39.9, halfway)).rating == "B"
    assert rate_kpi(TARGET, observation(80, date(2027, 3, 31))).rating == "A"
    rated = rate_kpi(TARGET, observation(20, halfway))
    assert rated.progress == pytest.approx(0.25)
    assert rated.elapsed_share == pytest.approx(0.5, abs=0.001)
    no_value = TARGET.model_copy(update={"value": None})
    assert rate_kpi(no_value, observation(20, halfway)).rating == "N"
    no_due = TARGET.model_copy(update={"due_date": None})
    assert rate_kpi(no_due, observation(20, halfway)).reason == "the target states no due date"


def test_latest_observation_and_latest_status_across_quarters() -> None:
    m = measure("1-1", "digital", "mic", targets=(TARGET,))
    q2 = FiscalQuarter(2024, 2)
    reports = [
        report(
            "1-1", "digital", "delayed", quarter=q2, kpis=(KpiReading(0, 10, date(2024, 9, 30)),), event_id="1" * 36
        ),
        report("1-1", "mic", "completed", quarter=Q3, kpis=(KpiReading(0, 30, date(2024, 12, 31)),), event_id="2" * 36),
        report(
            "1-1", "digital", "on_track", quarter=Q3, kpis=(KpiReading(0, 20, date(2024, 11, 30)),), event_id="3" * 36
        ),
        # Observations of targets the measure does not have, and reports of non-leads, are ignored.
        report(
            "1-1", "digital", "on_track", quarter=Q3, kpis=(KpiReading(5, 99, date(2025, 1, 1)),), event_id="4" * 36
        ),
        report("1-1", "mof", "delayed", quarter=Q3.next(), event_id="5" * 36),
    ]
    progress = measure_progress(m, effective_reports(reports[:3] + reports[4:]).values())
    assert progress.latest_quarter == Q3
    assert progress.latest_status == "on_track"  # mic completed, digital on_track: the more severe
    assert progress.observations[0].value == 30
    assert progress.observations[0].agency == "mic"


def test_overdue_targets() -> None:
    due = TARGET.due_date
    assert due is not None
    assert not is_overdue(TARGET, None, "on_track", due)  # due today has not passed
    assert is_overdue(TARGET, None, "on_track", due + timedelta(days=1))
    assert is_overdue(TARGET, None, UNREPORTED, due + timedelta(days=1))
    assert not is_overdue(TARGET, None, "completed", due + timedelta(days=1))
    assert not is_overdue(TARGET.model_copy(update={"due_date": None}), None, "delayed", date(2100, 1, 1))
    # Overdue per target: a value met is not overdue though the measure is not completed; one short of it is.
    assert not is_overdue(TARGET, observation(80, due), "on_track", due + timedelta(days=1))
    assert is_overdue(TARGET, observation(79, due), "on_track", due + timedelta(days=1))
    m = measure("1-1", "digital", targets=(TARGET,))
    (standing,) = target_standings(m, measure_progress(m, []), due + timedelta(days=1))
    assert standing.overdue
    assert standing.rating.rating == "N"
