"""Quarter views: everything a quarter's documents are built from, computed from the store and the catalog.

A view is computed from the small `effective_reports` table and the in-memory catalog, never from the events
table, so computing it does not depend on how many events are stored; `as_of` views are computed from the
events admitted by that moment. Each part is cached under a key that names what it depends on: a quarter's
data under the quarter's revision (a new event costs one quarter's reload), what every quarter's view shares
(each measure's progress, the targets' summary) under the state of the whole store (`StoreState`: every
quarter's revision, the catalog's revision and the day), and a view under its quarter, moment and state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, Engine

from contracts.catalog import Measure
from contracts.periods import TOKYO, FiscalQuarter
from reporting import repository
from reporting.cache import SingleFlightCache
from reporting.cycle.state import OPEN, PublicationState, closed_quarters, is_closed, publication_state
from reporting.domain import (
    LeadReport,
    MeasureStanding,
    Movement,
    QuarterRollup,
    Trend,
    measure_standing,
    movement,
    rollup_quarter,
    trend,
)
from reporting.progress import (
    MeasureProgress,
    Observation,
    latest_observations,
    measure_progress,
    progress_from_rollups,
    target_standings,
)
from reporting.registry import CatalogSnapshot, CatalogView
from reporting.tables import LIVE
from shinchoku_runtime.http import Unavailable

#: Values each cache holds: a quarter's data per revision, the shared part per state, views per quarter and state.
QUARTER_DATA_CACHED = 512
PLANS_CACHED = 16
VIEWS_CACHED = 256


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


def target_summary(measures: Iterable[Measure], progress: Mapping[str, MeasureProgress], today: date) -> TargetSummary:
    overdue = measures_overdue = targets_total = 0
    ratings = dict.fromkeys(("A", "B", "N"), 0)
    overdue_by_agency: dict[str, int] = {}
    overdue_by_section: dict[int, int] = {}
    for measure in measures:
        targets = target_standings(measure, progress[measure.id], today)
        late = sum(1 for t in targets if t.overdue)
        overdue += late
        measures_overdue += 1 if late else 0
        targets_total += len(targets)
        overdue_by_section[measure.section] = overdue_by_section.get(measure.section, 0) + late
        for agency in measure.lead_agencies:
            overdue_by_agency[agency.value] = overdue_by_agency.get(agency.value, 0) + late
        for t in targets:
            ratings[t.rating.rating] += 1
    return TargetSummary(targets_total, overdue, measures_overdue, ratings, overdue_by_agency, overdue_by_section)


@dataclass(frozen=True, slots=True)
class QuarterData:
    """One quarter as its effective reports make it: the rollup, and the KPI observations its reports carry."""

    rollup: QuarterRollup
    observations: dict[str, dict[int, Observation]]


def quarter_data(quarter: FiscalQuarter, measures: Sequence[Measure], reports: Iterable[LeadReport]) -> QuarterData:
    reports = list(reports)
    by_measure: dict[str, dict[str, LeadReport]] = defaultdict(dict)
    for report in reports:
        by_measure[report.measure_id][report.agency] = report
    return QuarterData(rollup_quarter(quarter, measures, by_measure), latest_observations(measures, reports))


@dataclass(frozen=True, slots=True)
class PlanStanding:
    """What every quarter's view of one state of the store shares: each measure's progress, the targets' summary."""

    progress: Mapping[str, MeasureProgress]
    targets: TargetSummary


def plan_standing(measures: Sequence[Measure], quarters: Iterable[QuarterData], today: date) -> PlanStanding:
    quarters = list(quarters)
    progress = progress_from_rollups(measures, (q.rollup for q in quarters), (q.observations for q in quarters))
    return PlanStanding(progress, target_summary(measures, progress, today))


@dataclass(frozen=True, slots=True)
class QuarterView:
    """Everything computed for one quarter: rollup, trend, and the cross-quarter progress of each measure."""

    rollup: QuarterRollup
    trend: Trend
    progress: Mapping[str, MeasureProgress]
    targets: TargetSummary
    #: The day `overdue` is judged on (Asia/Tokyo): today, or the `as_of` moment's day.
    today: date
    as_of: datetime | None
    #: Closed or not, and the latest published revision (as known now: an `as_of` view is open until its close).
    publication: PublicationState = OPEN


# --- Keys: what each cached value depends on ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreState:
    """What every view depends on besides its quarter and moment: every quarter's revision, the catalog, the day."""

    #: (quarter, revision) of every quarter with data, in quarter order.
    revisions: tuple[tuple[FiscalQuarter, int], ...]
    catalog_revision: int
    today: date
    #: The public's view: the closed quarters (oldest first), the only ones whose reports it counts (the
    #: revisions above are theirs only). None: the live view of agencies and the secretariat, every quarter.
    closed: tuple[FiscalQuarter, ...] | None = None


@dataclass(frozen=True, slots=True)
class ViewKey:
    """A quarter's view: as known now (`as_of` None) or from the events admitted by `as_of`, in one state."""

    quarter: FiscalQuarter
    as_of: datetime | None
    state: StoreState


@dataclass(frozen=True, slots=True)
class QuarterDataKey:
    quarter: FiscalQuarter
    #: The quarter's revision in the store; None when it has no data yet.
    revision: int | None
    catalog_revision: int


class QuarterViews:
    """Computes quarter views from the store and the catalog. Thread-safe; each part is computed once per state."""

    def __init__(self, engine: Engine, catalog: CatalogView, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._catalog = catalog
        self._clock = clock or (lambda: datetime.now(TOKYO))
        self._quarters: SingleFlightCache[QuarterDataKey, QuarterData] = SingleFlightCache(QUARTER_DATA_CACHED)
        self._plans: SingleFlightCache[StoreState, PlanStanding] = SingleFlightCache(PLANS_CACHED)
        self._views: SingleFlightCache[ViewKey, QuarterView] = SingleFlightCache(VIEWS_CACHED)

    def catalog(self) -> CatalogSnapshot:
        """The catalog snapshot, or 503 while it has not been loaded."""
        snapshot = self._catalog.snapshot
        if not snapshot.loaded:
            raise Unavailable("the catalog has not been loaded yet; try again in a few seconds")
        return snapshot

    def now(self) -> datetime:
        return self._clock()

    def today(self, as_of: datetime | None = None) -> date:
        """The day (Asia/Tokyo) targets are judged on: today, or the `as_of` moment's day."""
        return (as_of or self._clock()).astimezone(TOKYO).date()

    def state(self, as_of: datetime | None = None, *, public: bool = False) -> tuple[StoreState, CatalogSnapshot]:
        """The state of the store now, and the catalog snapshot it counts (its revision is in the state).

        With `public`, the state of the public's view: the closed quarters only, so that every figure computed
        from it (a measure's latest status, the targets' observations, ratings and overdue counts, the trend)
        is as of the closed quarters, and a report on an open quarter changes neither it nor its key.
        """
        snapshot = self.catalog()
        with self._engine.connect() as conn:
            revisions = repository.revisions(conn)
            closed = tuple(FiscalQuarter(fy, q) for fy, q in closed_quarters(conn, LIVE.cycle)) if public else None
        ordered = tuple(
            sorted(
                (FiscalQuarter(fy, q), revision)
                for (fy, q), revision in revisions.items()
                if closed is None or FiscalQuarter(fy, q) in closed
            )
        )
        state = StoreState(ordered, catalog_revision=snapshot.revision, today=self.today(as_of), closed=closed)
        return state, snapshot

    def key(
        self, quarter: FiscalQuarter, as_of: datetime | None, *, public: bool = False
    ) -> tuple[ViewKey, CatalogSnapshot]:
        """The key of a quarter's view in the store's current state (the public's, with `public`), and the
        catalog to compute it with."""
        state, snapshot = self.state(as_of, public=public)
        return ViewKey(quarter, as_of, state), snapshot

    def view(self, key: ViewKey, snapshot: CatalogSnapshot) -> QuarterView:
        """The view `key` names (from `key()`), from the cache or computed with `snapshot`."""
        return self._views.get(key, lambda: self._compute(key, snapshot)).value

    def _compute(self, key: ViewKey, snapshot: CatalogSnapshot) -> QuarterView:
        quarter, previous, state = key.quarter, key.quarter.previous(), key.state
        with self._engine.connect() as conn:
            if key.as_of is None:
                datas = {q: self._quarter_data(conn, snapshot, q, revision) for q, revision in state.revisions}
            else:
                grouped: dict[FiscalQuarter, list[LeadReport]] = defaultdict(list)
                for report in repository.effective_as_of(conn, as_of=key.as_of):
                    if state.closed is None or report.fiscal_quarter in state.closed:
                        grouped[report.fiscal_quarter].append(report)
                datas = {q: quarter_data(q, snapshot.measures, reports) for q, reports in grouped.items()}
            # A quarter the view does not count (the public's view of an open one) reads as without reports.
            this = datas.get(quarter) or self._quarter_data(conn, snapshot, quarter, None)
            last = datas.get(previous) or self._quarter_data(conn, snapshot, previous, None)
            publication = publication_state(conn, LIVE.cycle, quarter.fiscal_year, quarter.quarter)
        if key.as_of is not None and publication.published_at is not None:
            if datetime.fromisoformat(publication.published_at) > key.as_of:
                publication = OPEN
        if key.as_of is None:  # the same for every quarter's view of this state of the store: computed once
            plan = self._plans.get(state, lambda: plan_standing(snapshot.measures, datas.values(), state.today)).value
        else:
            plan = plan_standing(snapshot.measures, datas.values(), state.today)
        return QuarterView(
            rollup=this.rollup,
            trend=trend(this.rollup, last.rollup),
            progress=plan.progress,
            targets=plan.targets,
            today=state.today,
            as_of=key.as_of,
            publication=publication,
        )

    def _quarter_data(
        self, conn: Connection, snapshot: CatalogSnapshot, quarter: FiscalQuarter, revision: int | None
    ) -> QuarterData:
        def compute() -> QuarterData:
            reports: list[LeadReport] = []
            if revision is not None:
                reports = repository.effective_for_quarter(
                    conn, fiscal_year=quarter.fiscal_year, quarter=quarter.quarter
                )
            return quarter_data(quarter, snapshot.measures, reports)

        return self._quarters.get(QuarterDataKey(quarter, revision, snapshot.revision), compute).value

    def closed_quarters(self) -> list[FiscalQuarter]:
        """Every quarter the secretariat has closed, oldest first."""
        with self._engine.connect() as conn:
            return [FiscalQuarter(fy, q) for fy, q in closed_quarters(conn, LIVE.cycle)]

    def is_closed(self, fiscal_year: int, quarter: int) -> bool:
        with self._engine.connect() as conn:
            return is_closed(conn, LIVE.cycle, fiscal_year, quarter)

    def history(self, measure: Measure, *, public: bool = False) -> MeasureHistory:
        """A measure in every quarter any of its leads reported on, as known now; with `public`, from the
        closed quarters' reports only (its progress and targets too)."""
        with self._engine.connect() as conn:
            reports = repository.effective_for_measure(conn, measure_id=measure.id)
            if public:
                closed = set(closed_quarters(conn, LIVE.cycle))
                reports = [r for r in reports if (r.fiscal_year, r.quarter) in closed]
        return measure_history(measure, reports, self.today())


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A measure in one quarter, and how its status moved since the quarter before in its history."""

    quarter: FiscalQuarter
    standing: MeasureStanding
    movement: Movement | None


@dataclass(frozen=True, slots=True)
class MeasureHistory:
    """A measure quarter by quarter (every quarter any lead reported on, oldest first) and its progress."""

    measure: Measure
    entries: tuple[HistoryEntry, ...]
    progress: MeasureProgress
    today: date


def measure_history(measure: Measure, reports: Iterable[LeadReport], today: date) -> MeasureHistory:
    """The history of a measure from its effective reports of every quarter (other agencies' reports ignored)."""
    reports = list(reports)
    leads = {str(a) for a in measure.lead_agencies}
    by_quarter: dict[FiscalQuarter, dict[str, LeadReport]] = defaultdict(dict)
    for report in reports:
        if report.agency in leads:
            by_quarter[report.fiscal_quarter][report.agency] = report
    entries = []
    previous: str | None = None
    for quarter in sorted(by_quarter):
        standing = measure_standing(measure, by_quarter[quarter])
        entries.append(HistoryEntry(quarter, standing, movement(previous, standing.status) if previous else None))
        previous = standing.status
    return MeasureHistory(measure, tuple(entries), measure_progress(measure, reports), today)
