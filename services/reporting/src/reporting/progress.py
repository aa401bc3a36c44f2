"""Across quarters: each measure's latest status and KPI observations, and its targets' ratings and overdue flags.

The one rule set for ratings and overdue targets is `reporting.ratings` (baselines, direction, milestones, overdue
per target, the `as_of` rule); this module gathers what it rates. Pure functions over plain values, like `reporting.domain` (whose rollups they read); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from contracts.catalog import Measure
from contracts.events import UNREPORTED
from contracts.periods import FiscalQuarter
from reporting import ratings
from reporting.domain import LeadReport, QuarterRollup, rollup_quarter
from reporting.ratings import KpiRating, Rating, observation_order, rate_kpi

#: A target's standing as the documents show it: rating, overdue flag, milestones (rules in `reporting.ratings`).
TargetStanding = ratings.TargetStanding["Observation"]

__all__ = ["KpiRating", "MeasureProgress", "Observation", "Rating", "TargetStanding", "rate_kpi", "target_standings"]


@dataclass(frozen=True, slots=True)
class Observation:
    """The latest observed value of a target, and the effective report that carried it."""

    value: float
    as_of: date
    agency: str
    event_id: str
    reported_at: datetime


@dataclass(frozen=True, slots=True)
class MeasureProgress:
    """What is known about a measure across all quarters: its latest status and latest KPI observations."""

    latest_status: str
    latest_quarter: FiscalQuarter | None
    observations: Mapping[int, Observation]


def measure_progress(measure: Measure, reports: Iterable[LeadReport]) -> MeasureProgress:
    """Latest status and KPI observations from a measure's effective reports of every quarter.

    The latest status is the combined status of the most recent quarter any lead reported on. The latest
    observation of a target is the latest by `ratings.observation_order` (an `as_of` after its report counts
    as of the report's day). Reports of
    agencies that do not lead the measure, and observations of targets it does not have, are ignored.
    """
    by_quarter: dict[FiscalQuarter, dict[str, LeadReport]] = {}
    for report in reports:
        by_quarter.setdefault(report.fiscal_quarter, {})[report.agency] = report
    rollups = [rollup_quarter(q, [measure], {measure.id: mine}) for q, mine in by_quarter.items()]
    observations = latest_observations([measure], [r for mine in by_quarter.values() for r in mine.values()])
    return progress_from_rollups([measure], rollups, [observations])[measure.id]


def latest_observations(
    measures: Iterable[Measure], reports: Iterable[LeadReport]
) -> dict[str, dict[int, Observation]]:
    """Per measure and target index, the latest observation the reports carry (leads only, known targets)."""
    by_id = {m.id: m for m in measures}
    leads = {m.id: {str(a) for a in m.lead_agencies} for m in by_id.values()}
    out: dict[str, dict[int, Observation]] = {}
    for report in reports:
        if not report.kpis:
            continue
        measure = by_id.get(report.measure_id)
        if measure is None or report.agency not in leads[measure.id]:
            continue
        found = out.setdefault(measure.id, {})
        for kpi in report.kpis:
            if not 0 <= kpi.target < len(measure.targets):
                continue
            candidate = Observation(kpi.value, kpi.as_of, report.agency, report.event_id, report.reported_at)
            seen = found.get(kpi.target)
            if seen is None or observation_order(candidate) > observation_order(seen):
                found[kpi.target] = candidate
    return out


def progress_from_rollups(
    measures: Iterable[Measure],
    rollups: Iterable[QuarterRollup],
    observations: Iterable[Mapping[str, Mapping[int, Observation]]],
) -> dict[str, MeasureProgress]:
    """Each measure's progress (of `measures`, which may be some of the rollups') from the rollups of every quarter
    with reports and the quarters' observations.

    The latest status is the measure's combined status in the latest quarter where it was reported.
    """
    latest: dict[str, tuple[FiscalQuarter, str]] = {}
    measures = list(measures)
    wanted = {measure.id for measure in measures}
    for rollup in sorted(rollups, key=lambda r: r.quarter, reverse=True):
        if len(latest) >= len(wanted):  # every measure has its latest quarter: older ones cannot change that
            break
        for standing in rollup.measures:
            status = standing.status
            if status != UNREPORTED:
                measure_id = standing.measure.id
                if measure_id not in latest and measure_id in wanted:
                    latest[measure_id] = (rollup.quarter, status)
    merged: dict[str, dict[int, Observation]] = {}
    for part in observations:
        for measure_id, found in part.items():
            if measure_id not in wanted:
                continue
            into = merged.setdefault(measure_id, {})
            for target, candidate in found.items():
                seen = into.get(target)
                if seen is None or observation_order(candidate) > observation_order(seen):
                    into[target] = candidate
    out = {}
    for measure in measures:
        quarter, status = latest.get(measure.id, (None, UNREPORTED))
        out[measure.id] = MeasureProgress(status, quarter, merged.get(measure.id, {}))
    return out


def target_standings(measure: Measure, progress: MeasureProgress, today: date) -> tuple[TargetStanding, ...]:
    """Each target of a measure with its overdue flag, its KPI rating and its milestones' (`reporting.ratings`)."""
    return ratings.target_standings(measure, progress, today)
