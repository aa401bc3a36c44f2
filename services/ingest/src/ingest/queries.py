"""The SQL behind ingest's HTTP reads: what became of an agency's event id, pages of rejections, readiness."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Engine

from ingest.repository import STORED_COLUMNS, StoredDecision, stored_decision
from ingest.tables import OUTCOME_REJECTED, claim_table, decision_table


@dataclass(frozen=True, slots=True)
class EventHistory:
    """Every decision made for one agency's event_id, and which of them is the event's outcome."""

    main: StoredDecision
    attempts: list[StoredDecision]


def event_histories(engine: Engine, *, event_id: str, agency: str | None = None) -> dict[str, EventHistory]:
    """The history of `event_id` per agency that used it (only `agency`'s when given): an event id is an
    agency's own, and two agencies may have used the same one."""
    conditions = [decision_table.c.event_id == event_id]
    if agency is not None:
        conditions.append(decision_table.c.agency == agency)
    with engine.connect() as conn:
        rows = [
            stored_decision(r)
            for r in conn.execute(sa.select(*STORED_COLUMNS).where(*conditions).order_by(decision_table.c.stream_seq))
        ]
        if not rows:
            return {}
        claims = {
            claim.agency: claim.admitted_seq if claim.admitted_seq is not None else claim.first_seq
            for claim in conn.execute(
                sa.select(claim_table.c.agency, claim_table.c.first_seq, claim_table.c.admitted_seq).where(
                    claim_table.c.event_id == event_id
                )
            )
        }
    by_agency: dict[str, list[StoredDecision]] = {}
    for row in rows:
        by_agency.setdefault(row.agency, []).append(row)
    out: dict[str, EventHistory] = {}
    for name, decisions in sorted(by_agency.items()):
        main_seq = claims.get(name, decisions[0].stream_seq)
        main = next((d for d in decisions if d.stream_seq == main_seq), decisions[0])
        out[name] = EventHistory(main=main, attempts=[d for d in decisions if d is not main])
    return out


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    decision: StoredDecision
    payload: bytes | None


#: Rows whose payloads are read at once while a page is assembled.
_PAYLOAD_CHUNK = 16


def list_rejections(
    engine: Engine,
    *,
    agency: str | None,
    reason: str | None,
    limit: int,
    offset: int,
    payload_budget: int | None = None,
) -> tuple[list[RejectionRecord], int]:
    """Rejections, newest first, with their total under the same filters.

    With `payload_budget`, the page stops before the rejection whose original bytes would take it past that
    many bytes (it holds at least one): a page of large payloads is bounded in memory whatever `limit` says,
    and a shorter page than asked for is how the caller knows to page on.
    """
    conditions = [decision_table.c.outcome == OUTCOME_REJECTED]
    if agency is not None:
        conditions.append(decision_table.c.agency == agency)
    if reason is not None:
        conditions.append(decision_table.c.reason == reason)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(decision_table).where(*conditions)).scalar_one()
        rows = conn.execute(
            sa.select(*STORED_COLUMNS, sa.func.coalesce(sa.func.length(decision_table.c.payload), 0).label("size"))
            .where(*conditions)
            .order_by(decision_table.c.stream_seq.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        page: list[StoredDecision] = []
        spent = 0
        for row in rows:
            if payload_budget is not None and page and spent + row.size > payload_budget:
                break
            spent += row.size
            page.append(stored_decision(row))
        payloads = dict(_payloads(conn, [d.stream_seq for d in page]))
    return [RejectionRecord(decision=d, payload=payloads.get(d.stream_seq)) for d in page], int(total)


def _payloads(conn: sa.Connection, seqs: list[int]) -> Iterator[tuple[int, bytes | None]]:
    for start in range(0, len(seqs), _PAYLOAD_CHUNK):
        chunk = seqs[start : start + _PAYLOAD_CHUNK]
        query = sa.select(decision_table.c.stream_seq, decision_table.c.payload).where(
            decision_table.c.stream_seq.in_(chunk)
        )
        yield from ((seq, payload) for seq, payload in conn.execute(query))


# --- readiness ------------------------------------------------------------------------------------------------


def count_outcomes(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(decision_table.c.outcome, sa.func.count()).group_by(decision_table.c.outcome)
        ).all()
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
