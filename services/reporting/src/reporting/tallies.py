"""A quarter's tallies and the plan's standing, computed in full or updated by the measures a change touched.

`quarter_data` tallies a quarter from all its effective reports and `plan_standing` every measure's progress and
the targets' summary from all quarters: the reference versions. A transaction that changes the store names the
measures it touched in each quarter (`revision_store.bump_revisions`), so a reader holding the quarter as it was just
before updates it by those measures' reports alone (`quarter_data_updated`: each old standing taken back from the
tallies, the new one counted), and the plan by the measures whose standing or observations differ
(`plan_updated`). Each fast path equals its reference version (services/reporting/tests/test_incremental.py).
Pure functions over plain values: nothing here does I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from contracts.catalog import Measure
from contracts.periods import FiscalQuarter
from reporting.domain import LeadReport, QuarterRollup, measure_standing, rollup_quarter, rollup_updated
from reporting.progress import (
    MeasureProgress,
    Observation,
    TargetStanding,
    latest_observations,
    progress_from_rollups,
    target_standings,
)


@dataclass(frozen=True, slots=True)
class TargetSummary:
    """The plan's targets on a day: how many, how many overdue (per agency and section), and their ratings.

    It depends on the measures' progress across quarters and the day, not on the quarter a rollup is for.
    """

    total: int
    overdue: int
    measures_overdue: int
    ratings: dict[str, int]
    overdue_by_agency: dict[str, int]
    overdue_by_section: dict[int, int]


class _Summing:
    """A target summary being summed: each measure's targets counted in (or taken back)."""

    def __init__(self, summary: TargetSummary | None = None) -> None:
        self.total = summary.total if summary else 0
        self.overdue = summary.overdue if summary else 0
        self.measures_overdue = summary.measures_overdue if summary else 0
        self.ratings = dict(summary.ratings) if summary else dict.fromkeys(("A", "B", "N"), 0)
        self.by_agency = dict(summary.overdue_by_agency) if summary else {}
        self.by_section = dict(summary.overdue_by_section) if summary else {}

    def count(self, measure: Measure, targets: Sequence[TargetStanding], sign: int = 1) -> None:
        late = sum(1 for t in targets if t.overdue)
        self.overdue += sign * late
        self.measures_overdue += sign if late else 0
        self.total += sign * len(targets)
        self.by_section[measure.section] = self.by_section.get(measure.section, 0) + sign * late
        for agency in measure.lead_agencies:
            self.by_agency[agency.value] = self.by_agency.get(agency.value, 0) + sign * late
        for t in targets:
            self.ratings[t.rating.rating] += sign

    def summary(self) -> TargetSummary:
        return TargetSummary(
            self.total, self.overdue, self.measures_overdue, self.ratings, self.by_agency, self.by_section
        )


def summarize_targets(measures: Iterable[Measure], standings: Mapping[str, Sequence[TargetStanding]]) -> TargetSummary:
    """The summary of each measure's target standings (`standings` by measure id)."""
    summing = _Summing()
    for measure in measures:
        summing.count(measure, standings[measure.id])
    return summing.summary()


def target_summary(measures: Iterable[Measure], progress: Mapping[str, MeasureProgress], today: date) -> TargetSummary:
    measures = list(measures)
    return summarize_targets(measures, {m.id: target_standings(m, progress[m.id], today) for m in measures})


@dataclass(frozen=True, slots=True)
class QuarterData:
    """One quarter as its effective reports make it: the rollup, and the KPI observations its reports carry."""

    rollup: QuarterRollup
    observations: dict[str, dict[int, Observation]]


def _by_measure(reports: Iterable[LeadReport]) -> dict[str, dict[str, LeadReport]]:
    by_measure: dict[str, dict[str, LeadReport]] = defaultdict(dict)
    for report in reports:
        by_measure[report.measure_id][report.agency] = report
    return by_measure


def quarter_data(quarter: FiscalQuarter, measures: Sequence[Measure], reports: Iterable[LeadReport]) -> QuarterData:
    reports = list(reports)
    return QuarterData(rollup_quarter(quarter, measures, _by_measure(reports)), latest_observations(measures, reports))


def quarter_data_updated(
    data: QuarterData, by_id: Mapping[str, Measure], touched: Iterable[str], reports: Iterable[LeadReport]
) -> QuarterData:
    """`data` after a change that touched some measures: `reports` are the touched measures' effective reports now
    (all of them, in this quarter); the other measures keep their standings and observations (the same objects).
    Equal to `quarter_data` over the quarter's reports now."""
    reports = list(reports)
    touched_measures = [by_id[m] for m in sorted(set(touched)) if m in by_id]
    if not touched_measures:
        return data
    by_measure = _by_measure(reports)
    standings = {m.id: measure_standing(m, by_measure.get(m.id, {})) for m in touched_measures}
    ids = set(standings)
    observations = {m: found for m, found in data.observations.items() if m not in ids}
    observations.update(latest_observations(touched_measures, reports))
    return QuarterData(rollup_updated(data.rollup, standings), observations)


def changed_measures(before: QuarterData, after: QuarterData) -> set[str]:
    """The measures whose standing or observations differ between two states of one quarter (same catalog)."""
    if before is after:
        return set()
    changed = {
        old.measure.id
        for old, new in zip(before.rollup.measures, after.rollup.measures, strict=True)
        if old is not new and old != new
    }
    for measure_id in before.observations.keys() | after.observations.keys():
        if before.observations.get(measure_id) != after.observations.get(measure_id):
            changed.add(measure_id)
    return changed


@dataclass(frozen=True, slots=True)
class PlanStanding:
    """What every quarter's view of one state of the store shares: each measure's progress, the targets' summary
    (and each measure's target standings it sums)."""

    progress: Mapping[str, MeasureProgress]
    targets: TargetSummary
    standings: Mapping[str, tuple[TargetStanding, ...]]


def plan_standing(measures: Sequence[Measure], quarters: Iterable[QuarterData], today: date) -> PlanStanding:
    quarters = list(quarters)
    progress = progress_from_rollups(measures, (q.rollup for q in quarters), (q.observations for q in quarters))
    standings = {m.id: target_standings(m, progress[m.id], today) for m in measures}
    return PlanStanding(progress, summarize_targets(measures, standings), standings)


def plan_updated(
    plan: PlanStanding,
    measures: Sequence[Measure],
    changed: Iterable[str],
    quarters: Iterable[QuarterData],
    today: date,
) -> PlanStanding:
    """`plan` (of the same catalog and day) after the measures `changed` changed in some quarters (`quarters`: every
    quarter now): their progress and target standings computed again, the summary summed again. Equal to
    `plan_standing` over `quarters`."""
    ids = set(changed)
    if not ids:
        return plan
    quarters = list(quarters)
    again = [m for m in measures if m.id in ids]
    fresh = progress_from_rollups(again, (q.rollup for q in quarters), (q.observations for q in quarters))
    progress = {**plan.progress, **fresh}
    standings = dict(plan.standings)
    summing = _Summing(plan.targets)  # each moved measure's targets taken back and counted anew
    for measure in again:
        summing.count(measure, standings[measure.id], -1)
        standings[measure.id] = target_standings(measure, fresh[measure.id], today)
        summing.count(measure, standings[measure.id])
    return PlanStanding(progress, summing.summary(), standings)
