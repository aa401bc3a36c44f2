"""Which alert conditions hold, from plain values (DESIGN.md "Alerts"): nothing here does I/O.

`conditions()` takes the catalog's measures, the effective reports of every quarter, the latest admitted review of
each report, the moment (Asia/Tokyo) and the first quarter alerts look at, and answers every condition that holds
now, keyed by its `alert_id`. The store diffs that against the alerts it has raised (`reporting.alerts.evaluate`):
a condition that appears is raised, one that disappears is resolved. So each rule says when its condition holds,
never when to publish.

- `report_due` / `report_missing`: for each quarter from `since` whose reporting window is open or over, each
  lead without an effective report: due from N days before the on-time deadline to the deadline, missing after.
- `stale`: a lead without a report in the last two quarters whose deadlines passed (a present condition: it
  ends with the lead's next report for either).
- `returned`: a lead's effective report whose latest review returned it (ends with a new report, or acceptance).
- `target_overdue`: per target and lead, `reporting.ratings.is_overdue` on the measure's progress today.
- `co_lead_disagreement` / `worsened`: in the measure's latest reported quarter, co-leads two or more severity
  steps apart / a combined status more severe than in the quarter before (both present conditions).
- `kpi_jump` (additive): a KPI observation implausibly far from the previous one for the target (ends when the
  report is corrected, or the secretariat accepts it).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from contracts.alerts import AlertKind, alert_key
from contracts.catalog import Measure
from contracts.cycle import ReviewDecision
from contracts.events import UNREPORTED
from contracts.periods import FiscalQuarter, last_completed_quarter, tokyo_date
from reporting.alerts import messages
from reporting.domain import SEVERITY_RANK, LeadReport, combined_status, movement
from reporting.progress import MeasureProgress, latest_observations
from reporting.ratings import observation_order, target_standings

#: Days before the on-time deadline from which an unreported measure is `report_due` (DESIGN: 14 by default).
DEFAULT_DUE_DAYS: Final = 14
#: Co-leads' statuses this many severity steps apart or more disagree.
DISAGREEMENT_STEPS: Final = 2
#: A KPI jumps implausibly when it is this many times the previous value (or this fraction of it) …
JUMP_RATIO: Final = 10.0
#: … or, for a percentage, moves by this many points in one step.
JUMP_POINTS: Final = 30.0
PERCENT_UNITS: Final = frozenset({"%", "％", "パーセント"})


@dataclass(frozen=True, slots=True)
class Review:
    """The latest admitted review of a report."""

    review_id: str
    event_id: str
    decision: str
    comment: str | None
    reviewed_at: datetime


@dataclass(frozen=True, slots=True)
class Condition:
    """An alert condition that holds: what the alert will say when raised."""

    alert_id: str
    kind: AlertKind
    agency: str
    measure_id: str | None
    fiscal_year: int | None
    quarter: int | None
    target_index: int | None
    message_ja: str
    message_en: str
    refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertInputs:
    measures: Sequence[Measure]
    #: Effective reports of every quarter (one per measure, agency and quarter).
    reports: Sequence[LeadReport]
    #: The latest admitted review per reviewed report, keyed by (agency, event id): an event id is unique per agency.
    reviews: Mapping[tuple[str, str], Review]
    now: datetime
    #: The first quarter report_due, report_missing and stale look at; None: `Start.first_quarter` of the reports.
    since: FiscalQuarter | None = None
    due_days: int = DEFAULT_DUE_DAYS
    #: Where all the reports start, when `reports` are some measures' only (default: `Start.of(reports)`).
    start: Start | None = None
    by_measure: dict[str, list[LeadReport]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for report in self.reports:
            self.by_measure.setdefault(report.measure_id, []).append(report)


def _condition(
    kind: AlertKind,
    agency: str,
    text: messages.Text,
    *,
    measure: Measure | None = None,
    quarter: FiscalQuarter | None = None,
    target_index: int | None = None,
    refs: Iterable[str] = (),
) -> Condition:
    measure_id = measure.id if measure is not None else None
    fiscal_year, q = (quarter.fiscal_year, quarter.quarter) if quarter is not None else (None, None)
    return Condition(
        alert_key(kind, agency, measure_id=measure_id, fiscal_year=fiscal_year, quarter=q, target_index=target_index),
        kind,
        agency,
        measure_id,
        fiscal_year,
        q,
        target_index,
        text.ja,
        text.en,
        tuple(refs),
    )


def conditions(inputs: AlertInputs) -> dict[str, Condition]:
    """Every alert condition that holds at `inputs.now`, keyed by alert id."""
    found: list[Condition] = []
    found += reporting_conditions(inputs)
    for measure in inputs.measures:
        mine = inputs.by_measure.get(measure.id, [])
        found += returned_conditions(measure, mine, inputs.reviews)
        found += overdue_conditions(measure, mine, inputs.now)
        found += latest_quarter_conditions(measure, mine)
        found += jump_conditions(measure, mine, inputs.reviews)
    return {c.alert_id: c for c in found}


def _leads(measure: Measure) -> list[str]:
    return [str(agency) for agency in measure.lead_agencies]


@dataclass(frozen=True, slots=True)
class Start:
    """What the default first quarter of report_due, report_missing and stale follows (`first_quarter`): the
    earliest quarter reported on, and the earliest receipt of a live report (a backfilled one is history)."""

    quarter: FiscalQuarter | None
    received: datetime | None

    @classmethod
    def of(cls, reports: Iterable[LeadReport]) -> Start:
        quarter: FiscalQuarter | None = None
        received: datetime | None = None
        for r in reports:
            q = r.fiscal_quarter
            if quarter is None or q < quarter:
                quarter = q
            # A store written before receipt was kept (until a rebuild fills it in) has the reporter's claim only.
            at = r.received_at or r.reported_at
            if not r.backfilled and (received is None or at < received):
                received = at
        return cls(quarter, received)

    def merged(self, other: Start) -> Start:
        """Where this and `other` (all reports as last seen, and some measures' reports since) start together."""
        return Start(_earliest(self.quarter, other.quarter), _earliest(self.received, other.received))

    def first_quarter(self) -> FiscalQuarter | None:
        """The first quarter alerts look at unless `since` is set: the earliest quarter anyone reported on, but not
        before the quarter the platform's first live report could be for (the one before it was received). So
        history older than the platform (reports for FY2000 sent today, a backfill of past years) raises no
        report_missing for the quarters around it; without a live report, there is nothing to look from."""
        if self.quarter is None or self.received is None:
            return None
        return max(self.quarter, FiscalQuarter.of_moment(self.received).previous())


def _earliest(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b < a) else a


def reporting_conditions(inputs: AlertInputs) -> list[Condition]:
    """report_due, report_missing and stale for every quarter from `since` (default: `Start.first_quarter`) whose
    window has opened."""
    since = inputs.since or (inputs.start or Start.of(inputs.reports)).first_quarter()
    if since is None:
        return []
    last = last_completed_quarter(inputs.now)
    quarters: list[FiscalQuarter] = []
    q = since
    while q <= last:
        quarters.append(q)
        q = q.next()
    reported = {(r.measure_id, r.agency, r.fiscal_year, r.quarter) for r in inputs.reports}
    last_reported: dict[tuple[str, str], FiscalQuarter] = {}
    for r in inputs.reports:
        key = (r.measure_id, r.agency)
        if key not in last_reported or r.fiscal_quarter > last_reported[key]:
            last_reported[key] = r.fiscal_quarter
    due_before = timedelta(days=inputs.due_days)
    closed = [q for q in quarters if inputs.now > q.on_time_deadline]
    out: list[Condition] = []
    for measure in inputs.measures:
        for agency in _leads(measure):
            for quarter in quarters:
                if (measure.id, agency, quarter.fiscal_year, quarter.quarter) in reported:
                    continue
                deadline = quarter.on_time_deadline
                if inputs.now > deadline:
                    text = messages.report_missing(measure, agency, quarter)
                    out.append(_condition(AlertKind.report_missing, agency, text, measure=measure, quarter=quarter))
                elif inputs.now >= deadline - due_before:
                    text = messages.report_due(measure, agency, quarter)
                    out.append(_condition(AlertKind.report_due, agency, text, measure=measure, quarter=quarter))
            if len(closed) >= 2 and not any(
                (measure.id, agency, q.fiscal_year, q.quarter) in reported for q in closed[-2:]
            ):
                text = messages.stale(measure, agency, closed[-2], closed[-1], last_reported.get((measure.id, agency)))
                out.append(_condition(AlertKind.stale, agency, text, measure=measure))
    return out


def returned_conditions(
    measure: Measure, reports: Sequence[LeadReport], reviews: Mapping[tuple[str, str], Review]
) -> list[Condition]:
    out = []
    leads = set(_leads(measure))
    for report in reports:
        review = reviews.get((report.agency, report.event_id))
        if report.agency in leads and review is not None and review.decision == ReviewDecision.returned:
            text = messages.returned(measure, report, review)
            out.append(
                _condition(
                    AlertKind.returned,
                    report.agency,
                    text,
                    measure=measure,
                    quarter=report.fiscal_quarter,
                    refs=(report.event_id, review.review_id),
                )
            )
    return out


def lead_progress(measure: Measure, reports: Sequence[LeadReport]) -> MeasureProgress:
    """`reporting.progress.measure_progress` without building a rollup per quarter (the same answer, tested):
    the leads' combined status in the latest quarter any lead reported on, and the latest observations."""
    leads = set(_leads(measure))
    mine = [r for r in reports if r.agency in leads]
    if not mine:
        return MeasureProgress(UNREPORTED, None, {})
    latest = max(r.fiscal_quarter for r in mine)
    status = combined_status(r.status for r in mine if r.fiscal_quarter == latest)
    return MeasureProgress(status, latest, latest_observations([measure], mine).get(measure.id, {}))


def overdue_conditions(measure: Measure, reports: Sequence[LeadReport], now: datetime) -> list[Condition]:
    """A target overdue today (`reporting.ratings`), raised for each lead of the measure."""
    if not any(t.due_date is not None for t in measure.targets):
        return []
    today = tokyo_date(now)
    if all(t.due_date is None or t.due_date >= today for t in measure.targets):
        return []
    progress = lead_progress(measure, reports)
    out = []
    for position, standing in enumerate(target_standings(measure, progress, today)):
        if not standing.overdue:
            continue
        refs = (standing.observation.event_id,) if standing.observation is not None else ()
        for agency in _leads(measure):
            text = messages.target_overdue(measure, position, standing.target, standing.observation)
            out.append(
                _condition(AlertKind.target_overdue, agency, text, measure=measure, target_index=position, refs=refs)
            )
    return out


def latest_quarter_conditions(measure: Measure, reports: Sequence[LeadReport]) -> list[Condition]:
    """co_lead_disagreement and worsened in the measure's latest reported quarter."""
    leads = _leads(measure)
    by_quarter: dict[FiscalQuarter, dict[str, LeadReport]] = defaultdict(dict)
    for report in reports:
        if report.agency in leads:
            by_quarter[report.fiscal_quarter][report.agency] = report
    if not by_quarter:
        return []
    latest = max(by_quarter)
    mine = by_quarter[latest]
    refs = tuple(r.event_id for r in mine.values())
    out = []
    ranks = {agency: SEVERITY_RANK[r.status] for agency, r in mine.items()}
    if len(ranks) >= 2 and max(ranks.values()) - min(ranks.values()) >= DISAGREEMENT_STEPS:
        statuses = {agency: mine[agency].status for agency in leads if agency in mine}
        for agency in leads:
            text = messages.co_lead_disagreement(measure, latest, statuses)
            out.append(
                _condition(AlertKind.co_lead_disagreement, agency, text, measure=measure, quarter=latest, refs=refs)
            )
    before = by_quarter.get(latest.previous())
    if before:
        was = combined_status(r.status for r in before.values())
        now = combined_status(r.status for r in mine.values())
        if movement(was, now) == "worse":
            for agency in leads:
                text = messages.worsened(measure, latest, was, now)
                out.append(_condition(AlertKind.worsened, agency, text, measure=measure, quarter=latest, refs=refs))
    return out


@dataclass(frozen=True, slots=True)
class _Seen:
    value: float
    as_of: date
    reported_at: datetime
    event_id: str
    report: LeadReport


def implausible_jump(previous: float, current: float, unit: str | None) -> bool:
    """Whether a KPI moving from `previous` to `current` in one step is implausible (a validation rule)."""
    if unit in PERCENT_UNITS and abs(current - previous) >= JUMP_POINTS:
        return True
    if previous == 0 or current == 0:
        return False
    if (previous > 0) != (current > 0):
        return True
    ratio = current / previous
    return ratio >= JUMP_RATIO or ratio <= 1 / JUMP_RATIO


def jump_conditions(
    measure: Measure, reports: Sequence[LeadReport], reviews: Mapping[tuple[str, str], Review]
) -> list[Condition]:
    """kpi_jump: an observation implausibly far from the one before it for the same target (leads' reports)."""
    leads = set(_leads(measure))
    seen: dict[int, list[_Seen]] = defaultdict(list)
    for report in reports:
        if report.agency not in leads:
            continue
        for kpi in report.kpis:
            if 0 <= kpi.target < len(measure.targets):
                seen[kpi.target].append(_Seen(kpi.value, kpi.as_of, report.reported_at, report.event_id, report))
    out = []
    for target, observations in seen.items():
        ordered = sorted(observations, key=_order)
        unit = measure.targets[target].unit
        for before, after in itertools.pairwise(ordered):
            if not implausible_jump(before.value, after.value, unit):
                continue
            review = reviews.get((after.report.agency, after.event_id))
            if review is not None and review.decision == ReviewDecision.accepted:
                continue  # the secretariat looked at the report and accepted it
            report = after.report
            text = messages.kpi_jump(measure, report, target, before.value, after.value, unit)
            out.append(
                _condition(
                    AlertKind.kpi_jump,
                    report.agency,
                    text,
                    measure=measure,
                    quarter=report.fiscal_quarter,
                    target_index=target,
                    refs=(after.event_id, before.event_id),
                )
            )
    return out


def _order(seen: _Seen) -> tuple[date, datetime, str]:
    return observation_order(seen)
