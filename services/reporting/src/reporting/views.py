"""Quarter views: everything a quarter's documents are built from, computed from the store and the catalog.

A view is computed from the small `effective_reports` table and the in-memory catalog, never from the events
table, so computing it does not depend on how many events are stored; `as_of` views are computed from the
events admitted by that moment. Each part is cached under a key that names what it depends on: a quarter's
data under the quarter's revision, what every quarter's view shares (each measure's progress, the targets'
summary) under the state of the whole store (`StoreState`: every quarter's revision, the catalog's revision and
the day), and a view under its quarter, moment and state.

A change does not make a reader compute a quarter again: the quarter's data at the revision just before is
updated by the measures the change touched (`reporting.tallies`: their effective reports read by key, their
standings replaced in the tallies), and the plan's standing by the measures whose figures moved. Only a reader
that missed a revision (several transactions since, a rebuild, a new catalog) computes the quarter in full.

One module of ~400 lines on purpose: the view, its parts and the caches keyed by what each part depends on are
one piece of reasoning (what may be reused under which state of the store); split, each key would be read away
from what it guards.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, Engine

from contracts.catalog import Measure
from contracts.periods import TOKYO, FiscalQuarter
from reporting import repository, revision_store
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
    trend,
)
from reporting.progress import MeasureProgress, measure_progress
from reporting.registry import CatalogSnapshot, CatalogView
from reporting.tables import LIVE
from reporting.tallies import (
    PlanStanding,
    QuarterData,
    TargetSummary,
    changed_measures,
    plan_standing,
    plan_updated,
    quarter_data,
    quarter_data_updated,
)
from shinchoku_runtime.http import Unavailable

__all__ = ["QuarterData", "QuarterView", "QuarterViews", "StoreState", "TargetSummary", "ViewKey"]

#: Values each cache holds: a quarter's data per revision, the shared part per state, views per quarter and state.
QUARTER_DATA_CACHED = 512
PLANS_CACHED = 16
VIEWS_CACHED = 256


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


@dataclass(frozen=True, slots=True)
class PublicationKey:
    quarter: FiscalQuarter
    revision: int


@dataclass(frozen=True, slots=True)
class LatestQuarter:
    """The latest data a reader computed of a quarter, and the revision and catalog it is of."""

    revision: int
    catalog_revision: int
    data: QuarterData


@dataclass(frozen=True, slots=True)
class LatestPlan:
    """The latest plan a reader computed, the state it is of and the quarters' data it came from."""

    state: StoreState
    datas: dict[FiscalQuarter, QuarterData]
    plan: PlanStanding


class QuarterViews:
    """Computes quarter views from the store and the catalog. Thread-safe; each part is computed once per state."""

    def __init__(self, engine: Engine, catalog: CatalogView, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._catalog = catalog
        self._clock = clock or (lambda: datetime.now(TOKYO))
        self._quarters: SingleFlightCache[QuarterDataKey, QuarterData] = SingleFlightCache(QUARTER_DATA_CACHED)
        self._plans: SingleFlightCache[StoreState, PlanStanding] = SingleFlightCache(PLANS_CACHED)
        self._views: SingleFlightCache[ViewKey, QuarterView] = SingleFlightCache(VIEWS_CACHED)
        self._publications: SingleFlightCache[PublicationKey, PublicationState] = SingleFlightCache(QUARTER_DATA_CACHED)
        #: The latest data computed of each quarter and the latest plan (with the quarters' data it came from):
        #: what the next revision updates, rather than computing it again.
        self._latest_lock = threading.Lock()
        self._latest: dict[FiscalQuarter, LatestQuarter] = {}
        #: Each quarter's revision row as the last `state()` read it (what its last bump touched).
        self._touched: dict[FiscalQuarter, revision_store.QuarterState] = {}
        #: The latest view of each quarter (live and the public's), reused while nothing it shows changed.
        self._latest_views: dict[tuple[FiscalQuarter, bool], QuarterView] = {}
        #: (per audience: the live view, the public's)
        self._latest_plans: dict[bool, LatestPlan] = {}

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
            quarters = revision_store.quarter_states(conn)
            closed = tuple(FiscalQuarter(fy, q) for fy, q in closed_quarters(conn, LIVE.cycle)) if public else None
        with self._latest_lock:  # what each quarter's last bump touched, for the reader that computes it next
            for (fy, q), found in quarters.items():
                self._touched[FiscalQuarter(fy, q)] = found
        ordered = tuple(
            sorted(
                (FiscalQuarter(fy, q), found.revision)
                for (fy, q), found in quarters.items()
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
            publication = self._publication(conn, quarter, dict(state.revisions).get(quarter))
        if key.as_of is not None and publication.published_at is not None:
            if datetime.fromisoformat(publication.published_at) > key.as_of:
                publication = OPEN
        if key.as_of is not None:
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
        # The same for every quarter's view of this state of the store: computed once.
        plan = self._plans.get(state, lambda: self._plan(state, snapshot, datas)).value
        # A change elsewhere leaves this quarter's view as it was (its rollup, the previous quarter's, the plan and
        # the publication the same objects): the view is the one computed before, and so are its documents.
        audience = (quarter, state.closed is not None)
        with self._latest_lock:
            before = self._latest_views.get(audience)
        same_trend = before is not None and before.rollup is this.rollup and before.trend.previous is last.rollup
        if (
            before is not None
            and same_trend
            and before.progress is plan.progress
            and before.targets is plan.targets
            and before.today == state.today
            and before.publication == publication
        ):
            return before
        view = QuarterView(
            rollup=this.rollup,
            trend=before.trend if before is not None and same_trend else trend(this.rollup, last.rollup),
            progress=plan.progress,
            targets=plan.targets,
            today=state.today,
            as_of=None,
            publication=publication,
        )
        with self._latest_lock:
            self._latest_views[audience] = view
        return view

    def _quarter_data(
        self, conn: Connection, snapshot: CatalogSnapshot, quarter: FiscalQuarter, revision: int | None
    ) -> QuarterData:
        def compute() -> QuarterData:
            if revision is None:
                return quarter_data(quarter, snapshot.measures, [])
            data = self._updated(conn, snapshot, quarter, revision)
            if data is None:
                reports = repository.effective_for_quarter(
                    conn, fiscal_year=quarter.fiscal_year, quarter=quarter.quarter
                )
                data = quarter_data(quarter, snapshot.measures, reports)
            with self._latest_lock:
                latest = self._latest.get(quarter)
                if latest is None or (latest.catalog_revision, latest.revision) <= (snapshot.revision, revision):
                    self._latest[quarter] = LatestQuarter(revision, snapshot.revision, data)
            return data

        return self._quarters.get(QuarterDataKey(quarter, revision, snapshot.revision), compute).value

    def _publication(self, conn: Connection, quarter: FiscalQuarter, revision: int | None) -> PublicationState:
        """The quarter's place in the cycle, cached under its revision: a close and every restatement are written by
        a transaction that bumps it. (A quarter without a revision row is read each time: a rebuilt store has no row
        for a closed quarter without reports.)"""

        def read() -> PublicationState:
            return publication_state(conn, LIVE.cycle, quarter.fiscal_year, quarter.quarter)

        if revision is None:
            return read()
        return self._publications.get(PublicationKey(quarter, revision), read).value

    def _updated(
        self, conn: Connection, snapshot: CatalogSnapshot, quarter: FiscalQuarter, revision: int
    ) -> QuarterData | None:
        """The quarter at `revision`, updated from the data of the revision just before by the measures the
        transaction between them touched; None when this reader does not hold that revision (or the store does
        not say what was touched: a rebuild's store)."""
        with self._latest_lock:
            latest = self._latest.get(quarter)
        if latest is None or latest.catalog_revision != snapshot.revision:
            return None
        if latest.revision == revision:
            return latest.data
        with self._latest_lock:
            seen = self._touched.get(quarter)
        if seen is not None and seen.revision == revision:
            found: revision_store.TouchedSince | None = seen.touched_since()
        else:
            found = revision_store.touched_since(conn, fiscal_year=quarter.fiscal_year, quarter=quarter.quarter)
        if found is None or found.revision != revision or found.since != latest.revision or found.measures is None:
            return None
        # Read after the revision was seen committed: these rows are at least as new as `revision` (a later
        # transaction's changes read early are read again when its own revision is applied).
        reports = repository.effective_for_measures(
            conn, fiscal_year=quarter.fiscal_year, quarter=quarter.quarter, measure_ids=found.measures
        )
        return quarter_data_updated(latest.data, snapshot.by_id, found.measures, reports)

    def _plan(
        self, state: StoreState, snapshot: CatalogSnapshot, datas: Mapping[FiscalQuarter, QuarterData]
    ) -> PlanStanding:
        """The plan's standing in `state`: the latest one updated by the measures whose standing or observations
        moved in some quarter since, or computed in full (another catalog, day or audience, other quarters)."""
        audience = state.closed is not None
        with self._latest_lock:
            latest = self._latest_plans.get(audience)
        plan: PlanStanding | None = None
        if (
            latest is not None
            and (latest.state.catalog_revision, latest.state.today, latest.state.closed)
            == (state.catalog_revision, state.today, state.closed)
            and latest.datas.keys() == datas.keys()
        ):
            changed: set[str] = set()
            for quarter, data in datas.items():
                changed |= changed_measures(latest.datas[quarter], data)
            plan = plan_updated(latest.plan, snapshot.measures, changed, datas.values(), state.today)
        if plan is None:
            plan = plan_standing(snapshot.measures, datas.values(), state.today)
        with self._latest_lock:
            self._latest_plans[audience] = LatestPlan(state, dict(datas), plan)
        return plan

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
