"""All SQL of ingest's batches: one decision per STATUS message, and the idempotency record of each event id.

`decision` holds what ingest decided for every STATUS message (key: its stream sequence), so that a
redelivered message is answered from the store instead of being decided again. It is also ingest's outbox:
`published_seq` is where the decision landed on ACCEPTED or REJECTED, NULL until its PubAck (the outbox's own
queries are in `outbox_repository`). `event_claim` binds an agency's event_id to the content it first carried
and says which message admitted it: an event id is an agency's own, so claims are keyed by (event_id, agency)
(the secretariat's review and close ids are claimed as `secretariat`'s). `closed_quarter` holds each quarter
the secretariat closed: one close per quarter, ever. All are written in one transaction per batch with
SQLAlchemy Core (`INSERT … ON CONFLICT DO NOTHING` on SQLite and PostgreSQL alike): a row that did not go in
means another replica got there first, and the batch is decided again from the store. The same transaction records the sequences of earlier batches' PubAcks.
The reads for HTTP are in `queries`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy import Engine, event
from sqlmodel import SQLModel

from ingest.domain import ClaimKey, LateAdmission, NewClaim, NewClose, PriorRecord, QuarterKey

# Re-exported: what a decision's outcome is called (the tables and the rest of their words are in `tables`).
from ingest.tables import OUTCOME_ADMITTED as OUTCOME_ADMITTED
from ingest.tables import OUTCOME_DUPLICATE as OUTCOME_DUPLICATE
from ingest.tables import OUTCOME_REJECTED as OUTCOME_REJECTED
from ingest.tables import PUBLISHED_BEFORE_OUTBOX as PUBLISHED_BEFORE_OUTBOX
from ingest.tables import claim_table, closed_table, decision_table
from shinchoku_runtime.db import ColumnArrays, serialize_schema_changes, size_sqlite_cache


def create_schema(engine: Engine) -> None:
    with engine.begin() as conn:
        serialize_schema_changes(conn, "ingest")
        _upgrade_before(conn)
        SQLModel.metadata.create_all(conn, tables=[decision_table, claim_table, closed_table])
        _upgrade_after(conn)


def _upgrade_before(conn: sa.Connection) -> None:
    """A store from before the outbox: its decisions get `published_seq` (PUBLISHED_BEFORE_OUTBOX: they were
    published then, or dead-lettered on the last delivery; the outbox starts with the upgrade)."""
    inspector = sa.inspect(conn)
    if "decision" not in inspector.get_table_names():
        return
    columns = {c["name"] for c in inspector.get_columns("decision")}
    if "published_seq" not in columns:
        conn.execute(sa.text("ALTER TABLE decision ADD COLUMN published_seq BIGINT"))
        conn.execute(
            sa.text("UPDATE decision SET published_seq = :seq WHERE outcome <> 'duplicate'"),
            {"seq": PUBLISHED_BEFORE_OUTBOX},
        )
    # A store from before the secretariat's commands: the columns they fill (NULL for every report).
    if "principal" not in columns:
        conn.execute(sa.text("ALTER TABLE decision ADD COLUMN principal VARCHAR(200)"))
    if "admitted_body" not in columns:
        conn.execute(sa.text("ALTER TABLE decision ADD COLUMN admitted_body TEXT"))


def _upgrade_after(conn: sa.Connection) -> None:
    """A store from before claims were per agency: its claims (keyed by event_id alone) move to `event_claim`."""
    if "event_id_claim" not in sa.inspect(conn).get_table_names():
        return
    columns = ", ".join(c.name for c in claim_table.columns)
    conn.execute(sa.text(f"INSERT INTO event_claim ({columns}) SELECT {columns} FROM event_id_claim"))
    conn.execute(sa.text("DROP TABLE event_id_claim"))


#: Ingest's SQLite page cache and memory map: the decision and claim indexes are keyed by random event ids.
SQLITE_CACHE_KIB = 65_536
SQLITE_MMAP_BYTES = 256 * 1024 * 1024


def tune(engine: Engine) -> Engine:
    """Size the SQLite page cache for random-key inserts (no-op on PostgreSQL)."""
    return size_sqlite_cache(engine, cache_kib=SQLITE_CACHE_KIB, mmap_bytes=SQLITE_MMAP_BYTES)


def set_sqlite_busy_timeout(engine: Engine, *, milliseconds: int) -> None:
    """Bound how long a SQLite write waits for a lock, so a stuck batch is retried well inside ack_wait."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(milliseconds)}")
        cursor.close()


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: every stored time is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# --- the batch unit of work ----------------------------------------------------------------------------------


class DecisionRecord(NamedTuple):
    """One row of `decision`, its fields in the table's column order: written as the tuple it is, and read back
    as a `StoredDecision`."""

    stream_seq: int
    event_id: str | None
    outcome: str
    reason: str | None
    message: str | None
    subject: str
    agency: str
    measure_id: str | None
    received_at: datetime
    admitted_at: datetime | None
    trace_id: str | None
    content_hash: str | None
    rejection_id: str | None
    #: The original bytes of a rejected message (None for admissions: they live on ACCEPTED). Never read back
    #: with the rest (`STORED_COLUMNS`): who needs them selects them beside (`outbox_repository.Unpublished`).
    payload: bytes | None = None
    #: Always None when written: set by the PubAck (`Mark`).
    published_seq: int | None = None
    #: A command's verified sender.
    principal: str | None = None
    #: An admitted review's or close's message on ACCEPTED.
    admitted_body: str | None = None


class StoredDecision(DecisionRecord):
    """A decision read back from the store (a redelivery's, the outbox's, the HTTP reads'), without its payload."""

    __slots__ = ()


STORED_FIELDS = tuple(name for name in DecisionRecord._fields if name != "payload")
STORED_COLUMNS = [decision_table.c[name] for name in STORED_FIELDS]


class Mark(NamedTuple):
    """A decision's PubAck: the decision (its STATUS sequence) landed at `published_seq` on its stream."""

    stream_seq: int
    published_seq: int


def stored_decision(row: Any) -> StoredDecision:
    mapping = row._mapping
    values = {name: mapping[name] for name in STORED_FIELDS}
    values["received_at"] = _aware(values["received_at"])
    values["admitted_at"] = _aware(values["admitted_at"])
    return StoredDecision(**values)


def load_stored(engine: Engine, *, seqs: Sequence[int]) -> dict[int, StoredDecision]:
    """Decisions already stored for these stream sequences (a redelivery, or another replica's work)."""
    if not seqs:
        return {}
    wanted = set(seqs)
    # Batches are runs of nearly consecutive sequences: one range scan instead of a long IN list.
    query = sa.select(*STORED_COLUMNS).where(decision_table.c.stream_seq.between(min(seqs), max(seqs)))
    with engine.connect() as conn:
        return {s.stream_seq: s for s in map(stored_decision, conn.execute(query)) if s.stream_seq in wanted}


def load_priors(engine: Engine, *, keys: Iterable[ClaimKey]) -> dict[ClaimKey, PriorRecord]:
    """The idempotency records of these (agency, event_id) pairs."""
    wanted = set(keys)
    ids = list({event_id for _, event_id in wanted})
    if not ids:
        return {}
    out: dict[ClaimKey, PriorRecord] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 900):  # below SQLite's bound-parameter limit
            query = sa.select(
                claim_table.c.event_id, claim_table.c.content_hash, claim_table.c.admitted_seq, claim_table.c.agency
            ).where(claim_table.c.event_id.in_(ids[start : start + 900]))
            for event_id, digest, admitted_seq, agency in conn.execute(query):
                if (agency, event_id) in wanted:
                    out[agency, event_id] = PriorRecord(
                        content_hash=digest, admitted=admitted_seq is not None, agency=agency
                    )
    return out


class ReportAdmission(NamedTuple):
    """Where an agency's admitted report is: its STATUS message (to read its quarter from) and its measure."""

    admitted_seq: int
    measure_id: str | None


def load_admitted_reports(engine: Engine, *, keys: Iterable[ClaimKey]) -> dict[ClaimKey, ReportAdmission]:
    """The admitted reports of these (agency, event_id) pairs (what reviews name), where they are."""
    wanted = set(keys)
    if not wanted:
        return {}
    c, d = claim_table, decision_table
    query = (
        sa.select(c.c.agency, c.c.event_id, c.c.admitted_seq, d.c.measure_id)
        .select_from(c.join(d, d.c.stream_seq == c.c.admitted_seq))
        .where(c.c.event_id.in_(sorted({event_id for _, event_id in wanted})), c.c.admitted_seq.is_not(None))
    )
    with engine.connect() as conn:
        return {
            (agency, event_id): ReportAdmission(admitted_seq, measure_id)
            for agency, event_id, admitted_seq, measure_id in conn.execute(query)
            if (agency, event_id) in wanted
        }


def load_closed(engine: Engine) -> dict[QuarterKey, str]:
    """Every closed quarter, and the close_id that closed it (a few rows a year)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(closed_table.c.fiscal_year, closed_table.c.quarter, closed_table.c.close_id))
        return {(fiscal_year, quarter): close_id for fiscal_year, quarter, close_id in rows}


class WriteConflict(Exception):
    """Another replica stored part of this batch first: decide the batch again from the store."""


def write_batch(
    engine: Engine,
    *,
    decisions: Sequence[DecisionRecord],
    claims: Sequence[NewClaim],
    late_admissions: Sequence[LateAdmission],
    published: Sequence[Mark] = (),
    closes: Sequence[NewClose] = (),
) -> None:
    """Store a batch's decisions and idempotency records in one transaction, or nothing (WriteConflict).

    `published`: PubAcks of earlier batches, recorded in the same transaction (no commit of their own).
    `closes`: the quarters the batch closes (a quarter closed by another replica first is a WriteConflict).
    """
    if not decisions:
        if published:
            mark_published(engine, published)
        return
    if engine.dialect.name == "sqlite":
        _write_batch_sqlite(
            engine,
            decisions=decisions,
            claims=claims,
            late_admissions=late_admissions,
            published=published,
            closes=closes,
        )
        return
    with engine.begin() as conn:
        inserted = _PG_DECISION_INSERT.insert(conn, decisions)
        if inserted != len(decisions):
            raise WriteConflict(f"{len(decisions) - inserted} decision(s) were stored by another replica")
        if claims:
            claimed = _PG_CLAIM_INSERT.insert(conn, claims)
            if claimed != len(claims):
                raise WriteConflict(f"{len(claims) - claimed} event id(s) were claimed by another replica")
        _admit_late(conn, late_admissions)
        _close(conn, closes)
        _mark(conn, published)


def mark_published(engine: Engine, marks: Sequence[Mark]) -> None:
    """Record PubAcks in a transaction of their own (when no batch write is coming to carry them)."""
    if marks:
        with engine.begin() as conn:
            _mark(conn, marks)


#: One statement per batch: a decision already marked keeps its first sequence (a republished copy the broker
#: dropped as a duplicate acknowledges the original's).
_SQLITE_MARK = "UPDATE decision SET published_seq = ? WHERE stream_seq = ? AND published_seq IS NULL"
_PG_MARK = (
    "UPDATE decision SET published_seq = marks.published_seq "
    "FROM unnest(%b::BIGINT[], %b::BIGINT[]) AS marks(stream_seq, published_seq) "
    "WHERE decision.stream_seq = marks.stream_seq AND decision.published_seq IS NULL"
)


def _mark(conn: sa.Connection, marks: Sequence[Mark]) -> None:
    if not marks:
        return
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(_SQLITE_MARK, [(m.published_seq, m.stream_seq) for m in marks])
        return
    cursor: Any = cast(Any, conn.connection.dbapi_connection).cursor()
    try:
        cursor.execute(_PG_MARK, [[m.stream_seq for m in marks], [m.published_seq for m in marks]])
    finally:
        cursor.close()


_DECISION_COLUMNS = tuple(c.name for c in decision_table.columns)
_CLAIM_COLUMNS = tuple(c.name for c in claim_table.columns)
# Rows are written as the tuples they are: their fields must be the tables' columns, in order.
if DecisionRecord._fields != _DECISION_COLUMNS or NewClaim._fields != _CLAIM_COLUMNS:
    raise RuntimeError(f"row types out of step with the tables: {_DECISION_COLUMNS}, {_CLAIM_COLUMNS}")
#: PostgreSQL: each batch's rows in one statement, as column arrays (see `ColumnArrays` for the figures).
_PG_DECISION_INSERT = ColumnArrays(decision_table, _DECISION_COLUMNS)
_PG_CLAIM_INSERT = ColumnArrays(claim_table, _CLAIM_COLUMNS)
if [c.name for c in decision_table.columns if isinstance(c.type, sa.DateTime)] != ["received_at", "admitted_at"]:
    raise RuntimeError("`_sqlite_row` writes the decision's times at positions 8 and 9")
_SQLITE_DECISION_INSERT = (
    f"INSERT INTO decision ({', '.join(_DECISION_COLUMNS)}) VALUES ({', '.join('?' * len(_DECISION_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)
_SQLITE_CLAIM_INSERT = (
    f"INSERT INTO event_claim ({', '.join(_CLAIM_COLUMNS)}) VALUES ({', '.join('?' * len(_CLAIM_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)


def sqlite_datetime(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DATETIME stores for `value` (its fields as they are, with microseconds)."""
    return None if value is None else value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_row(r: DecisionRecord) -> tuple[Any, ...]:
    """The row with its two times as SQLAlchemy's SQLite DATETIME writes them."""
    return (*r[:8], sqlite_datetime(r.received_at), sqlite_datetime(r.admitted_at), *r[10:])


def _write_batch_sqlite(
    engine: Engine,
    *,
    decisions: Sequence[DecisionRecord],
    claims: Sequence[NewClaim],
    late_admissions: Sequence[LateAdmission],
    published: Sequence[Mark],
    closes: Sequence[NewClose],
) -> None:
    """`write_batch` on SQLite: plain `executemany` of prepared tuples, the same rows SQLAlchemy Core would write.

    Core's per-row parameter processing (a dict per row, a bind processor per datetime) cost more than
    SQLite's own insert here. A row that did not go in shows as a smaller total of changes.
    """
    rows = [_sqlite_row(r) for r in decisions]
    with engine.begin() as conn:
        inserted = conn.exec_driver_sql(_SQLITE_DECISION_INSERT, rows).rowcount
        if inserted != len(rows):
            raise WriteConflict(f"{len(rows) - inserted} decision(s) were stored by another replica")
        if claims:
            claimed = conn.exec_driver_sql(_SQLITE_CLAIM_INSERT, claims).rowcount
            if claimed != len(claims):
                raise WriteConflict(f"{len(claims) - claimed} event id(s) were claimed by another replica")
        _admit_late(conn, late_admissions)
        _close(conn, closes)
        _mark(conn, published)


_CLOSE_INSERT = sa.text(
    "INSERT INTO closed_quarter (fiscal_year, quarter, close_id, stream_seq) "
    "VALUES (:fiscal_year, :quarter, :close_id, :stream_seq) ON CONFLICT DO NOTHING"
)


def _close(conn: sa.Connection, closes: Sequence[NewClose]) -> None:
    for close in closes:  # a handful a year: one statement each, its row count exact on either database
        if conn.execute(_CLOSE_INSERT, close._asdict()).rowcount != 1:
            raise WriteConflict(f"FY{close.fiscal_year}Q{close.quarter} was closed by another replica")


def _admit_late(conn: sa.Connection, late_admissions: Sequence[LateAdmission]) -> None:
    for late in late_admissions:
        result = conn.execute(
            sa.update(claim_table)
            .where(
                claim_table.c.event_id == late.event_id,
                claim_table.c.agency == late.agency,
                claim_table.c.admitted_seq.is_(None),
            )
            .values(admitted_seq=late.admitted_seq)
        )
        if result.rowcount != 1:
            raise WriteConflict(f"event id {late.event_id} of {late.agency} was admitted by another replica")
