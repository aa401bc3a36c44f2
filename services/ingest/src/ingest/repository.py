"""All SQL of ingest: one decision per STATUS message, and the idempotency record of each event_id.

`decision` holds what ingest decided for every STATUS message (key: its stream sequence), so that a
redelivered message is answered from the store instead of being decided again. `event_id_claim` binds an
event_id to the content it first carried and says which message admitted it. Both are written in one
transaction per batch with SQLAlchemy Core (`INSERT … ON CONFLICT DO NOTHING … RETURNING` on SQLite and
PostgreSQL alike): a row that did not go in means another replica got there first, and the batch is
decided again from the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Engine, event
from sqlmodel import Column, Field, SQLModel

from ingest.domain import LateAdmission, NewClaim, PriorRecord
from shinchoku_runtime.db import ColumnArrays, serialize_schema_changes, size_sqlite_cache

OUTCOME_ADMITTED = "admitted"
OUTCOME_REJECTED = "rejected"
#: An identical resend of an admitted event: recorded as an attempt, nothing published.
OUTCOME_DUPLICATE = "duplicate"


class DecisionRow(SQLModel, table=True):
    """What ingest decided for one STATUS message."""

    __tablename__ = "decision"
    __table_args__ = (
        # Rejections are few: a partial index keeps the hot insert path free of it for admissions.
        sa.Index(
            "ix_decision_rejections",
            "agency",
            "reason",
            "stream_seq",
            sqlite_where=sa.text("outcome = 'rejected'"),
            postgresql_where=sa.text("outcome = 'rejected'"),
        ),
    )

    stream_seq: int = Field(sa_column=Column(sa.BigInteger, primary_key=True, autoincrement=False))
    event_id: str | None = Field(default=None, max_length=36, index=True)
    outcome: str = Field(max_length=10)
    reason: str | None = Field(default=None, max_length=32)
    message: str | None = Field(default=None, sa_column=Column(sa.Text))
    subject: str = Field(sa_column=Column(sa.Text, nullable=False))
    agency: str = Field(max_length=64)
    measure_id: str | None = Field(default=None, max_length=16)
    received_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    admitted_at: datetime | None = Field(default=None, sa_column=Column(sa.DateTime(timezone=True)))
    trace_id: str | None = Field(default=None, max_length=32)
    content_hash: str | None = Field(default=None, max_length=32)
    rejection_id: str | None = Field(default=None, max_length=40)
    #: The original bytes of a rejected message (admitted ones live on ACCEPTED).
    payload: bytes | None = Field(default=None, sa_column=Column(sa.LargeBinary))


class EventIdClaimRow(SQLModel, table=True):
    """The idempotency record of an event_id: the content it is bound to and the message that admitted it."""

    __tablename__ = "event_id_claim"

    event_id: str = Field(primary_key=True, max_length=36)
    content_hash: str = Field(max_length=32)
    agency: str = Field(max_length=64)
    first_seq: int = Field(sa_column=Column(sa.BigInteger, nullable=False))
    admitted_seq: int | None = Field(default=None, sa_column=Column(sa.BigInteger))


_decision: sa.Table = DecisionRow.__table__  # type: ignore[attr-defined]
_claim: sa.Table = EventIdClaimRow.__table__  # type: ignore[attr-defined]


def create_schema(engine: Engine) -> None:
    with engine.begin() as conn:
        serialize_schema_changes(conn, "ingest")
        SQLModel.metadata.create_all(conn, tables=[_decision, _claim])


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


@dataclass(frozen=True, slots=True)
class StoredDecision:
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


_STORED_COLUMNS = [_decision.c[name] for name in StoredDecision.__slots__]


class DecisionRecord(NamedTuple):
    """One row of `decision` as ingest writes it, its fields in the table's column order."""

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
    #: The original bytes of a rejected message (None for admissions: they live on ACCEPTED).
    payload: bytes | None


def _stored(row: Any) -> StoredDecision:
    mapping = row._mapping
    values = {name: mapping[name] for name in StoredDecision.__slots__}
    values["received_at"] = _aware(values["received_at"])
    values["admitted_at"] = _aware(values["admitted_at"])
    return StoredDecision(**values)


def load_stored(engine: Engine, *, seqs: Sequence[int]) -> dict[int, StoredDecision]:
    """Decisions already stored for these stream sequences (a redelivery, or another replica's work)."""
    if not seqs:
        return {}
    wanted = set(seqs)
    # Batches are runs of nearly consecutive sequences: one range scan instead of a long IN list.
    query = sa.select(*_STORED_COLUMNS).where(_decision.c.stream_seq.between(min(seqs), max(seqs)))
    with engine.connect() as conn:
        return {s.stream_seq: s for s in map(_stored, conn.execute(query)) if s.stream_seq in wanted}


def load_priors(engine: Engine, *, event_ids: Iterable[str]) -> dict[str, PriorRecord]:
    """The idempotency records of these event ids."""
    ids = list(set(event_ids))
    if not ids:
        return {}
    out: dict[str, PriorRecord] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 900):  # below SQLite's bound-parameter limit
            query = sa.select(_claim.c.event_id, _claim.c.content_hash, _claim.c.admitted_seq, _claim.c.agency).where(
                _claim.c.event_id.in_(ids[start : start + 900])
            )
            for event_id, digest, admitted_seq, agency in conn.execute(query):
                out[event_id] = PriorRecord(content_hash=digest, admitted=admitted_seq is not None, agency=agency)
    return out


class WriteConflict(Exception):
    """Another replica stored part of this batch first: decide the batch again from the store."""


def write_batch(
    engine: Engine,
    *,
    decisions: Sequence[DecisionRecord],
    claims: Sequence[NewClaim],
    late_admissions: Sequence[LateAdmission],
) -> None:
    """Store a batch's decisions and idempotency records in one transaction, or nothing (WriteConflict)."""
    if not decisions:
        return
    if engine.dialect.name == "sqlite":
        _write_batch_sqlite(engine, decisions=decisions, claims=claims, late_admissions=late_admissions)
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


_DECISION_COLUMNS = tuple(c.name for c in _decision.columns)
_CLAIM_COLUMNS = tuple(c.name for c in _claim.columns)
# Rows are written as the tuples they are: their fields must be the tables' columns, in order.
if DecisionRecord._fields != _DECISION_COLUMNS or NewClaim._fields != _CLAIM_COLUMNS:
    raise RuntimeError(f"row types out of step with the tables: {_DECISION_COLUMNS}, {_CLAIM_COLUMNS}")
#: PostgreSQL: each batch's rows in one statement, as column arrays (see `ColumnArrays` for the figures).
_PG_DECISION_INSERT = ColumnArrays(_decision, _DECISION_COLUMNS)
_PG_CLAIM_INSERT = ColumnArrays(_claim, _CLAIM_COLUMNS)
if [c.name for c in _decision.columns if isinstance(c.type, sa.DateTime)] != ["received_at", "admitted_at"]:
    raise RuntimeError("`_sqlite_row` writes the decision's times at positions 8 and 9")
_SQLITE_DECISION_INSERT = (
    f"INSERT INTO decision ({', '.join(_DECISION_COLUMNS)}) VALUES ({', '.join('?' * len(_DECISION_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)
_SQLITE_CLAIM_INSERT = (
    f"INSERT INTO event_id_claim ({', '.join(_CLAIM_COLUMNS)}) VALUES ({', '.join('?' * len(_CLAIM_COLUMNS))}) "
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


def _admit_late(conn: sa.Connection, late_admissions: Sequence[LateAdmission]) -> None:
    for late in late_admissions:
        result = conn.execute(
            sa.update(_claim)
            .where(_claim.c.event_id == late.event_id, _claim.c.admitted_seq.is_(None))
            .values(admitted_seq=late.admitted_seq)
        )
        if result.rowcount != 1:
            raise WriteConflict(f"event id {late.event_id} was admitted by another replica")


# --- reading for HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventHistory:
    """Every decision made for one event_id, and which of them is the event's outcome."""

    main: StoredDecision
    attempts: list[StoredDecision]


def event_history(engine: Engine, *, event_id: str) -> EventHistory | None:
    with engine.connect() as conn:
        rows = [
            _stored(r)
            for r in conn.execute(
                sa.select(*_STORED_COLUMNS).where(_decision.c.event_id == event_id).order_by(_decision.c.stream_seq)
            )
        ]
        if not rows:
            return None
        claim = conn.execute(
            sa.select(_claim.c.first_seq, _claim.c.admitted_seq).where(_claim.c.event_id == event_id)
        ).first()
    main_seq = rows[0].stream_seq
    if claim is not None:
        main_seq = claim.admitted_seq if claim.admitted_seq is not None else claim.first_seq
    main = next((r for r in rows if r.stream_seq == main_seq), rows[0])
    return EventHistory(main=main, attempts=[r for r in rows if r is not main])


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    decision: StoredDecision
    payload: bytes | None


def list_rejections(
    engine: Engine, *, agency: str | None, reason: str | None, limit: int, offset: int
) -> tuple[list[RejectionRecord], int]:
    """Rejections, newest first, with their total under the same filters."""
    conditions = [_decision.c.outcome == OUTCOME_REJECTED]
    if agency is not None:
        conditions.append(_decision.c.agency == agency)
    if reason is not None:
        conditions.append(_decision.c.reason == reason)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(_decision).where(*conditions)).scalar_one()
        rows = conn.execute(
            sa.select(*_STORED_COLUMNS, _decision.c.payload)
            .where(*conditions)
            .order_by(_decision.c.stream_seq.desc())
            .limit(limit)
            .offset(offset)
        ).all()
    items = [RejectionRecord(decision=_stored(r), payload=r.payload) for r in rows]
    return items, int(total)


def count_outcomes(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(_decision.c.outcome, sa.func.count()).group_by(_decision.c.outcome)).all()
    return {outcome: int(n) for outcome, n in rows}


def writable(engine: Engine) -> bool:
    """Whether a write could start now (SQLite: the write lock is free within 200 ms; PostgreSQL: it answers)."""
    if engine.dialect.name != "sqlite":
        return ping(engine)
    try:
        with engine.connect() as conn:
            busy = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
            conn.exec_driver_sql("PRAGMA busy_timeout = 200")
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.exec_driver_sql("ROLLBACK")
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy or 0)}")
    except sa.exc.SQLAlchemyError:
        return False
    return True


def ping(engine: Engine) -> bool:
    """Whether the store answers a query now."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.SQLAlchemyError:
        return False
    return True
