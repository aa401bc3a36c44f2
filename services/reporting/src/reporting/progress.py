"""Across quarters: each measure's latest status and KPI observations, and its targets' ratings and overdue flags.

Pure functions over plain values, like `reporting.domain` (whose rollups they read); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, Literal

from contracts.catalog import Measure, Target
from contracts.events import UNREPORTED, Status
from contracts.periods import FiscalQuarter
from reporting.domain import LeadReport, QuarterRollup, rollup_quarter

#: The Priority Policy Program was adopted by the Cabinet on this day: KPI periods are counted from it.
PLAN_ADOPTED: Final = date(2024, 6, 21)

Rating = Literal["A", "B", "N"]


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
    observation of a target is the one with the greatest `as_of`, then the later report. Reports of
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
            if seen is None or _observation_order(candidate) > _observation_order(seen):
                found[kpi.target] = candidate
    return out


def _observation_order(o: Observation) -> tuple[date, datetime, str]:
    return (o.as_of, o.reported_at, o.event_id)


def progress_from_rollups(
    measures: Iterable[Measure],
    rollups: Iterable[QuarterRollup],
    observations: Iterable[Mapping[str, Mapping[int, Observation]]],
) -> dict[str, MeasureProgress]:
    """Each measure's progress from the rollups of every quarter with reports and the quarters' observations.

    The latest status is the measure's combined status in the latest quarter where it was reported.
    """
    latest: dict[str, tuple[FiscalQuarter, str]] = {}
    measures = list(measures)
    for rollup in sorted(rollups, key=lambda r: r.quarter, reverse=True):
        if len(latest) >= len(measures):  # every measure has its latest quarter: older ones cannot change that
            break
        for standing in rollup.measures:
            status = standing.status
            if status != UNREPORTED:
                measure_id = standing.measure.id
                if measure_id not in latest:
                    latest[measure_id] = (rollup.quarter, status)
    merged: dict[str, dict[int, Observation]] = {}
    for part in observations:
        for measure_id, found in part.items():
            into = merged.setdefault(measure_id, {})
            for target, candidate in found.items():
                seen = into.get(target)
                if seen is None or _observation_order(candidate) > _observation_order(seen):
                    into[target] = candidate
    out = {}
    for measure in measures:
        quarter, status = latest.get(measure.id, (None, UNREPORTED))
        out[measure.id] = MeasureProgress(status, quarter, merged.get(measure.id, {}))
    return out


@dataclass(frozen=True, slots=True)
class KpiRating:
    rating: Rating
    progress: float | None = None
    elapsed_share: float | None = None
    reason: str | None = None


def elapsed_share(on: date, due: date, *, start: date = PLAN_ADOPTED) -> float:
    """The share of the target period from `start` to `due` that had passed on `on`, within [0, 1]."""
    if due <= start:
        return 1.0
    share = (on - start).days / (due - start).days
    return min(1.0, max(0.0, share))


def rate_kpi(target: Target, observation: Observation | None) -> KpiRating:
    """Rate a target as Japan's KPI follow-up does: A, B or N.

    - progress = observed value / the target's value (the share of the target reached, assuming the
      target counts up from zero);
    - elapsed share = time from the plan's adoption (2024-06-21) to the observation's `as_of`, over the
      time from the adoption to the target's due date, clamped to [0, 1] (1 when due on or before it);
    - `A` when progress ≥ elapsed share, `B` when below;
    - `N` when there is no observation yet, or the target cannot be rated because its text states no
      positive numeric value or no due date (`reason` says which).
    """
    if observation is None:
        return KpiRating("N", reason="no observation yet")
    if target.value is None or target.value <= 0:
        return KpiRating("N", reason="the target states no positive numeric value")
    if target.due_date is None:
        return KpiRating("N", reason="the target states no due date")
    progress = observation.value / target.value
    share = elapsed_share(observation.as_of, target.due_date)
    return KpiRating("A" if progress >= share else "B", progress, share)


def is_overdue(target: Target, latest_status: str, today: date) -> bool:
    """The due date has passed (strictly before `today`) and the measure's latest status is not completed."""
    return target.due_date is not None and target.due_date < today and latest_status != Status.completed


@dataclass(frozen=True, slots=True)
class TargetStanding:
    target: Target
    overdue: bool
    rating: KpiRating
    observation: Observation | None


def target_standings(measure: Measure, progress: MeasureProgress, today: date) -> tuple[TargetStanding, ...]:
    """Each target of a measure with its overdue flag and KPI rating."""
    out = []
    for position, target in enumerate(measure.targets):
        observation = progress.observations.get(position)
        out.append(
            TargetStanding(
                target=target,
                overdue=is_overdue(target, progress.latest_status, today),
                rating=rate_kpi(target, observation),
                observation=observation,
            )
        )
    return tuple(out)
