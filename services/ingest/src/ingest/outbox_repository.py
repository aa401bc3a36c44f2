"""The outbox's SQL: decisions stored but not (known to be) published, and one reconciler at a time.

A decision is unpublished while its `published_seq` is NULL (a duplicate publishes nothing). The partial
index `ix_decision_unpublished` holds exactly those rows, so counting and listing them stays cheap however
large the decision table grows.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterable
from pathlib import Path
from typing import IO, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Engine

from ingest.domain import ClaimKey
from ingest.repository import STORED_COLUMNS, StoredDecision, stored_decision
from ingest.tables import OUTCOME_DUPLICATE, claim_table, decision_table

_d = decision_table
_unpublished = sa.and_(_d.c.published_seq.is_(None), _d.c.outcome != OUTCOME_DUPLICATE)


class Unpublished(NamedTuple):
    """A stored decision to publish: the row, and the original bytes when the store keeps them (rejections)."""

    decision: StoredDecision
    payload: bytes | None


def count_unpublished(engine: Engine) -> tuple[int, int | None]:
    """How many decisions wait to be published, and the STATUS sequence of the oldest."""
    with engine.connect() as conn:
        count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(_d.c.stream_seq)).where(_unpublished)).one()
    return int(count), oldest


def load_unpublished(engine: Engine, *, limit: int) -> list[Unpublished]:
    """The oldest `limit` unpublished decisions, in stream order."""
    query = sa.select(*STORED_COLUMNS, _d.c.payload).where(_unpublished).order_by(_d.c.stream_seq).limit(limit)
    with engine.connect() as conn:
        return [Unpublished(stored_decision(r), r.payload) for r in conn.execute(query)]


def unpublished_admissions(engine: Engine, *, keys: Iterable[ClaimKey]) -> list[Unpublished]:
    """The admissions of these (agency, event_id) pairs that are not published (an identical resend came)."""
    wanted = set(keys)
    if not wanted:
        return []
    c = claim_table
    query = (
        sa.select(*STORED_COLUMNS, c.c.agency.label("claim_agency"), c.c.event_id.label("claim_event_id"))
        .select_from(c.join(_d, _d.c.stream_seq == c.c.admitted_seq))
        .where(c.c.event_id.in_([event_id for _, event_id in wanted]), _d.c.published_seq.is_(None))
    )
    with engine.connect() as conn:
        return [
            Unpublished(stored_decision(r), None)
            for r in conn.execute(query)
            if (r.claim_agency, r.claim_event_id) in wanted
        ]


def max_published_seq(engine: Engine, *, outcome: str) -> int:
    """The greatest sequence decisions of this outcome were published at (0: none)."""
    with engine.connect() as conn:
        top = conn.execute(sa.select(sa.func.max(_d.c.published_seq)).where(_d.c.outcome == outcome)).scalar()
    return int(top or 0)


def unmark_after(engine: Engine, *, outcome: str, seq: int) -> list[Unpublished]:
    """Decisions of this outcome published after `seq` become unpublished again (their stream lost them)."""
    with engine.begin() as conn:
        lost = [
            Unpublished(stored_decision(r), r.payload)
            for r in conn.execute(
                sa.select(*STORED_COLUMNS, _d.c.payload)
                .where(_d.c.outcome == outcome, _d.c.published_seq > seq)
                .order_by(_d.c.stream_seq)
            )
        ]
        conn.execute(sa.update(_d).where(_d.c.outcome == outcome, _d.c.published_seq > seq).values(published_seq=None))
    return lost


class PassLock:
    """Held by the one ingest process reconciling now, so that replicas do not all republish at once.

    PostgreSQL: a transaction-level advisory lock, held by a connection kept open for the pass. SQLite (one
    machine): an exclusive `flock` on a file beside the database. Both go with the process if it dies; neither
    depends on clocks. Not holding it is no error: republishing is idempotent, the lock only saves work.
    """

    KEY = "shinchoku ingest reconciler"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: sa.Connection | None = None
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free now (never waits)."""
        if self._engine.dialect.name == "postgresql":
            conn = self._engine.connect()
            got = bool(
                conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(hashtext(:key))"), {"key": self.KEY}).scalar()
            )
            if got:
                self._conn = conn
            else:
                conn.close()
            return got
        database = self._engine.url.database
        if not database or database == ":memory:":
            return True  # a private in-memory store: this process is the only one
        handle = Path(f"{database}.reconciler.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.rollback()  # ends the transaction, and with it the lock
            self._conn.close()
            self._conn = None
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
