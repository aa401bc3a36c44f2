"""KPI ratings on plain values: baselines in both directions, changes, milestones, overdue per target, as_of."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from contracts.agencies import Agency
from contracts.catalog import PLAN_ADOPTED, SECTION_TITLES, Baseline, Measure, Milestone, Target
from contracts.periods import TOKYO
from reporting.progress import MeasureProgress, Observation
from reporting.ratings import (
    effective_as_of,
    elapsed_share,
    is_overdue,
    latest,
    observation_order,
    rate_kpi,
    target_standings,
)

DUE = date(2026, 3, 31)
FY2021_END = date(2022, 3, 31)

#: 3-14: telework adoption from 35.4 % in FY2021 to 45.4 % in FY2025.
TELEWORK = Target(
    index=0,
    text="2025年度には、2021年度の35.4%から10ポイントの引き上げとなる45.4％を目指す。",
    due_date=DUE,
    value=45.4,
    unit="％",
    baseline=Baseline(value=35.4, as_of=FY2021_END, unit="％"),
    direction="increase",
)
#: A share to bring down from 60 % (FY2021) to 50 %.
SHARE_DOWN = TELEWORK.model_copy(
    update={"value": 50.0, "baseline": Baseline(value=60.0, as_of=FY2021_END, unit="％"), "direction": "decrease"}
)
#: 1-68: running costs cut by 30 % against FY2020, by FY2025.
COST_CUT = Target(
    index=0,
    text="登記情報システムの運用等経費の削減（2025年度において2020年度比で３割を削減）",
    due_date=DUE,
    value=3,
    unit="割",
    direction="decrease",
    value_is_change=True,
)
#: 2-71: bring a count down to zero, from a level the plan does not state.
TO_ZERO = Target(index=0, text="交換枚数をゼロにする", due_date=date(2027, 3, 31), value=0, direction="decrease")
#: 1-65: 786 cases by the end of FY2024, 1,160 by the end of FY2025.
CASES = Target(
    index=0,
    text="手続の件数：2024年度末 786件、2025年度末 1,160件",
    due_date=DUE,
    value=1160,
    unit="件",
    direction="increase",
    milestones=[Milestone(due_date=date(2025, 3, 31), value=786, unit="件", text="2024年度末 786件")],
)
#: A target counting up from zero, as every target was read before baselines.
PLAIN = Target(index=0, text="利用率（80％ 2026年度）", due_date=date(2027, 3, 31), value=80, unit="％")


def observed(value: float, as_of: date, *, reported: date | None = None, event_id: str = "0" * 36) -> Observation:
    moment = datetime.combine(reported or as_of + timedelta(days=5), datetime.min.time(), TOKYO)
    return Observation(value, as_of, "digital", event_id, moment.replace(hour=12))


def measure_with(*targets: Target) -> Measure:
    return Measure(
        id="3-14",
        section=3,
        section_title=SECTION_TITLES[3],
        title="テレワークの推進",
        lead_agencies=[Agency.mhlw],
        targets=[t.model_copy(update={"index": i}) for i, t in enumerate(targets)],
    )


def progress(status: str, *observations: Observation | None) -> MeasureProgress:
    return MeasureProgress(status, None, {i: o for i, o in enumerate(observations) if o is not None})


def halfway(start: date, due: date) -> date:
    return start + (due - start) / 2


# --- baselines in both directions --------------------------------------------------------------


def test_telework_counts_from_its_baseline_not_from_zero() -> None:
    on = date(2025, 3, 31)
    rated = rate_kpi(TELEWORK, observed(36.0, on))

    assert rated.progress == pytest.approx(0.06)  # (36 − 35.4) / (45.4 − 35.4), not 36 / 45.4 = 79 %
    assert rated.start == FY2021_END  # the plan's path runs from the baseline's date
    assert rated.elapsed_share == pytest.approx(elapsed_share(on, DUE, start=FY2021_END))
    assert (rated.rating, rated.met) == ("B", False)
    assert 36.0 / 45.4 > elapsed_share(on, DUE)  # what the count from zero said: 79 %, an A


def test_an_increase_from_its_baseline_rates_a_at_or_ahead_of_time() -> None:
    mid = halfway(FY2021_END, DUE)

    assert rate_kpi(TELEWORK, observed(40.4, mid)).rating == "A"  # half the way, half the time
    assert rate_kpi(TELEWORK, observed(40.3, mid)).rating == "B"
    assert rate_kpi(TELEWORK, observed(34.0, mid)).progress == pytest.approx(-0.14)  # moved the wrong way
    assert rate_kpi(TELEWORK, observed(46.0, FY2021_END + timedelta(days=1))).met


def test_a_decrease_from_its_baseline() -> None:
    mid = halfway(FY2021_END, DUE)

    halfway_down = rate_kpi(SHARE_DOWN, observed(55.0, mid))
    assert (halfway_down.rating, halfway_down.progress) == ("A", pytest.approx(0.5))
    assert rate_kpi(SHARE_DOWN, observed(56.0, mid)).rating == "B"
    assert rate_kpi(SHARE_DOWN, observed(62.0, mid)).progress == pytest.approx(-0.2)
    reached = rate_kpi(SHARE_DOWN, observed(49.0, date(2022, 6, 30)))
    assert (reached.rating, reached.met) == ("A", True)


def test_a_baseline_the_value_does_not_move_from_in_its_direction_is_not_a_start() -> None:
    # 3-28: 1,500 applications with 1,510 the year before, and no direction stated: counted from zero.
    level = Target(
        index=0,
        text="応募件数:2024年度1,500件（参考：2023年度 1,510件）",
        due_date=date(2025, 3, 31),
        value=1500,
        unit="件",
        baseline=Baseline(value=1510, as_of=date(2024, 3, 31), unit="件"),
    )
    rated = rate_kpi(level, observed(750, date(2024, 11, 10)))

    assert rated.progress == pytest.approx(0.5)
    assert rated.start == PLAN_ADOPTED


def test_a_change_counts_the_change_achieved_since_its_reference() -> None:
    reference = date(2021, 3, 31)
    cut = COST_CUT.model_copy(update={"baseline": Baseline(value=5400, as_of=reference, unit="億円")})
    rated = rate_kpi(cut, observed(1.5, halfway(reference, DUE)))

    assert (rated.rating, rated.progress, rated.start) == ("A", pytest.approx(0.5), reference)
    assert rate_kpi(COST_CUT, observed(3.2, date(2025, 1, 31))).met  # a cut of 32 % meets a cut of 30 %
    assert rate_kpi(COST_CUT, observed(1.0, date(2025, 9, 30))).rating == "B"


def test_a_decrease_without_a_start_is_rated_only_once_met() -> None:
    pending = rate_kpi(TO_ZERO, observed(1200, date(2025, 3, 31)))

    assert pending.rating == "N"
    assert "starting point" in (pending.reason or "")
    assert rate_kpi(TO_ZERO, observed(0, date(2025, 3, 31))).rating == "A"


def test_targets_without_baseline_rate_as_before() -> None:
    """With no baseline, direction or change, a target counts up from zero from the plan's adoption, as before:
    progress = observed / value, A when it is at least the elapsed share."""
    mid = halfway(PLAN_ADOPTED, date(2027, 3, 31))
    assert PLAIN.value is not None
    for value in (0.0, 20.0, 39.9, 40.0, 79.0, 80.0, 95.0):
        for on in (PLAN_ADOPTED, mid, date(2027, 3, 31), date(2028, 1, 1)):
            rated = rate_kpi(PLAIN, observed(value, on))
            share = min(1.0, max(0.0, (on - PLAN_ADOPTED).days / (date(2027, 3, 31) - PLAN_ADOPTED).days))
            assert rated.progress == pytest.approx(value / PLAIN.value)
            assert rated.elapsed_share == pytest.approx(share)
            assert rated.rating == ("A" if value / PLAIN.value >= share else "B")
    assert rate_kpi(PLAIN, None).reason == "no observation yet"
    no_due = PLAIN.model_copy(update={"due_date": None})
    assert rate_kpi(no_due, observed(1, mid)).reason == "the target states no due date"


# --- milestones --------------------------------------------------------------------------------


def test_each_milestone_is_rated_on_its_own() -> None:
    m = measure_with(CASES)
    on = date(2025, 3, 31)

    (behind,) = target_standings(m, progress("on_track", observed(700, on)), on)
    (milestone,) = behind.milestones
    assert milestone.rating.rating == "B"  # 700 of 786 at its due date
    assert milestone.rating.progress == pytest.approx(700 / 786)
    assert behind.rating.rating == "A"  # 700 of 1,160 is ahead of the time elapsed towards 2026-03-31
    assert not milestone.overdue  # due today has not passed

    (late,) = target_standings(m, progress("on_track", observed(700, on)), on + timedelta(days=1))
    assert late.milestones[0].overdue
    assert not late.overdue  # the final target is not due yet

    (reached,) = target_standings(m, progress("on_track", observed(800, on)), on + timedelta(days=1))
    assert (reached.milestones[0].rating.rating, reached.milestones[0].overdue) == ("A", False)


def test_a_milestone_without_a_value_is_not_rated() -> None:
    survey = Milestone(due_date=date(2024, 8, 31), due_approximate=True, text="2024年夏までに調査を行い")
    diet = Target(index=0, text="2025年通常国会での改正を目指す", due_date=date(2025, 6, 30), milestones=[survey])

    (standing,) = target_standings(measure_with(diet), progress("on_track"), date(2024, 9, 1))

    (milestone,) = standing.milestones
    assert (milestone.rating.rating, milestone.overdue) == ("N", None)


# --- overdue per target ------------------------------------------------------------------------


def test_a_met_target_is_not_overdue_though_the_measure_is_not_completed() -> None:
    after = DUE + timedelta(days=1)

    assert not is_overdue(TELEWORK, observed(45.4, DUE), "on_track", after)
    assert is_overdue(TELEWORK, observed(45.0, DUE), "on_track", after)
    assert is_overdue(TELEWORK, None, "delayed", after)
    assert not is_overdue(TELEWORK, observed(45.0, DUE), "completed", after)
    assert not is_overdue(TELEWORK, observed(45.0, DUE), "on_track", DUE)  # due today has not passed
    assert not is_overdue(SHARE_DOWN, observed(49.5, DUE), "at_risk", after)
    assert is_overdue(SHARE_DOWN, observed(50.5, DUE), "at_risk", after)


def test_a_target_without_a_value_is_overdue_until_the_measure_is_completed() -> None:
    activity = Target(index=0, text="2024年度中に機能を実装", due_date=date(2025, 3, 31))
    after = date(2025, 4, 1)

    assert is_overdue(activity, None, "on_track", after)
    assert is_overdue(activity, None, "unreported", after)
    assert not is_overdue(activity, None, "completed", after)
    assert not is_overdue(activity.model_copy(update={"due_date": None}), None, "delayed", date(2100, 1, 1))


def test_standings_of_a_measure_rate_and_judge_each_target() -> None:
    m = measure_with(TELEWORK, PLAIN)
    after = DUE + timedelta(days=1)

    met, missing = target_standings(m, progress("on_track", observed(46.0, DUE)), after)

    assert (met.overdue, met.rating.rating, met.rating.met) == (False, "A", True)
    assert (missing.overdue, missing.rating.rating, missing.observation) == (False, "N", None)  # due 2027


# --- the as_of rule ----------------------------------------------------------------------------


def test_an_observation_dated_after_its_report_counts_as_of_the_report() -> None:
    typo = observed(99.0, date(2099, 3, 31), reported=date(2025, 1, 10), event_id="1" * 36)
    later = observed(41.0, date(2025, 3, 31), reported=date(2025, 4, 5), event_id="2" * 36)

    assert effective_as_of(typo.as_of, typo.reported_at) == date(2025, 1, 10)
    assert observation_order(later) > observation_order(typo)
    assert latest([typo, later]) is later
    assert latest([later, typo]) is later
    # Rated as of its report's day too: a 2099 date would have made the whole period elapse.
    assert rate_kpi(TELEWORK, typo).elapsed_share == pytest.approx(
        elapsed_share(date(2025, 1, 10), DUE, start=FY2021_END)
    )


def test_the_report_day_is_read_in_tokyo() -> None:
    # 2025-03-31 16:00 UTC is 2025-04-01 01:00 in Tokyo: an as_of of April 1 is not in the future.
    report = datetime(2025, 3, 31, 16, 0, tzinfo=UTC)

    assert effective_as_of(date(2025, 4, 1), report) == date(2025, 4, 1)
    assert effective_as_of(date(2025, 4, 2), report) == date(2025, 4, 1)
    assert latest([]) is None
