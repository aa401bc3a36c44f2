"""Rollup arithmetic over plain values (DESIGN.md, "Rollup semantics", is binding).

Nothing here does I/O: the consumer, the store and the HTTP layer hand in measures and reports. What the
rollups mean across quarters (latest status, KPI ratings, overdue targets) is in `reporting.progress`.

- The *effective report* of an agency on a measure for a quarter is its report with the greatest
  `reported_at`; ties go to the greater `event_id` (compared as canonical UUID strings): `EFFECTIVE_ORDER`.
- A measure's quarter *status* combines its lead agencies' effective reports, most severe first
  (`SEVERITY_ORDER`); a measure no lead reported on is `unreported`.
- A report is *on time* when the platform received it (`received_at`, the broker's timestamp) by the quarter's
  end + 30 days; `reported_at` is the reporter's claim and never decides it; a backfilled report is judged by
  its `reported_at` (`LeadReport.judged_at`).
- Government-wide and per-section tallies count each measure once by its combined status;
  per-agency tallies count the measures the agency leads by the agency's own effective report.
- The *on-time rate* of a scope is its measures reported on time over all its measures (`contracts.cycle.on_time_rate`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple

from contracts.agencies import Agency
from contracts.catalog import Measure
from contracts.cycle import on_time_rate
from contracts.events import SEVERITY_ORDER, UNREPORTED
from contracts.periods import FiscalQuarter

#: 0 is the most severe status.
SEVERITY_RANK: Final[dict[str, int]] = {status.value: rank for rank, status in enumerate(SEVERITY_ORDER)}

#: The keys of every `by_status`: the six statuses, most severe first, then `unreported`.
ROLLUP_STATUSES: Final[tuple[str, ...]] = (*(status.value for status in SEVERITY_ORDER), UNREPORTED)

SECTIONS: Final[tuple[int, ...]] = (1, 2, 3, 4, 5, 6)

#: "The latest report wins": of one agency's reports on a measure for a quarter, the effective one is the
#: greatest by these fields of `LeadReport`, compared in this order: the latest `reported_at`, ties to the
#: greater `event_id` (canonical UUID text, compared byte-wise). This is the one definition: the store's SQL
#: (`repository.ORDER_COLUMNS`) is generated from it, and tests check every rendering against `effective_order`.
EFFECTIVE_ORDER: Final[tuple[str, ...]] = ("reported_at", "event_id")

#: (measure_id, agency, fiscal_year, quarter)
ReportKey = tuple[str, str, int, int]

Movement = Literal["worse", "better", "same"]


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
    #: A past report migrated by the secretariat (`backfill.{agency}.{measure_id}`).
    backfilled: bool = False
    #: Its review state (`pending`, `accepted`, `returned`), the returned report's comment, and the returned report
    #: this one answers (DESIGN.md "The reporting cycle"); `events` rows read as pending.
    review: str = "pending"
    review_comment: str | None = None
    answers: str | None = None
    #: When the platform received it: the broker's timestamp of its STATUS message (`AdmittedEvent.received_at`,
    #: else, from an ingest older than that field, its admission time). None only in a store written before
    #: reporting kept it (a rebuild fills it in).
    received_at: datetime | None = None

    @property
    def key(self) -> ReportKey:
        return (self.measure_id, self.agency, self.fiscal_year, self.quarter)

    @property
    def fiscal_quarter(self) -> FiscalQuarter:
        return FiscalQuarter(self.fiscal_year, self.quarter)

    @property
    def judged_at(self) -> datetime:
        """The moment timeliness is judged by: when the platform received the report, never the reporter's own
        `reported_at`, which only orders an agency's reports; a backfilled report (history migrated by the
        secretariat) by its `reported_at` (DESIGN.md "Rollup semantics")."""
        if self.backfilled or self.received_at is None:
            return self.reported_at
        return self.received_at

    @property
    def on_time(self) -> bool:
        return self.judged_at <= on_time_deadline(self.fiscal_year, self.quarter)


@lru_cache(maxsize=512)
def on_time_deadline(fiscal_year: int, quarter: int) -> datetime:
    """Reports at or before this instant are on time (the quarter's end + 30 days, Asia/Tokyo)."""
    return FiscalQuarter(fiscal_year, quarter).on_time_deadline


_effective_order = operator.attrgetter(*EFFECTIVE_ORDER)


def effective_order(report: LeadReport) -> tuple[datetime, str]:
    """What "the latest report wins" compares (`EFFECTIVE_ORDER`): of two reports with one key, the greater wins."""
    order: tuple[datetime, str] = _effective_order(report)
    return order


def supersedes(candidate: LeadReport, current: LeadReport | None) -> bool:
    """Whether `candidate` replaces `current` as the effective report of its key."""
    return current is None or effective_order(candidate) > effective_order(current)


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

    def remove(self, status: str, *, on_time: bool) -> None:
        """Take back what `add` counted (a measure's standing replaced by an incremental update)."""
        self.measures_total -= 1
        self.by_status[status] -= 1
        if status != UNREPORTED:
            self.reported -= 1
            if on_time:
                self.on_time -= 1

    def copy(self) -> Tally:
        return Tally(self.measures_total, self.reported, self.on_time, dict(self.by_status))

    @property
    def coverage(self) -> float:
        """Completeness: reported / expected (0 when nothing is expected)."""
        return self.reported / self.measures_total if self.measures_total else 0.0

    @property
    def on_time_rate(self) -> float:
        return on_time_rate(self.on_time, self.measures_total)

    def fields(self) -> dict[str, Any]:
        """The tally as every document states it (the API's `TallyOut`, the published rollup's tallies)."""
        return {
            "measures_total": self.measures_total,
            "reported": self.reported,
            "coverage": self.coverage,
            "on_time": self.on_time,
            "on_time_rate": self.on_time_rate,
            "by_status": dict(self.by_status),
        }


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


def _count(
    standing: MeasureStanding,
    overall: Tally,
    by_agency: dict[str, Tally],
    by_section: dict[int, Tally],
    *,
    remove: bool = False,
) -> None:
    """Count a measure's standing in the tallies (or take it back): once overall and in its section by the
    combined status, and in each lead's agency tally by that lead's own report."""
    on_time = standing.on_time
    section = by_section.get(standing.measure.section)
    if section is None:  # not `setdefault(…, Tally())`: that builds a Tally on every call
        section = by_section[standing.measure.section] = Tally()
    if remove:
        overall.remove(standing.status, on_time=on_time)
        section.remove(standing.status, on_time=on_time)
    else:
        overall.add(standing.status, on_time=on_time)
        section.add(standing.status, on_time=on_time)
    for lead in standing.leads:
        tally = by_agency.get(lead.agency)
        if tally is None:
            tally = by_agency[lead.agency] = Tally()
        if remove:
            tally.remove(lead.status, on_time=bool(lead.on_time))
        else:
            tally.add(lead.status, on_time=bool(lead.on_time))


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
        _count(standing, overall, by_agency, by_section)
    return QuarterRollup(quarter, overall, by_agency, by_section, tuple(standings))


def rollup_updated(rollup: QuarterRollup, standings: Mapping[str, MeasureStanding]) -> QuarterRollup:
    """`rollup` with some measures' standings replaced (by measure id, measures of the rollup only): its tallies
    updated by taking back each old standing and counting the new one, the rest of the quarter not read.

    Equal to `rollup_quarter` over the reports that make the new standings (tests/test_incremental.py)."""
    if not standings:
        return rollup
    moved = []
    measures = list(rollup.measures)
    for i, old in enumerate(measures):
        new = standings.get(old.measure.id)
        if new is None or new == old:
            continue
        moved.append((old, new))
        measures[i] = new
    if not moved:
        return QuarterRollup(rollup.quarter, rollup.overall, rollup.by_agency, rollup.by_section, tuple(measures))
    # Only the tallies the moved measures count in are copied (the rest are shared with `rollup`, never changed).
    overall = rollup.overall.copy()
    by_agency = dict(rollup.by_agency)
    by_section = dict(rollup.by_section)
    for old, new in moved:
        for standing in (old, new):
            section = standing.measure.section
            if section in by_section and by_section[section] is rollup.by_section.get(section):
                by_section[section] = by_section[section].copy()
            for lead in standing.leads:
                if lead.agency in by_agency and by_agency[lead.agency] is rollup.by_agency.get(lead.agency):
                    by_agency[lead.agency] = by_agency[lead.agency].copy()
    for old, new in moved:
        _count(old, overall, by_agency, by_section, remove=True)
        _count(new, overall, by_agency, by_section)
    return QuarterRollup(rollup.quarter, overall, by_agency, by_section, tuple(measures))


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
