"""Rollup queries: the documents the HTTP routes answer (the dashboard reads them through those routes).

`RollupQueries` ties the parts together: quarter views computed from the store (`reporting.views`), documents
built from them as the response models declare (`reporting.documents`), each document cached per state of the
store by a single-flight cache (`reporting.cache`), and the documents read lately recomputed as soon as the
store changes (`warm`, scheduled by `reporting.warmup`). Input is validated by the routes (`reporting.api`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import Engine

from contracts.cycle import canonical_json
from contracts.periods import FiscalQuarter
from reporting.cache import Cached, SingleFlightCache
from reporting.cycle import publications
from reporting.documents import document_json, history_document, measure_documents, rollup_document, year_document
from reporting.registry import CatalogSnapshot, CatalogView
from reporting.schemas import HistoryOut, MeasureItemOut, RevisionOut, RevisionsOut, RollupOut, YearOut
from reporting.views import QuarterView, QuarterViews, StoreState, ViewKey
from reporting.warmup import Read, RecentReads
from shinchoku_runtime.http import NotFound, Unavailable

#: Documents read this recently (s) are recomputed in the background when the store changes (`warm`).
WARM_WINDOW = 300.0
#: At most this many recently read documents are kept warm.
WARM_MAX = 16
#: Documents of each kind cached (one per quarter, moment and state of the store).
DOCUMENTS_CACHED = 256

D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Warmed:
    """The state of the store and the documents the last warm-up left computed (none to recompute until either
    changes)."""

    state: StoreState
    reads: tuple[Read, ...]


class DocumentKind(Generic[D]):
    """One kind of document built from a quarter's view, and the documents of that kind built lately (per view)."""

    def __init__(self, name: str, build: Callable[[QuarterView], D]) -> None:
        self.name = name
        self.build = build
        self.cache: SingleFlightCache[ViewKey, D] = SingleFlightCache(DOCUMENTS_CACHED)
        #: The latest document built of each quarter's view as known now (per audience): a new state of the store
        #: that leaves the view as it was (`QuarterViews` returns the same object) reuses it.
        self._lock = threading.Lock()
        self._latest: dict[tuple[FiscalQuarter, bool], tuple[QuarterView, D]] = {}

    def of(self, view: QuarterView, *, public: bool) -> D:
        """The document of `view`: the one built of this very view if it is the latest, else built now."""
        if view.as_of is not None:
            return self.build(view)
        slot = (view.rollup.quarter, public)
        with self._lock:
            latest = self._latest.get(slot)
        if latest is not None and latest[0] is view:
            return latest[1]
        document = self.build(view)
        with self._lock:
            self._latest[slot] = (view, document)
        return document


class RollupQueries:
    """The read side of the reporting store. Thread-safe; the HTTP routes (and through them the dashboard) share one."""

    def __init__(self, engine: Engine, catalog: CatalogView, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._views = QuarterViews(engine, catalog, clock=clock)
        # The builders are looked up when they run (so that a test can count them).
        self._rollup = DocumentKind("rollup", lambda view: rollup_document(view))
        self._rollup_json = DocumentKind("rollup-json", lambda view: document_json(rollup_document(view)))
        self._measures = DocumentKind("measures", lambda view: tuple(measure_documents(view)))
        self._recent = RecentReads(most=WARM_MAX)
        self._warmed: Warmed | None = None

    def catalog(self) -> CatalogSnapshot:
        """The catalog snapshot, or 503 while it has not been loaded."""
        return self._views.catalog()

    def rollup(self, quarter: FiscalQuarter, *, as_of: datetime | None = None, public: bool = False) -> RollupOut:
        """`GET /rollups/{fy}/{q}`: counts government-wide, per agency and per section, with the trend.

        `public` (on every document): the public's view, computed from the closed quarters' reports only
        (`QuarterViews.state`), cached apart from the live view agencies and the secretariat read."""
        return self._document(self._rollup, quarter, as_of, public)

    def rollup_json(self, quarter: FiscalQuarter, *, as_of: datetime | None = None, public: bool = False) -> bytes:
        """The rollup document already serialised (cached): the fast path of the HTTP route."""
        return self._document(self._rollup_json, quarter, as_of, public)

    def measures(
        self,
        quarter: FiscalQuarter,
        *,
        agency: str | None = None,
        section: int | None = None,
        status: str | None = None,
        as_of: datetime | None = None,
        public: bool = False,
    ) -> list[MeasureItemOut]:
        """`GET /rollups/{fy}/{q}/measures`: one item per measure in document order, filtered.

        `status` matches the combined status, or the agency's own status when `agency` is given (so that a
        list drills down from the `by_agency` counts); under an agency, each item says that status.
        """
        out = []
        for item in self._document(self._measures, quarter, as_of, public):
            if section is not None and item.section != section:
                continue
            if agency is not None:
                lead = next((x for x in item.leads if x.agency == agency), None)
                if lead is None or (status is not None and lead.status != status):
                    continue
                out.append(item.model_copy(update={"agency_status": lead.status}))
                continue
            if status is not None and item.status != status:
                continue
            out.append(item)
        return out

    def year(self, fiscal_year: int, *, as_of: datetime | None = None, public: bool = False) -> YearOut:
        """`GET /rollups/{fy}`: the four quarters' rollups of a fiscal year."""
        quarters = [FiscalQuarter(fiscal_year, q) for q in (1, 2, 3, 4)]
        now = as_of or self._views.now()
        rollups = [(self.rollup(q, as_of=as_of, public=public), q.has_started(now)) for q in quarters]
        return year_document(fiscal_year, rollups, as_of)

    def history(self, measure_id: str, *, public: bool = False) -> HistoryOut:
        """`GET /measures/{id}/history`: the measure in every quarter any lead reported on, oldest first."""
        measure = self.catalog().by_id.get(measure_id)
        if measure is None:
            raise NotFound(f"no measure {measure_id!r} in the catalog")
        return history_document(self._views.history(measure, public=public))

    def is_closed(self, fiscal_year: int, quarter: int) -> bool:
        """Whether the secretariat has closed the quarter (its admitted close is in the store)."""
        return self._views.is_closed(fiscal_year, quarter)

    def closed_quarters(self) -> list[FiscalQuarter]:
        """Every closed quarter, oldest first."""
        return self._views.closed_quarters()

    def revision_json(self, quarter: FiscalQuarter, number: int) -> bytes:
        """`GET /rollups/{fy}/{q}?revision=N`: published revision N's document exactly (its canonical JSON)."""
        found = publications.revision(
            self._engine, self.catalog().measures, quarter.fiscal_year, quarter.quarter, number
        )
        if found is None:
            raise NotFound(f"{quarter.label} has no published revision {number}")
        return canonical_json(found.document)

    def revisions(self, quarter: FiscalQuarter) -> RevisionsOut:
        """`GET /rollups/{fy}/{q}/revisions`: every published revision of the quarter, oldest first."""
        measures = self.catalog().measures
        items = []
        for number in publications.revision_numbers(self._engine, quarter.fiscal_year, quarter.quarter):
            found = publications.revision(self._engine, measures, quarter.fiscal_year, quarter.quarter, number)
            if found is None:
                continue
            items.append(
                RevisionOut(
                    revision=number,
                    published_at=found.document.published_at.isoformat() if found.document.published_at else "",
                    restated_at=found.document.restated_at.isoformat() if found.document.restated_at else None,
                    sha256=found.sha256,
                    changes=found.changes,
                    by_status=dict(found.document.by_status),
                )
            )
        return RevisionsOut(fiscal_year=quarter.fiscal_year, quarter=quarter.quarter, items=items, total=len(items))

    # --- caching and warming -------------------------------------------------------------------

    def warm(self) -> int:
        """Recompute the documents read lately that a change to the store or the catalog made stale.

        Called in the background after the store changed, so that the next reader finds the document ready
        (or, if it asks while this computes, waits for this computation instead of starting its own).
        Returns how many documents were computed.
        """
        due = self._recent.within(WARM_WINDOW)
        try:
            state, _ = self._views.state()
        except Unavailable:  # the catalog is not loaded yet: nothing to warm
            return 0
        mark = Warmed(state, tuple(read for read, _ in due))
        if mark == self._warmed:  # nothing changed since the last warm-up: not even a key to read
            return 0
        computed = 0
        for _, refresh in due:
            try:
                computed += refresh()
            except Unavailable:
                return computed
        self._warmed = mark
        return computed

    def _document(
        self, kind: DocumentKind[D], quarter: FiscalQuarter, as_of: datetime | None, public: bool = False
    ) -> D:
        if as_of is None:
            read = Read(kind.name, quarter, public)
            self._recent.read(read, lambda: self._cached(kind, quarter, None, public).computed)
        return self._cached(kind, quarter, as_of, public).value

    def _cached(
        self, kind: DocumentKind[D], quarter: FiscalQuarter, as_of: datetime | None, public: bool = False
    ) -> Cached[D]:
        """The document of `quarter` in the store's current state (the public's view, with `public`): cached, or
        built from its view once (the key names the audience, so the two views are cached apart)."""
        key, snapshot = self._views.key(quarter, as_of, public=public)
        return kind.cache.get(key, lambda: kind.of(self._views.view(key, snapshot), public=public))
