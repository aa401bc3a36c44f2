"""All SQL of the reporting store (SQLAlchemy Core: every table here is on a hot path).

The store holds three tables:

- `events`: the reporting store's own copy of every admitted event, unique on `event_id`;
- `effective_reports`: the effective report per (quarter, measure, agency), derived from `events`;
- `quarter_revisions`: bookkeeping, not content: a counter per quarter bumped by every transaction that
  touches the quarter, so that readers can cache a quarter's rollup until it changes.

The tables are built by a factory so that `rebuild` can fill a shadow copy under other names and swap it
in; constraint and index names carry a tag because PostgreSQL keeps them unique per schema.
Timestamps are stored as integer microseconds since the epoch (exact ordering on both databases) next to
the RFC 3339 text as reported (keeping the reporter's offset).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from reporting.domain import KpiReading, LeadReport
from shinchoku_runtime.db import ColumnArrays, serialize_schema_changes, size_sqlite_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

#: Canonical UUID text compared byte-wise on both databases (PostgreSQL's default collation may not).
_EVENT_ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")

LIVE_SUFFIX = ""
SHADOW_SUFFIX = "__rebuild"
OLD_SUFFIX = "__old"


def to_micros(moment: datetime) -> int:
    """Exact microseconds since the epoch of an aware moment (integer arithmetic, no float rounding)."""
    if moment.tzinfo is None:
        raise ValueError("a moment needs a UTC offset")
    since = moment - _EPOCH
    return (since.days * 86400 + since.seconds) * 1_000_000 + since.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class Store:
    """One set of the store's tables (the live one, or a shadow being rebuilt)."""

    metadata: sa.MetaData
    events: sa.Table
    effective: sa.Table
    revisions: sa.Table
    #: Indexes created after a bulk load rather than with the tables.
    late_indexes: tuple[sa.Index, ...]
    suffix: str = LIVE_SUFFIX
    tag: str = ""

    @property
    def tables(self) -> tuple[sa.Table, ...]:
        return (self.events, self.effective, self.revisions)


def store_tables(*, suffix: str = LIVE_SUFFIX, tag: str = "") -> Store:
    """The store's tables named `events{suffix}` etc., with constraint and index names ending in `tag`."""
    metadata = sa.MetaData()
    events = sa.Table(
        f"events{suffix}",
        metadata,
        sa.Column("event_id", _EVENT_ID, nullable=False),
        sa.Column("measure_id", sa.String(16), nullable=False),
        sa.Column("agency", sa.String(16), nullable=False),
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reported_at_us", sa.BigInteger, nullable=False),
        sa.Column("reported_at", sa.String(40), nullable=False),
        sa.Column("on_time", sa.Boolean, nullable=False),
        sa.Column("admitted_at_us", sa.BigInteger, nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("kpis", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("reporter", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=f"pk_events{tag}"),
    )
    effective = sa.Table(
        f"effective_reports{suffix}",
        metadata,
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("measure_id", sa.String(16), nullable=False),
        sa.Column("agency", sa.String(16), nullable=False),
        sa.Column("event_id", _EVENT_ID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reported_at_us", sa.BigInteger, nullable=False),
        sa.Column("reported_at", sa.String(40), nullable=False),
        sa.Column("on_time", sa.Boolean, nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("kpis", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("reporter", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("fiscal_year", "quarter", "measure_id", "agency", name=f"pk_effective_reports{tag}"),
    )
    revisions = sa.Table(
        f"quarter_revisions{suffix}",
        metadata,
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("last_admitted_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("fiscal_year", "quarter", name=f"pk_quarter_revisions{tag}"),
    )
    late = (
        sa.Index(f"ix_events_quarter_admitted{tag}", events.c.fiscal_year, events.c.quarter, events.c.admitted_at_us),
        sa.Index(f"ix_effective_reports_measure{tag}", effective.c.measure_id),
    )
    return Store(metadata, events, effective, revisions, late, suffix, tag)


LIVE = store_tables()


#: SQLite page cache per connection (KiB when negative) and memory-mapped reads: the `events` primary key is
#: a random UUID, so inserts touch pages all over its index; with SQLite's default 2 MB cache each insert into
#: a store of a million events went to the file for them.
SQLITE_CACHE_KIB = 131_072
SQLITE_MMAP_BYTES = 512 * 1024 * 1024


def tune(engine: Engine) -> Engine:
    """Give a SQLite engine a page cache and memory-mapped reads sized for the store (no-op on PostgreSQL)."""
    return size_sqlite_cache(engine, cache_kib=SQLITE_CACHE_KIB, mmap_bytes=SQLITE_MMAP_BYTES)


def create_store(engine: Engine, *, store: Store = LIVE, with_indexes: bool = True) -> None:
    """Create the tables that do not exist yet (and their indexes)."""
    with engine.begin() as conn:
        serialize_schema_changes(conn, "reporting")
        existing = set(sa.inspect(conn).get_table_names())
        for table in store.tables:
            if table.name not in existing:
                conn.execute(CreateTable(table))  # without its indexes: those follow, now or after a bulk load
                if with_indexes:
                    for index in store.late_indexes:
                        if index.table is table:
                            index.create(conn)


def create_late_indexes(conn: Connection, *, store: Store) -> None:
    for index in store.late_indexes:
        index.create(conn)


def drop_tables(conn: Connection, *, suffix: str) -> None:
    """Drop the store's tables named with `suffix` (a leftover shadow or old copy), if they exist."""
    existing = set(sa.inspect(conn).get_table_names())
    for base in ("events", "effective_reports", "quarter_revisions"):
        name = f"{base}{suffix}"
        if name in existing:
            conn.execute(sa.text(f'DROP TABLE "{name}"'))


def rename_tables(conn: Connection, *, from_suffix: str, to_suffix: str) -> None:
    for base in ("events", "effective_reports", "quarter_revisions"):
        conn.execute(sa.text(f'ALTER TABLE "{base}{from_suffix}" RENAME TO "{base}{to_suffix}"'))


def lock_for_swap(conn: Connection) -> None:
    """Block writers of the live store until the transaction ends (readers go on)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("LOCK TABLE events, effective_reports, quarter_revisions IN EXCLUSIVE MODE"))
    else:
        # Any write statement takes SQLite's database-wide write lock for the rest of the transaction.
        conn.execute(sa.text("UPDATE quarter_revisions SET revision = revision WHERE 1 = 0"))


# --- Writing ---------------------------------------------------------------------------------


#: The columns an effective report copies from its event (besides its key).
EFFECTIVE_VALUES = (
    "event_id",
    "status",
    "reported_at_us",
    "reported_at",
    "on_time",
    "progress",
    "kpis",
    "note",
    "reporter",
)
EFFECTIVE_COLUMNS = ("fiscal_year", "quarter", "measure_id", "agency", *EFFECTIVE_VALUES)


def _insert(conn: Connection, table: sa.Table) -> Any:
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


#: What `json.dumps(…, separators=(",", ":"))` builds on every call, built once (the same output).
_KPIS_ENCODER = json.JSONEncoder(separators=(",", ":"))


def kpis_json(kpis: Sequence[KpiReading]) -> str | None:
    if not kpis:
        return None
    return _KPIS_ENCODER.encode([{"target": k.target, "value": k.value, "as_of": k.as_of.isoformat()} for k in kpis])


def parse_kpis(text: str | None) -> tuple[KpiReading, ...]:
    if not text:
        return ()
    return tuple(
        KpiReading(int(k["target"]), float(k["value"]), date.fromisoformat(k["as_of"])) for k in json.loads(text)
    )


#: The columns of an `events` row, in the order `insert_events` takes them.
EVENT_COLUMNS = (
    "event_id",
    "measure_id",
    "agency",
    "fiscal_year",
    "quarter",
    "status",
    "reported_at_us",
    "reported_at",
    "on_time",
    "admitted_at_us",
    "subject",
    "progress",
    "kpis",
    "note",
    "reporter",
)
#: Where each of EFFECTIVE_COLUMNS sits in an `events` row.
EFFECTIVE_FROM_EVENT = tuple(EVENT_COLUMNS.index(name) for name in EFFECTIVE_COLUMNS)


def _placeholders(conn: Connection, count: int) -> str:
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * count)


_COLUMN_ARRAYS: dict[tuple[str, str], ColumnArrays] = {}


def _column_arrays(table: sa.Table, columns: Sequence[str], conflict: str) -> ColumnArrays:
    """PostgreSQL: a batch as one statement of column arrays (`ColumnArrays`), built once per table and clause."""
    key = (table.name, conflict)
    found = _COLUMN_ARRAYS.get(key)
    if found is None:
        found = _COLUMN_ARRAYS[key] = ColumnArrays(table, columns, conflict=conflict)
    return found


def insert_events(conn: Connection, *, store: Store, rows: Sequence[Sequence[Any]]) -> None:
    """Insert `events` rows (tuples in EVENT_COLUMNS order); an event id already stored keeps its first copy.

    SQLite: one executemany of a plain statement (SQLAlchemy's per-row parameter processing costs more than
    the insert itself on this path). PostgreSQL: one statement of column arrays (`ColumnArrays`).
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _column_arrays(store.events, EVENT_COLUMNS, "ON CONFLICT (event_id) DO NOTHING").insert(conn, rows)
        return
    sql = (
        f'INSERT INTO "{store.events.name}" ({", ".join(EVENT_COLUMNS)}) '
        f"VALUES ({_placeholders(conn, len(EVENT_COLUMNS))}) ON CONFLICT (event_id) DO NOTHING"
    )
    conn.exec_driver_sql(sql, list(rows))


_effective_key = operator.itemgetter(0, 1, 2, 3)


def upsert_effective(conn: Connection, *, store: Store, rows: Sequence[Sequence[Any]]) -> None:
    """Make each row (a tuple in EFFECTIVE_COLUMNS order) the effective report of its key, unless the stored
    one wins the ordering (greater reported_at, then greater event_id).

    The rows must have distinct keys. Sorted by key so that concurrent writers lock rows in one order.
    """
    if not rows:
        return
    table = f'"{store.effective.name}"'
    updates = ", ".join(f"{name} = excluded.{name}" for name in EFFECTIVE_VALUES)
    conflict = (
        "ON CONFLICT (fiscal_year, quarter, measure_id, agency) DO UPDATE SET "
        f"{updates} WHERE excluded.reported_at_us > {table}.reported_at_us "
        f"OR (excluded.reported_at_us = {table}.reported_at_us AND excluded.event_id > {table}.event_id)"
    )
    ordered = sorted(rows, key=_effective_key)
    if conn.dialect.name == "postgresql":
        _column_arrays(store.effective, EFFECTIVE_COLUMNS, conflict).insert(conn, ordered)
        return
    sql = (
        f"INSERT INTO {table} ({', '.join(EFFECTIVE_COLUMNS)}) VALUES ({_placeholders(conn, len(EFFECTIVE_COLUMNS))}) "
        f"{conflict}"
    )
    conn.exec_driver_sql(sql, ordered)


def bump_revisions(
    conn: Connection, *, store: Store, quarters: Mapping[tuple[int, int], int], now: datetime | None = None
) -> None:
    """Bump the revision of each touched quarter; `quarters` maps (fy, q) → greatest admitted_at_us applied."""
    if not quarters:
        return
    table = store.revisions
    ins = _insert(conn, table)
    newer = sa.case(
        (ins.excluded.last_admitted_at_us > table.c.last_admitted_at_us, ins.excluded.last_admitted_at_us),
        else_=table.c.last_admitted_at_us,
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["fiscal_year", "quarter"],
        set_={
            "revision": table.c.revision + 1,
            "last_admitted_at_us": newer,
            "updated_at_us": ins.excluded.updated_at_us,
        },
    )
    stamp = to_micros(now or datetime.now(UTC))
    rows = [
        {"fiscal_year": fy, "quarter": q, "revision": 1, "last_admitted_at_us": admitted, "updated_at_us": stamp}
        for (fy, q), admitted in sorted(quarters.items())
    ]
    conn.execute(stmt, rows)


def fill_revisions_from_events(conn: Connection, *, store: Store, previous: Mapping[tuple[int, int], int]) -> None:
    """One revision row per quarter with events, each past the previous store's revision so caches move on."""
    ev = store.events
    stamp = to_micros(datetime.now(UTC))
    conn.execute(sa.delete(store.revisions))
    rows = [
        {
            "fiscal_year": fy,
            "quarter": q,
            "revision": previous.get((fy, q), 0) + 1,
            "last_admitted_at_us": admitted,
            "updated_at_us": stamp,
        }
        for fy, q, admitted in conn.execute(
            sa.select(ev.c.fiscal_year, ev.c.quarter, sa.func.max(ev.c.admitted_at_us)).group_by(
                ev.c.fiscal_year, ev.c.quarter
            )
        )
    ]
    if rows:
        conn.execute(sa.insert(store.revisions), rows)


# --- Reading ---------------------------------------------------------------------------------


def _lead_report(row: Sequence[Any]) -> LeadReport:
    measure_id, agency, fiscal_year, quarter, status, reported_at, event_id, progress, kpis, note, reporter = row
    # Positional, in LeadReport's field order (keywords cost more on this path: one call per effective report).
    return LeadReport(
        measure_id,
        agency,
        fiscal_year,
        quarter,
        status,
        datetime.fromisoformat(reported_at),
        event_id,
        progress,
        parse_kpis(kpis) if kpis else (),
        note,
        reporter,
    )


def _report_columns(table: sa.Table) -> list[sa.ColumnElement[Any]]:
    return [
        table.c.measure_id,
        table.c.agency,
        table.c.fiscal_year,
        table.c.quarter,
        table.c.status,
        table.c.reported_at,
        table.c.event_id,
        table.c.progress,
        table.c.kpis,
        table.c.note,
        table.c.reporter,
    ]


def revisions(conn: Connection, *, store: Store = LIVE) -> dict[tuple[int, int], int]:
    """Every quarter's revision (a small table: one row per quarter with data)."""
    t = store.revisions
    return {(fy, q): rev for fy, q, rev in conn.execute(sa.select(t.c.fiscal_year, t.c.quarter, t.c.revision))}


def last_admitted(conn: Connection, *, store: Store = LIVE) -> datetime | None:
    t = store.revisions
    value = conn.execute(sa.select(sa.func.max(t.c.last_admitted_at_us))).scalar()
    return from_micros(value) if value is not None else None


def effective_for_quarter(conn: Connection, *, fiscal_year: int, quarter: int, store: Store = LIVE) -> list[LeadReport]:
    t = store.effective
    stmt = sa.select(*_report_columns(t)).where(t.c.fiscal_year == fiscal_year, t.c.quarter == quarter)
    return [_lead_report(row) for row in conn.execute(stmt).all()]


def all_effective(conn: Connection, *, store: Store = LIVE) -> list[LeadReport]:
    t = store.effective
    return [_lead_report(row) for row in conn.execute(sa.select(*_report_columns(t)))]


def effective_for_measure(conn: Connection, *, measure_id: str, store: Store = LIVE) -> list[LeadReport]:
    t = store.effective
    stmt = sa.select(*_report_columns(t)).where(t.c.measure_id == measure_id)
    return [_lead_report(row) for row in conn.execute(stmt)]


def effective_as_of(
    conn: Connection, *, as_of: datetime, quarters: Iterable[tuple[int, int]] | None = None, store: Store = LIVE
) -> list[LeadReport]:
    """Effective reports computed from the events admitted by `as_of` (all quarters, or the ones named)."""
    ev = store.events
    conditions: list[sa.ColumnElement[bool]] = [ev.c.admitted_at_us <= to_micros(as_of)]
    if quarters is not None:
        wanted = sorted(set(quarters))
        if not wanted:
            return []
        conditions.append(sa.or_(*(sa.and_(ev.c.fiscal_year == fy, ev.c.quarter == q) for fy, q in wanted)))
    ranked = (
        sa.select(
            *_report_columns(ev),
            sa.func.row_number()
            .over(
                partition_by=(ev.c.fiscal_year, ev.c.quarter, ev.c.measure_id, ev.c.agency),
                order_by=(ev.c.reported_at_us.desc(), ev.c.event_id.desc()),
            )
            .label("rank"),
        )
        .where(*conditions)
        .subquery()
    )
    stmt = sa.select(*(ranked.c[c.name] for c in _report_columns(ev))).where(ranked.c.rank == 1)
    return [_lead_report(row) for row in conn.execute(stmt)]


def has_events(conn: Connection, *, store: Store = LIVE) -> bool:
    return conn.execute(sa.select(store.events.c.event_id).limit(1)).first() is not None


def count_rows(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def table_rows(conn: Connection, table: sa.Table) -> list[tuple[Any, ...]]:
    """Every row of a table in primary-key order (for comparing stores)."""
    pk = list(table.primary_key.columns)
    return [tuple(row) for row in conn.execute(sa.select(table).order_by(*pk))]
