"""The rebuild's writer processes (`rebuild._bulk_phase`): decode batches of ACCEPTED payloads, bulk-insert their
events into the shadow store and keep the winning report of each (quarter, measure, agency) of their share.

Apart from `reporting.rebuild` so that a writer process imports only what it runs (the handlers and the
repository), not the NATS and FastStream side of the rebuild: each of the rebuild's writers starts in a fresh
interpreter, and their start-up is part of the rebuild's wall time.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy import Engine

from reporting import repository
from reporting.handlers import Admitted, additive, decode_admitted
from reporting.repository import Store
from reporting.tables import EffectiveRow, EventRow
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.heap import BATCH_THRESHOLDS

if TYPE_CHECKING:  # a type only: importing the pull module at run time would bring FastStream into the writers
    from shinchoku_runtime.pull import Payload

log = logging.getLogger(__name__)


#: Where a report stands in the effective ordering: (reported_at in microseconds, event_id), as
#: `domain.effective_order` orders reports.
Rank = tuple[int, str]
#: An effective report's key: (fiscal_year, quarter, measure_id, agency).
Key = tuple[int, int, str, str]


class EffectiveReports:
    """The effective report per (quarter, measure, agency) of everything added: greatest reported_at, then
    greatest event id (`domain.effective_order`, the ordering `repository.upsert_effective` applies in SQL)."""

    def __init__(self) -> None:
        self._best: dict[Key, tuple[Rank, EffectiveRow]] = {}

    def add(self, batch: list[Admitted]) -> None:
        best = self._best
        for admitted in batch:
            row = admitted.event_row
            key = (row.fiscal_year, row.quarter, row.measure_id, row.agency)
            rank = (row.reported_at_us, row.event_id)
            seen = best.get(key)
            if seen is None or rank > seen[0]:
                best[key] = (rank, admitted.effective_row())

    def rows(self) -> list[EffectiveRow]:
        return [row for _, row in self._best.values()]

    def ranked(self) -> list[tuple[Rank, EffectiveRow]]:
        """The winners with their rank, for `merge` (another writer's share of the stream)."""
        return list(self._best.values())

    def merge(self, ranked: list[tuple[Rank, EffectiveRow]]) -> None:
        """Add the winners of another share of the stream."""
        best = self._best
        for rank, row in ranked:
            key = (row.fiscal_year, row.quarter, row.measure_id, row.agency)
            seen = best.get(key)
            if seen is None or rank > seen[0]:
                best[key] = (rank, row)


class BulkWriter:
    """In a writer process of the bulk phase: decodes batches of (subject, payload), inserts their events and keeps
    the winners of its share, which `finish` hands back."""

    #: Its process's collector settings (`ChildPool` applies them): each batch is freed before the next.
    gc_thresholds = BATCH_THRESHOLDS

    def __init__(self, url: str, suffix: str, tag: str) -> None:
        from shinchoku_runtime.telemetry import init_logging

        init_logging("reporting")
        self._engine = repository.tune(make_engine(url))
        if self._engine.dialect.name == "sqlite":
            # Only the shadow tables are written here; a crash mid-rebuild discards them anyway, and the swap is
            # committed by the parent with full durability. So no fsync per bulk transaction.
            sa.event.listen(self._engine, "connect", _sqlite_normal_sync)
        self._store = repository.store_tables(suffix=suffix, tag=tag)
        self._winners = EffectiveReports()
        # Decoding and inserting in turn: an insert thread next to the decoding lost more to the GIL (sqlite
        # releases and takes it back for every row) than it won.
        self._decoding = self._inserting = 0.0  # where this process's time went, logged at the end
        self._idle_since = time.perf_counter()
        self._waited = 0.0

    def __call__(self, payloads: list[Payload]) -> None:
        started = time.perf_counter()
        self._waited += started - self._idle_since
        batch = _decode_payloads(payloads)
        self._winners.add(batch)
        decoded = time.perf_counter()
        _insert_batch(self._engine, self._store, batch)
        self._idle_since = time.perf_counter()
        self._decoding += decoded - started
        self._inserting += self._idle_since - decoded

    def finish(self) -> list[tuple[Rank, EffectiveRow]]:
        log.info(
            "writer: waited %.1fs for batches, decoded for %.1fs, inserted for %.1fs",
            self._waited,
            self._decoding,
            self._inserting,
        )
        self._engine.dispose()
        return self._winners.ranked()


def _decode_payloads(payloads: list[Payload]) -> list[Admitted]:
    out = []
    for subject, data in payloads:
        try:
            out.append(additive(decode_admitted, data)[0])  # a newer ingest's additive fields: left out
        except (ValidationError, ValueError) as e:
            shown = subject.decode("utf-8", "replace")
            log.error("ACCEPTED message on %s is not AdmittedEvent JSON, skipped: %s", shown, e)
    return out


def _sqlite_normal_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _insert_batch(engine: Engine, store: Store, batch: list[Admitted]) -> None:
    rows: dict[tuple[str, str], EventRow] = {}
    for admitted in batch:
        rows.setdefault(admitted.key, admitted.event_row)
    with engine.begin() as conn:
        repository.insert_events(conn, store=store, rows=list(rows.values()))
