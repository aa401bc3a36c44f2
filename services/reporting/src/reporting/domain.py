"""Rollup arithmetic over plain values (DESIGN.md, "Rollup semantics", is binding).

Nothing here does I/O: the consumer, the store and the HTTP layer hand in measures and reports.

- The *effective report* of an agency on a measure for a quarter is its report with the greatest
  `reported_at`; ties go to the greater `event_id` (compared as canonical UUID strings).
- A measure's quarter *status* combines its lead agencies' effective reports, most severe first
  (`SEVERITY_ORDER`); a measure no lead reported on is `unreported`.
- A report is *on time* when `reported_at` ≤ the quarter's end + 30 days.
- Government-wide and per-section tallies count each measure once by its combined status;
  per-agency tallies count the measures the agency leads by the agency's own effective report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Final, Literal, NamedTuple

from contracts.agencies import Agency
from contracts.catalog import Measure, Target
from contracts.events import SEVERITY_ORDER, UNREPORTED, Status
from contracts.periods import FiscalQuarter

#: The Priority Policy Program was adopted by the Cabinet on this day: KPI periods are counted from it.
PLAN_ADOPTED: Final = date(2024, 6, 21)

#: 0 is the most severe status.
SEVERITY_RANK: Final[dict[str, int]] = {status.value: rank for rank, status in enumerate(SEVERITY_ORDER)}

#: The keys of every `by_status`: the six statuses, most severe first, then `unreported`.
ROLLUP_STATUSES: Final[tuple[str, ...]] = (*(status.value for status in SEVERITY_ORDER), UNREPORTED)

SECTIONS: Final[tuple[int, ...]] = (1, 2, 3, 4, 5, 6)

#: (measure_id, agency, fiscal_year, quarter)
ReportKey = tuple[str, str, int, int]

Movement = Literal["worse", "better", "same"]
Rating = Literal["A", "B", "N"]


@dataclass(frozen=True, slots=True)
class KpiReading:
    """An observed value of one of the measure's targets, as a report carries it."""

    target: int
    value: float
    as_of: date


class LeadReport(NamedTuple):
    """One agency's report on one measure for one fiscal quarter (a named tuple: cheap to make in bulk)."""

    measure_id: str
    agency: str
    fiscal_year: int
    quarter: int
    status: str
    reported_at: datetime
    event_id: str
    progress: float | None = None
    kpis: tuple[KpiReading, ...] = ()
    note: str | None = None
    reporter: str | None = None

    @property
    def key(self) -> ReportKey:
        return (self.measure_id, self.agency, self.fiscal_year, self.quarter)

    @property
    def order(self) -> tuple[datetime, str]:
        """Greater wins: latest `reported_at`, then greater `event_id`."""
        return (self.reported_at, self.event_id)

    @property
    def fiscal_quarter(self) -> FiscalQuarter:
        return FiscalQuarter(self.fiscal_year, self.quarter)

    @property
    def on_time(self) -> bool:
        return self.reported_at <= on_time_deadline(self.fiscal_year, self.quarter)


@lru_cache(maxsize=512)
def on_time_deadline(fiscal_year: int, quarter: int) -> datetime:
    """Reports at or before this instant are on time (the quarter's end + 30 days, Asia/Tokyo)."""
    return FiscalQuarter(fiscal_year, quarter).on_time_deadline


def supersedes(candidate: LeadReport, current: LeadReport | None) -> bool:
    """Whether `candidate` replaces `current` as the effective report of its key."""
    return current is None or candidate.order > current.order


def effective_reports(reports: Iterable[LeadReport]) -> dict[ReportKey, LeadReport]:
    """The effective report per (measure, agency, quarter), whatever order the reports come in."""
    effective: dict[ReportKey, LeadReport] = {}
    for report in reports:
        key = report.key
        if supersedes(report, effective.get(key)):
            effective[key] = report
    return effective


def combined_status(statuses: Iterable[str]) -> str:
    """The most severe of the leads' statuses; `unreported` when there is none."""
    best: str = UNREPORTED
    best_rank = len(SEVERITY_RANK)
    for status in statuses:
        rank = SEVERITY_RANK[status]
        if rank < best_rank:
            best, best_rank = status, rank
    return best


def movement(previous: str, current: str) -> Movement | None:
    """How a measure's status moved between quarters by severity; None when either is `unreported`."""
    if previous == UNREPORTED or current == UNREPORTED:
        return None
    before, now = SEVERITY_RANK[previous], SEVERITY_RANK[current]
    if now < before:
        return "worse"
    if now > before:
        return "better"
    return "same"


@dataclass(frozen=True, slots=True)
class LeadStanding:
    """A lead agency's effective report on a measure in a quarter, or none."""

    agency: str
    report: LeadReport | None

    @property
    def status(self) -> str:
        return self.report.status if self.report is not None else UNREPORTED

    @property
    def on_time(self) -> bool | None:
        return self.report.on_time if self.report is not None else None


@dataclass(frozen=True, slots=True)
class MeasureStanding:
    """A measure in one quarter: each lead's effective report and the combined status."""

    measure: Measure
    leads: tuple[LeadStanding, ...]
    status: str

    @property
    def reported(self) -> bool:
        return self.status != UNREPORTED

    @property
    def on_time(self) -> bool:
        """Reported, and every effective report of its leads was on time."""
        return self.reported and all(lead.report.on_time for lead in self.leads if lead.report is not None)

    @property
    def event_ids(self) -> tuple[str, ...]:
        """Lineage: the events the status came from, in lead order."""
        return tuple(lead.report.event_id for lead in self.leads if lead.report is not None)

    def lead(self, agency: str) -> LeadStanding | None:
        for lead in self.leads:
            if lead.agency == agency:
                return lead
        return None


def measure_standing(measure: Measure, reports: Mapping[str, LeadReport]) -> MeasureStanding:
    """Combine the effective reports (keyed by agency) of a measure's leads; other agencies' reports are ignored."""
    leads = tuple(LeadStanding(str(agency), reports.get(agency)) for agency in measure.lead_agencies)
    status = combined_status(lead.report.status for lead in leads if lead.report is not None)
    return MeasureStanding(measure, leads, status)


@dataclass(slots=True)
class Tally:
    """Counts of measures in one scope (government-wide, a section or an agency)."""

    measures_total: int = 0
    reported: int = 0
    on_time: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLLUP_STATUSES, 0))

    def add(self, status: str, *, on_time: bool) -> None:
        self.measures_total += 1
        self.by_status[status] += 1
        if status != UNREPORTED:
            self.reported += 1
            if on_time:
                self.on_time += 1

    @property
    def coverage(self) -> float:
        """Completeness: reported / expected (0 when nothing is expected)."""
        return self.reported / self.measures_total if self.measures_total else 0.0

    @property
    def on_time_rate(self) -> float:
        """Timeliness: reported on time / expected (0 when nothing is expected)."""
        return self.on_time / self.measures_total if self.measures_total else 0.0


@dataclass(frozen=True, slots=True)
class QuarterRollup:
    quarter: FiscalQuarter
    overall: Tally
    by_agency: dict[str, Tally]
    by_section: dict[int, Tally]
    measures: tuple[MeasureStanding, ...]

    def standing(self, measure_id: str) -> MeasureStanding | None:
        for standing in self.measures:
            if standing.measure.id == measure_id:
                return standing
        return None


def rollup_quarter(
    quarter: FiscalQuarter,
    measures: Sequence[Measure],
    effective: Mapping[str, Mapping[str, LeadReport]],
) -> QuarterRollup:
    """Tally one quarter. `effective` maps measure id → agency → that agency's effective report in the quarter."""
    overall = Tally()
    by_agency = {agency.value: Tally() for agency in Agency}
    by_section = {section: Tally() for section in SECTIONS}
    standings = []
    empty: Mapping[str, LeadReport] = {}
    for measure in measures:
        standing = measure_standing(measure, effective.get(measure.id, empty))
        standings.append(standing)
        on_time = standing.on_time
        overall.add(standing.status, on_time=on_time)
        section = by_section.get(measure.section)
        if section is None:  # not `setdefault(…, Tally())`: that builds a Tally on every call
            section = by_section[measure.section] = Tally()
        section.add(standing.status, on_time=on_time)
        for lead in standing.leads:
            tally = by_agency.get(lead.agency)
            if tally is None:
                tally = by_agency[lead.agency] = Tally()
            tally.add(lead.status, on_time=bool(lead.on_time))
    return QuarterRollup(quarter, overall, by_agency, by_section, tuple(standings))


@dataclass(frozen=True, slots=True)
class Trend:
    """The previous quarter's rollup and the measures whose combined status moved since."""

    previous: QuarterRollup
    moved_worse: tuple[str, ...]
    moved_better: tuple[str, ...]


def trend(current: QuarterRollup, previous: QuarterRollup) -> Trend:
    """Measures reported in both quarters whose combined status became more (or less) severe."""
    before = {standing.measure.id: standing.status for standing in previous.measures}
    worse, better = [], []
    for standing in current.measures:
        moved = movement(before.get(standing.measure.id, UNREPORTED), standing.status)
        if moved == "worse":
            worse.append(standing.measure.id)
        elif moved == "better":
            better.append(standing.measure.id)
    return Trend(previous, tuple(worse), tuple(better))


# --- Targets and KPIs -------------------------------------------------------------------------


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
