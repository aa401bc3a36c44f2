"""All SQL of the reporting store (SQLAlchemy Core: every table here is on a hot path).

The tables and their rows are declared in `reporting.tables`; the names the rest of the service imports from
here (`LIVE`, `Store`, `to_micros`, `tune`, …) are re-exported. Effective reports follow the domain's "latest
report wins" (`domain.EFFECTIVE_ORDER`): both of its SQL renderings below (the upsert's condition and the
ranking of `effective_as_of`) are generated from `ORDER_COLUMNS`, and tests/test_effective_order.py checks them
against the domain on SQLite and on PostgreSQL.

The statements on the quarters' revisions (what each transaction touched, read by the incremental tallies) are
in `reporting.revision_store`; the tables are declared in `reporting.tables`.

One module of ~470 lines on purpose: every statement of the events and effective reports, with their SQLite and
PostgreSQL renderings side by side, so that a change to one dialect's statement is made next to the other's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateColumn, CreateTable

from reporting.domain import LeadReport
from reporting.tables import (
    EFFECTIVE_COLUMNS,
    EFFECTIVE_KEY,
    EFFECTIVE_VALUES,
    EVENT_COLUMNS,
    LIVE,
    LIVE_SUFFIX,
    OLD_SUFFIX,
    ORDER_COLUMNS,
    SHADOW_SUFFIX,
    TABLE_BASES,
    EffectiveRow,
    EventRow,
    Store,
    from_micros,
    kpis_json,
    parse_kpis,
    store_tables,
    to_micros,
    tune,
)
from shinchoku_runtime.db import ColumnArrays, serialize_schema_changes

__all__ = [
    "EFFECTIVE_COLUMNS",
    "EFFECTIVE_KEY",
    "EFFECTIVE_VALUES",
    "EVENT_COLUMNS",
    "LIVE",
    "LIVE_SUFFIX",
    "OLD_SUFFIX",
    "ORDER_COLUMNS",
    "SHADOW_SUFFIX",
    "EffectiveRow",
    "EventRow",
    "Store",
    "admitted_report",
    "all_effective",
    "built_once",
    "count_rows",
    "create_late_indexes",
    "create_store",
    "drop_tables",
    "effective_as_of",
    "effective_for_measure",
    "effective_for_measures",
    "effective_for_quarter",
    "effective_of_measures",
    "effective_where",
    "from_micros",
    "has_events",
    "insert_events",
    "insert_for",
    "kpis_json",
    "last_admitted",
    "lock_for_swap",
    "parse_kpis",
    "prebuilt",
    "rename_tables",
    "review_applied",
    "store_tables",
    "table_rows",
    "to_micros",
    "tune",
    "upsert_effective",
]


def create_store(engine: Engine, *, store: Store = LIVE, with_indexes: bool = True) -> None:
    """Create the tables that do not exist yet (and their indexes)."""
    with engine.begin() as conn:
        serialize_schema_changes(conn, "reporting")
        existing = set(sa.inspect(conn).get_table_names())
        add_missing_columns(conn, store=store)
        rekey_events(conn, store=store)
        for table in store.tables:
            if table.name not in existing:
                conn.execute(CreateTable(table))  # without its indexes: those follow, now or after a bulk load
                for index in table.indexes:  # the indexes a table declares itself (the cycle's) come with it
                    if index not in store.late_indexes:
                        index.create(conn)
                if with_indexes:
                    for index in store.late_indexes:
                        if index.table is table:
                            index.create(conn)


def add_missing_columns(conn: Connection, *, store: Store) -> None:
    """Columns added to a table since a store was created (the reporting cycle's `backfilled` and review state),
    each with its default."""
    inspector = sa.inspect(conn)
    for table in store.tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                spec = CreateColumn(column).compile(dialect=conn.dialect)
                conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN {spec}'))


def rekey_events(conn: Connection, *, store: Store) -> None:
    """A store made when `events` was keyed by `event_id` alone gets its key (agency, event_id): an event id is
    its agency's own, and the old key kept one of two agencies' reports under one id (issue #15 hole 3).
    Rows are kept as they are; a report the old key dropped comes back with a rebuild (`shinchoku rebuild`)."""
    events = store.events
    inspector = sa.inspect(conn)
    if not inspector.has_table(events.name):
        return
    key = inspector.get_pk_constraint(events.name)
    if list(key.get("constrained_columns") or []) != ["event_id"]:
        return
    wanted = events.primary_key.name
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                f'ALTER TABLE "{events.name}" DROP CONSTRAINT "{key["name"]}", '
                f'ADD CONSTRAINT "{wanted}" PRIMARY KEY (agency, event_id)'
            )
        )
        return
    # SQLite cannot change a primary key: copy the rows aside, make the table anew, copy them back.
    aside = f"{events.name}__rekey"
    columns = ", ".join(f'"{c.name}"' for c in events.columns)
    conn.execute(sa.text(f'DROP TABLE IF EXISTS "{aside}"'))
    conn.execute(sa.text(f'CREATE TABLE "{aside}" AS SELECT {columns} FROM "{events.name}"'))
    conn.execute(sa.text(f'DROP TABLE "{events.name}"'))
    conn.execute(CreateTable(events))
    for index in store.late_indexes:
        if index.table is events:
            index.create(conn)
    conn.execute(sa.text(f'INSERT INTO "{events.name}" ({columns}) SELECT {columns} FROM "{aside}"'))
    conn.execute(sa.text(f'DROP TABLE "{aside}"'))


def create_late_indexes(conn: Connection, *, store: Store) -> None:
    for index in store.late_indexes:
        index.create(conn)


def drop_tables(conn: Connection, *, suffix: str) -> None:
    """Drop the store's tables named with `suffix` (a leftover shadow or old copy), if they exist."""
    existing = set(sa.inspect(conn).get_table_names())
    for base in TABLE_BASES:
        name = f"{base}{suffix}"
        if name in existing:
            conn.execute(sa.text(f'DROP TABLE "{name}"'))


def rename_tables(conn: Connection, *, from_suffix: str, to_suffix: str) -> None:
    for base in TABLE_BASES:
        conn.execute(sa.text(f'ALTER TABLE "{base}{from_suffix}" RENAME TO "{base}{to_suffix}"'))


def lock_for_swap(conn: Connection) -> None:
    """Block writers of the live store until the transaction ends (readers go on)."""
    if conn.dialect.name == "postgresql":
        names = ", ".join(f'"{base}"' for base in TABLE_BASES)
        conn.execute(sa.text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))
    else:
        # Any write statement takes SQLite's database-wide write lock for the rest of the transaction.
        conn.execute(sa.text("UPDATE quarter_revisions SET revision = revision WHERE 1 = 0"))


# --- "The latest report wins" in SQL ---------------------------------------------------------


def wins_over(new: str, old: str) -> str:
    """SQL that holds when the row `new` wins "the latest report wins" over the row `old` (table names or aliases):
    `ORDER_COLUMNS` compared in order, greater wins (`new.a > old.a OR (new.a = old.a AND new.b > old.b) …`)."""
    clauses = []
    for i, column in enumerate(ORDER_COLUMNS):
        equal = [f"{new}.{c} = {old}.{c}" for c in ORDER_COLUMNS[:i]]
        clauses.append(" AND ".join([*equal, f"{new}.{column} > {old}.{column}"]))
    return " OR ".join(f"({clause})" for clause in clauses)


def latest_first(table: sa.Table) -> tuple[sa.UnaryExpression[Any], ...]:
    """ORDER BY terms that put the winner of "the latest report wins" first among rows with one key."""
    return tuple(table.c[column].desc() for column in ORDER_COLUMNS)


# --- Writing ---------------------------------------------------------------------------------


def insert_for(conn: Connection, table: sa.Table) -> Any:
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


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
    """Insert `events` rows (`EventRow`s); an (agency, event id) already stored keeps its first copy.

    SQLite: one executemany of a plain statement (SQLAlchemy's per-row parameter processing costs more than
    the insert itself on this path). PostgreSQL: one statement of column arrays (`ColumnArrays`).
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _column_arrays(store.events, EVENT_COLUMNS, "ON CONFLICT (agency, event_id) DO NOTHING").insert(conn, rows)
        return
    sql = (
        f'INSERT INTO "{store.events.name}" ({", ".join(EVENT_COLUMNS)}) '
        f"VALUES ({_placeholders(conn, len(EVENT_COLUMNS))}) ON CONFLICT (agency, event_id) DO NOTHING"
    )
    conn.exec_driver_sql(sql, list(rows))


#: The key of a row in EFFECTIVE_COLUMNS order (an `EffectiveRow`, or a plain tuple in its order).
_effective_key = operator.itemgetter(*(EFFECTIVE_COLUMNS.index(name) for name in EFFECTIVE_KEY))


def _effective_update(name: str, table: str) -> str:
    """The SET clause of one column when a report wins over the stored one (`table`: the stored row): the event's
    values, a fresh review state, and the report it answers: the stored one if it was returned, or the one the
    stored report answered while that is still pending (two reports after one return answer the same)."""
    if name == "answers":
        return (
            f"answers = CASE WHEN {table}.review = 'returned' THEN {table}.event_id "
            f"WHEN {table}.review = 'pending' THEN {table}.answers ELSE NULL END"
        )
    return f"{name} = excluded.{name}"


def upsert_effective(conn: Connection, *, store: Store, rows: Sequence[Sequence[Any]]) -> None:
    """Make each row (an `EffectiveRow`) the effective report of its key, unless the stored one wins "the latest
    report wins" (`wins_over`).

    The rows must have distinct keys. Sorted by key so that concurrent writers lock rows in one order.
    """
    if not rows:
        return
    table = f'"{store.effective.name}"'
    updates = ", ".join(_effective_update(name, table) for name in EFFECTIVE_VALUES)
    conflict = f"ON CONFLICT ({', '.join(EFFECTIVE_KEY)}) DO UPDATE SET {updates} WHERE {wins_over('excluded', table)}"
    ordered = sorted(rows, key=_effective_key)
    if conn.dialect.name == "postgresql":
        _column_arrays(store.effective, EFFECTIVE_COLUMNS, conflict).insert(conn, ordered)
        return
    sql = (
        f"INSERT INTO {table} ({', '.join(EFFECTIVE_COLUMNS)}) VALUES ({_placeholders(conn, len(EFFECTIVE_COLUMNS))}) "
        f"{conflict}"
    )
    conn.exec_driver_sql(sql, ordered)


def _effective_for_measures(store: Store) -> Any:
    t = store.effective
    return sa.select(*_report_columns(t)).where(
        t.c.fiscal_year == sa.bindparam("fiscal_year"),
        t.c.quarter == sa.bindparam("quarter"),
        t.c.measure_id.in_(sa.bindparam("measure_ids", expanding=True)),
    )


def effective_for_measures(
    conn: Connection, *, fiscal_year: int, quarter: int, measure_ids: Iterable[str], store: Store = LIVE
) -> list[LeadReport]:
    """The effective reports of some measures in a quarter (by the table's key)."""
    wanted = sorted(set(measure_ids))
    if not wanted:
        return []
    params = {"fiscal_year": fiscal_year, "quarter": quarter, "measure_ids": wanted}
    return [_lead_report(row) for row in conn.execute(prebuilt(store, "for_measures", _effective_for_measures), params)]


# --- Reading ---------------------------------------------------------------------------------

#: Both `events` and `effective_reports` name these columns as `LeadReport` names its fields, so a report is
#: selected in LeadReport's field order (`_report_columns`) and made with `LeadReport._make`, after parsing
#: the fields stored in another form: `reported_at` and `received_at` (RFC 3339 text) and `kpis` (JSON).
_REPORT_FIELDS = LeadReport._fields
_REPORTED_AT = _REPORT_FIELDS.index("reported_at")
_KPIS = _REPORT_FIELDS.index("kpis")
_RECEIVED_AT = _REPORT_FIELDS.index("received_at")


def _report_columns(table: sa.Table) -> list[sa.ColumnElement[Any]]:
    """The table's columns in LeadReport's field order; a field the table has not (the review state of `events`)
    as its default."""
    return [table.c[name] if name in table.c else _DEFAULT_SQL[name].label(name) for name in _REPORT_FIELDS]


def _default_sql(value: Any) -> sa.ColumnElement[Any]:
    """A LeadReport field's default as SQL (no bound parameter: PostgreSQL cannot type one in a subquery)."""
    if value is None:
        return sa.null()
    if isinstance(value, bool):
        return sa.true() if value else sa.false()
    if isinstance(value, str) and value.isidentifier():
        return sa.literal_column(f"'{value}'")
    return sa.literal(value)


_DEFAULT_SQL = {name: _default_sql(value) for name, value in LeadReport._field_defaults.items()}


def _lead_report(row: Sequence[Any]) -> LeadReport:
    """A LeadReport from a row of `_report_columns` (one call per report read: no per-field keyword binding)."""
    values = list(row)
    values[_REPORTED_AT] = datetime.fromisoformat(values[_REPORTED_AT])
    values[_KPIS] = parse_kpis(values[_KPIS])
    if values[_RECEIVED_AT] is not None:
        values[_RECEIVED_AT] = datetime.fromisoformat(values[_RECEIVED_AT])
    return LeadReport._make(values)


_STATEMENTS: dict[tuple[str, str], Any] = {}


def prebuilt(store: Store, name: str, build: Callable[[Store], Any]) -> Any:
    """A read statement built once per store (named by its suffix) and kind, its values bound at execution
    (`sa.bindparam`): the readers' hot path after a change runs a few small queries, and building a statement
    costs more than running it."""
    return built_once((store.suffix, name), lambda: build(store))


def built_once(key: tuple[str, str], build: Callable[[], Any]) -> Any:
    """The statement kept under `key` (its tables' names and its kind), built by `build` the first time."""
    found = _STATEMENTS.get(key)
    if found is None:
        found = _STATEMENTS[key] = build()
    return found


def last_admitted(conn: Connection, *, store: Store = LIVE) -> datetime | None:
    t = store.revisions
    value = conn.execute(sa.select(sa.func.max(t.c.last_admitted_at_us))).scalar()
    return from_micros(value) if value is not None else None


def _effective_for_quarter(store: Store) -> Any:
    t = store.effective
    return sa.select(*_report_columns(t)).where(
        t.c.fiscal_year == sa.bindparam("fiscal_year"), t.c.quarter == sa.bindparam("quarter")
    )


def effective_for_quarter(conn: Connection, *, fiscal_year: int, quarter: int, store: Store = LIVE) -> list[LeadReport]:
    params = {"fiscal_year": fiscal_year, "quarter": quarter}
    rows = conn.execute(prebuilt(store, "for_quarter", _effective_for_quarter), params).all()
    return [_lead_report(row) for row in rows]


def effective_where(conn: Connection, store: Store, *conditions: sa.ColumnElement[bool]) -> list[LeadReport]:
    """The effective reports (of `store`) that meet the conditions."""
    t = store.effective
    return [_lead_report(row) for row in conn.execute(sa.select(*_report_columns(t)).where(*conditions))]


def all_effective(conn: Connection, *, store: Store = LIVE) -> list[LeadReport]:
    t = store.effective
    return [_lead_report(row) for row in conn.execute(sa.select(*_report_columns(t)))]


def effective_for_measure(conn: Connection, *, measure_id: str, store: Store = LIVE) -> list[LeadReport]:
    return effective_of_measures(conn, measure_ids=(measure_id,), store=store)


def _effective_of_measures(store: Store) -> Any:
    t = store.effective
    return sa.select(*_report_columns(t)).where(t.c.measure_id.in_(sa.bindparam("measure_ids", expanding=True)))


def effective_of_measures(conn: Connection, *, measure_ids: Iterable[str], store: Store = LIVE) -> list[LeadReport]:
    """The effective reports of some measures, every quarter (`effective_for_measures`: in one quarter)."""
    wanted = sorted(set(measure_ids))
    if not wanted:
        return []
    statement = prebuilt(store, "of_measures", _effective_of_measures)
    return [_lead_report(row) for row in conn.execute(statement, {"measure_ids": wanted})]


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
            .over(partition_by=tuple(ev.c[name] for name in EFFECTIVE_KEY), order_by=latest_first(ev))
            .label("rank"),
        )
        .where(*conditions)
        .subquery()
    )
    stmt = sa.select(*(ranked.c[c.name] for c in _report_columns(ev))).where(ranked.c.rank == 1)
    return [_lead_report(row) for row in conn.execute(stmt)]


def admitted_report(
    conn: Connection, *, agency: str, event_id: str, store: Store = LIVE
) -> tuple[str, int, int] | None:
    """(measure_id, fiscal_year, quarter) of `agency`'s admitted report `event_id`, or None (the review form's
    check that a review names a report)."""
    ev = store.events
    stmt = sa.select(ev.c.measure_id, ev.c.fiscal_year, ev.c.quarter).where(
        ev.c.agency == agency, ev.c.event_id == event_id
    )
    row = conn.execute(stmt).first()
    return (str(row[0]), int(row[1]), int(row[2])) if row is not None else None


def review_applied(conn: Connection, *, review_id: str, store: Store = LIVE) -> bool:
    """Whether the review `review_id` has been admitted and applied to this store."""
    reviews = store.cycle.reviews
    return conn.execute(sa.select(reviews.c.review_id).where(reviews.c.review_id == review_id)).first() is not None


def has_events(conn: Connection, *, store: Store = LIVE) -> bool:
    return conn.execute(sa.select(store.events.c.event_id).limit(1)).first() is not None


def count_rows(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def table_rows(conn: Connection, table: sa.Table) -> list[tuple[Any, ...]]:
    """Every row of a table in primary-key order (for comparing stores)."""
    pk = list(table.primary_key.columns)
    return [tuple(row) for row in conn.execute(sa.select(table).order_by(*pk))]
