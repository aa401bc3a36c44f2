"""Rollup queries: what the HTTP API and the dashboard read (JSON-ready documents, binding shapes).

Rollups are computed from the small `effective_reports` table and the in-memory catalog, never from the
events table, so answering does not depend on how many events are stored; a quarter's computed view is
cached until the quarter, its predecessor, any other quarter (for the latest status of targets) or the
catalog changes, or the day turns. `as_of` views are computed from the events admitted by that moment.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine

from contracts.agencies import Agency
from contracts.catalog import SECTION_TITLES, Measure
from contracts.periods import TOKYO, FiscalQuarter
from reporting import repository
from reporting.domain import (
    ROLLUP_STATUSES,
    LeadReport,
    LeadStanding,
    MeasureStanding,
    QuarterRollup,
    Tally,
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
from shinchoku_runtime.http import BadRequest, NotFound, Unavailable

# Every fiscal year the v1 contract admits can be served: an admitted report must never be unviewable.
MIN_FISCAL_YEAR = 1900
MAX_FISCAL_YEAR = 9998
_CACHE_SIZE = 512
#: Documents read this recently (s) are recomputed in the background when the store changes (`warm`).
WARM_WINDOW = 300.0
#: At most this many recently read documents are kept warm.
WARM_MAX = 16

Document = dict[str, Any]


def fiscal_quarter(fiscal_year: int, quarter: int) -> FiscalQuarter:
    """The quarter a path names, or a 400 that says what is wrong."""
    check_fiscal_year(fiscal_year)
    if not 1 <= quarter <= 4:
        raise BadRequest(f"quarter must be 1, 2, 3 or 4, not {quarter}")
    return FiscalQuarter(fiscal_year, quarter)


def check_fiscal_year(fiscal_year: int) -> int:
    if not MIN_FISCAL_YEAR <= fiscal_year <= MAX_FISCAL_YEAR:
        raise BadRequest(f"fiscal year must be between {MIN_FISCAL_YEAR} and {MAX_FISCAL_YEAR}, not {fiscal_year}")
    return fiscal_year


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class QuarterView:
    """Everything computed for one quarter: rollup, trend, and the cross-quarter progress of each measure."""

    rollup: QuarterRollup
    trend: Trend
    progress: Mapping[str, MeasureProgress]
    today: date
    as_of: datetime | None
    #: The targets' summary, when it was computed once for every quarter's view (else by `rollup_document`).
    targets: TargetSummary | None = None


def _by_measure(reports: Iterable[LeadReport]) -> dict[str, dict[str, LeadReport]]:
    grouped: dict[str, dict[str, LeadReport]] = defaultdict(dict)
    for report in reports:
        grouped[report.measure_id][report.agency] = report
    return grouped


@dataclass(frozen=True)
class QuarterData:
    """One quarter as its effective reports make it: the rollup, and the KPI observations its reports carry."""

    rollup: QuarterRollup
    observations: dict[str, dict[int, Observation]]


def quarter_data(quarter: FiscalQuarter, measures: Sequence[Measure], reports: Sequence[LeadReport]) -> QuarterData:
    return QuarterData(rollup_quarter(quarter, measures, _by_measure(reports)), latest_observations(measures, reports))


class RollupQueries:
    """The read side of the reporting store. Thread-safe; the HTTP routes and the dashboard share one."""

    def __init__(
        self,
        engine: Engine,
        catalog: CatalogView,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._engine = engine
        self._catalog = catalog
        self._clock = clock or (lambda: datetime.now(TOKYO))
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        #: Documents being computed, each by one thread: others asking for the same one wait for it.
        self._flights: dict[tuple[Any, ...], threading.Event] = {}
        #: (kind, quarter) of the current documents read lately → (when, how to build it), for `warm`.
        self._recent: OrderedDict[tuple[str, FiscalQuarter], tuple[float, Callable[[QuarterView], Any]]] = OrderedDict()
        #: The state of the store and the documents the last warm-up left computed.
        self._warmed: tuple[Any, ...] | None = None

    # --- public API ---------------------------------------------------------------------------

    def catalog(self) -> CatalogSnapshot:
        """The catalog snapshot, or 503 while it has not been loaded."""
        snapshot = self._catalog.snapshot
        if not snapshot.loaded:
            raise Unavailable("the catalog has not been loaded yet; try again in a few seconds")
        return snapshot

    def rollup(self, quarter: FiscalQuarter, *, as_of: datetime | None = None) -> Document:
        """`GET /rollups/{fy}/{q}`: counts government-wide, per agency and per section, with the trend."""
        doc: Document = self._cached_document("rollup", quarter, as_of, rollup_document)
        return doc

    def rollup_json(self, quarter: FiscalQuarter, *, as_of: datetime | None = None) -> bytes:
        """The rollup document already serialised (cached): the fast path of the HTTP route."""
        body: bytes = self._cached_document("rollup-json", quarter, as_of, lambda v: _dumps(rollup_document(v)))
        return body

    def measures(
        self,
        quarter: FiscalQuarter,
        *,
        agency: Agency | str | None = None,
        section: int | None = None,
        status: str | None = None,
        as_of: datetime | None = None,
    ) -> list[Document]:
        """`GET /rollups/{fy}/{q}/measures`: one item per measure in document order, filtered.

        `status` matches the combined status, or the agency's own status when `agency` is given (so that a
        list drills down from the `by_agency` counts).
        """
        if agency is not None:
            agency = _check_agency(agency)
        if section is not None and not 1 <= section <= 6:
            raise BadRequest(f"section must be 1–6, not {section}")
        if status is not None and status not in ROLLUP_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(ROLLUP_STATUSES)}, not {status!r}")
        items: list[Document] = self._cached_document("measures", quarter, as_of, measure_documents)
        out = []
        for item in items:
            if section is not None and item["section"] != section:
                continue
            if agency is not None:
                lead = next((x for x in item["leads"] if x["agency"] == agency), None)
                if lead is None:
                    continue
                if status is not None and lead["status"] != status:
                    continue
                out.append({**item, "agency_status": lead["status"]})
                continue
            if status is not None and item["status"] != status:
                continue
            out.append(item)
        return out

    def year(self, fiscal_year: int, *, as_of: datetime | None = None) -> Document:
        """`GET /rollups/{fy}`: the four quarters' rollups of a fiscal year."""
        check_fiscal_year(fiscal_year)
        quarters = [FiscalQuarter(fiscal_year, q) for q in (1, 2, 3, 4)]
        now = self._clock()
        return {
            "fiscal_year": fiscal_year,
            "period_start": quarters[0].start.isoformat(),
            "period_end": quarters[-1].end.isoformat(),
            "as_of": as_of.isoformat() if as_of else None,
            "quarters": [{**self.rollup(q, as_of=as_of), "has_started": q.has_started(as_of or now)} for q in quarters],
        }

    def history(self, measure_id: str) -> Document:
        """`GET /measures/{id}/history`: the measure in every quarter any lead reported on, oldest first."""
        snapshot = self.catalog()
        measure = snapshot.by_id.get(measure_id)
        if measure is None:
            raise NotFound(f"no measure {measure_id!r} in the catalog")
        with self._engine.connect() as conn:
            reports = repository.effective_for_measure(conn, measure_id=measure_id)
        leads = {str(a) for a in measure.lead_agencies}
        by_quarter: dict[FiscalQuarter, dict[str, LeadReport]] = defaultdict(dict)
        for report in reports:
            if report.agency in leads:
                by_quarter[report.fiscal_quarter][report.agency] = report
        items = []
        previous: str | None = None
        for quarter in sorted(by_quarter):
            standing = measure_standing(measure, by_quarter[quarter])
            items.append(
                {
                    **_quarter_fields(quarter),
                    **_standing_fields(standing),
                    "movement": movement(previous, standing.status) if previous else None,
                }
            )
            previous = standing.status
        progress = measure_progress(measure, reports)
        today = self._clock().astimezone(TOKYO).date()
        fields = _progress_fields(measure, progress, today)
        return {
            **_measure_fields(measure),
            "lead_agencies": [str(a) for a in measure.lead_agencies],
            **fields,
            "measure": {
                **measure.model_dump(mode="json", exclude={"targets"}),
                "targets": fields["targets"],
            },
            "items": items,
            "total": len(items),
        }

    # --- computing and caching ----------------------------------------------------------------

    def warm(self) -> int:
        """Recompute the documents read lately that a change to the store or the catalog made stale.

        Called in the background after the store changed, so that the next reader finds the document ready
        (or, if it asks while this computes, waits for this computation instead of starting its own).
        Returns how many documents were computed.
        """
        horizon = time.monotonic() - WARM_WINDOW
        with self._lock:
            for key in [k for k, (seen, _) in self._recent.items() if seen < horizon]:
                del self._recent[key]
            # The document read last first: the likeliest to be read again next.
            wanted = [(kind, quarter, build) for (kind, quarter), (_, build) in reversed(self._recent.items())]
        try:
            state = self._state(None)
        except Unavailable:  # the catalog is not loaded yet: nothing to warm
            return 0
        signature = (state[0], state[1].revision, state[2], tuple((kind, quarter) for kind, quarter, _ in wanted))
        if signature == self._warmed:  # nothing changed since the last warm-up: not even a key to read
            return 0
        computed = 0
        for kind, quarter, build in wanted:
            try:
                _, fresh = self._document(kind, quarter, None, build)
            except Unavailable:
                return computed
            computed += fresh
        self._warmed = signature
        return computed

    def _cached_document(
        self, kind: str, quarter: FiscalQuarter, as_of: datetime | None, build: Callable[[QuarterView], Any]
    ) -> Any:
        if as_of is None:
            with self._lock:
                self._recent[kind, quarter] = (time.monotonic(), build)
                self._recent.move_to_end((kind, quarter))
                while len(self._recent) > WARM_MAX:
                    self._recent.popitem(last=False)
        doc, _ = self._document(kind, quarter, as_of, build)
        return doc

    def _document(
        self, kind: str, quarter: FiscalQuarter, as_of: datetime | None, build: Callable[[QuarterView], Any]
    ) -> tuple[Any, bool]:
        """(the document, whether this call computed it): from the cache, or computed once however many ask."""
        key, snapshot = self._view_key(quarter, as_of)
        return self._once((kind, *key), lambda: build(self._view(quarter, as_of, key, snapshot)))

    def _once(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(the value cached under `key`, whether this call computed it). However many threads ask for the
        same key at once, one computes it and the others wait for it (a warm-up and a reader, two readers)."""
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key], False
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = threading.Event()
                    break
            # Another thread computes this very value: wait for it, then read it from the cache (or, if that
            # thread failed, or the value was evicted meanwhile, compute it here).
            flight.wait(timeout=30)
        try:
            value = compute()
            self._remember(key, value)
            return value, True
        finally:
            with self._lock:
                del self._flights[key]
            flight.set()

    def _remember(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _state(self, as_of: datetime | None) -> tuple[tuple[Any, ...], CatalogSnapshot, date]:
        """What every view depends on: each quarter's revision, the catalog, and the day."""
        snapshot = self.catalog()
        today = (as_of or self._clock()).astimezone(TOKYO).date()
        with self._engine.connect() as conn:
            revisions = repository.revisions(conn)
        return tuple(sorted(revisions.items())), snapshot, today

    def _view_key(self, quarter: FiscalQuarter, as_of: datetime | None) -> tuple[tuple[Any, ...], CatalogSnapshot]:
        """The cache key of a quarter's view, and the catalog it is computed with."""
        everything, snapshot, today = self._state(as_of)
        return ("view", quarter, as_of, everything, snapshot.revision, today), snapshot

    def _view(
        self, quarter: FiscalQuarter, as_of: datetime | None, key: tuple[Any, ...], snapshot: CatalogSnapshot
    ) -> QuarterView:
        """The view `key` names (from `_view_key`), from the cache or computed."""
        view: QuarterView = self._once(key, lambda: self._compute_view(quarter, as_of, key, snapshot))[0]
        return view

    def _compute_view(
        self, quarter: FiscalQuarter, as_of: datetime | None, key: tuple[Any, ...], snapshot: CatalogSnapshot
    ) -> QuarterView:
        previous = quarter.previous()
        today: date = key[5]
        everything = key[3]
        with self._engine.connect() as conn:
            if as_of is None:
                # Each quarter's data is cached under its own revision: a new event costs one quarter's reload.
                datas = {
                    q: self._quarter_data(conn, snapshot, q, revision)
                    for q, revision in ((FiscalQuarter(fy, n), rev) for (fy, n), rev in everything)
                }
                this = datas.get(quarter) or self._quarter_data(conn, snapshot, quarter, None)
                last = datas.get(previous) or self._quarter_data(conn, snapshot, previous, None)
            else:
                known = repository.effective_as_of(conn, as_of=as_of)
                grouped: dict[FiscalQuarter, list[LeadReport]] = defaultdict(list)
                for report in known:
                    grouped[report.fiscal_quarter].append(report)
                datas = {q: quarter_data(q, snapshot.measures, reports) for q, reports in grouped.items()}
                this = datas.get(quarter) or quarter_data(quarter, snapshot.measures, [])
                last = datas.get(previous) or quarter_data(previous, snapshot.measures, [])

        def progress() -> dict[str, MeasureProgress]:
            return progress_from_rollups(
                snapshot.measures, (d.rollup for d in datas.values()), (d.observations for d in datas.values())
            )

        summary: TargetSummary | None = None
        if as_of is None:  # the same for every quarter's view of this state of the store: computed once
            plan_progress = self._once(("progress", everything, snapshot.revision), progress)[0]
            summary = self._once(
                ("targets", everything, snapshot.revision, today),
                lambda: target_summary(snapshot.measures, plan_progress, today),
            )[0]
        else:
            plan_progress = progress()
        return QuarterView(this.rollup, trend(this.rollup, last.rollup), plan_progress, today, as_of, summary)

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

        data: QuarterData = self._once(("quarter", quarter, revision, snapshot.revision), compute)[0]
        return data


def _check_agency(agency: Agency | str) -> str:
    try:
        return Agency(agency).value
    except ValueError:
        raise BadRequest(f"unknown agency {agency!r}; agencies are {', '.join(a.value for a in Agency)}") from None


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


# --- documents ---------------------------------------------------------------------------------


def _quarter_fields(quarter: FiscalQuarter) -> Document:
    return {
        "fiscal_year": quarter.fiscal_year,
        "quarter": quarter.quarter,
        "label": quarter.label,
        "period_start": quarter.start.isoformat(),
        "period_end": quarter.end.isoformat(),
    }


def tally_document(tally: Tally) -> Document:
    return {
        "measures_total": tally.measures_total,
        "reported": tally.reported,
        "coverage": tally.coverage,
        "on_time": tally.on_time,
        "on_time_rate": tally.on_time_rate,
        "by_status": dict(tally.by_status),
    }


def rollup_document(view: QuarterView) -> Document:
    rollup = view.rollup
    quarter = rollup.quarter
    previous = view.trend.previous
    targets = view.targets or target_summary((s.measure for s in rollup.measures), view.progress, view.today)
    overdue = targets.overdue
    return {
        **_quarter_fields(quarter),
        "on_time_deadline": quarter.on_time_deadline.isoformat(),
        **tally_document(rollup.overall),
        "by_agency": {
            agency.value: {
                **tally_document(rollup.by_agency[agency.value]),
                "overdue_targets": targets.overdue_by_agency.get(agency.value, 0),
            }
            for agency in Agency
        },
        "by_section": {
            str(n): {
                **tally_document(t),
                "title": SECTION_TITLES.get(n, ""),
                "overdue_targets": targets.overdue_by_section.get(n, 0),
            }
            for n, t in sorted(rollup.by_section.items())
        },
        "previous": {**_quarter_fields(previous.quarter), **tally_document(previous.overall)},
        "moved_worse": list(view.trend.moved_worse),
        "moved_better": list(view.trend.moved_better),
        "overdue_targets": overdue,
        "targets": {
            "total": targets.total,
            "overdue": overdue,
            "measures_with_overdue": targets.measures_overdue,
            "ratings": dict(targets.ratings),
            "reference_date": view.today.isoformat(),
        },
        "as_of": view.as_of.isoformat() if view.as_of else None,
    }


def _measure_fields(measure: Measure) -> Document:
    return {
        "measure_id": measure.id,
        "section": measure.section,
        "section_title": measure.section_title,
        "title": measure.title,
    }


def _lead_document(lead: LeadStanding) -> Document:
    report = lead.report
    if report is None:
        return {
            "agency": lead.agency,
            "status": lead.status,
            "event_id": None,
            "reported_at": None,
            "on_time": None,
            "progress": None,
            "kpis": [],
            "note": None,
            "reporter": None,
        }
    return {
        "agency": lead.agency,
        "status": report.status,
        "event_id": report.event_id,
        "reported_at": report.reported_at.isoformat(),
        "on_time": report.on_time,
        "progress": report.progress,
        "kpis": [{"target": k.target, "value": k.value, "as_of": k.as_of.isoformat()} for k in report.kpis],
        "note": report.note,
        "reporter": report.reporter,
    }


def _standing_fields(standing: MeasureStanding) -> Document:
    return {
        "status": standing.status,
        "reported": standing.reported,
        "on_time": standing.on_time,
        "leads": [_lead_document(lead) for lead in standing.leads],
        "event_ids": list(standing.event_ids),
    }


def _progress_fields(measure: Measure, progress: MeasureProgress, today: date) -> Document:
    targets = target_standings(measure, progress, today)
    return {
        "latest_status": progress.latest_status,
        "latest_quarter": progress.latest_quarter.label if progress.latest_quarter else None,
        "targets": [
            {
                **t.target.model_dump(mode="json"),
                "overdue": t.overdue,
                "rating": t.rating.rating,
                "rating_reason": t.rating.reason,
                "progress": t.rating.progress,
                "elapsed_share": t.rating.elapsed_share,
                "observed": t.observation.value if t.observation else None,
                "observed_as_of": t.observation.as_of.isoformat() if t.observation else None,
                "observation": None
                if t.observation is None
                else {
                    "value": t.observation.value,
                    "as_of": t.observation.as_of.isoformat(),
                    "agency": t.observation.agency,
                    "event_id": t.observation.event_id,
                    "reported_at": t.observation.reported_at.isoformat(),
                },
            }
            for t in targets
        ],
        "overdue_targets": sum(1 for t in targets if t.overdue),
    }


def measure_documents(view: QuarterView) -> list[Document]:
    previous = {s.measure.id: s.status for s in view.trend.previous.measures}
    items = []
    for standing in view.rollup.measures:
        measure = standing.measure
        before = previous.get(measure.id)
        items.append(
            {
                **_measure_fields(measure),
                **_standing_fields(standing),
                "previous_status": before,
                "movement": movement(before, standing.status) if before is not None else None,
                **_progress_fields(measure, view.progress[measure.id], view.today),
            }
        )
    return items
