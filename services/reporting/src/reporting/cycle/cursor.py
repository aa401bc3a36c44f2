"""The order cursor: the ACCEPTED stream sequence of the last admitted fact applied to the store.

Reports commute ("the latest report wins" whatever the arrival order), but reviews, closes and the revisions of a
closed quarter do not: a close freezes what came before it in the log, a report after it restates. So every
replica applies facts in the log's order: a transaction locks the cursor (`SELECT … FOR UPDATE` on PostgreSQL;
SQLite's write lock, taken by a no-op update), applies the batch's messages that follow it without a gap, and
moves it. Messages further on wait (another replica holds the ones before them) and are nak'ed for a moment if
the gap does not close.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from reporting.tables import Store

_ROW = 1


def lock_cursor(conn: Connection, store: Store) -> int | None:
    """The last applied sequence, locked until the transaction ends (None: no cursor yet)."""
    t = store.cycle.cursor
    if conn.dialect.name == "sqlite":
        conn.execute(sa.update(t).where(t.c.id == _ROW).values(last_seq=t.c.last_seq))
        value = conn.execute(sa.select(t.c.last_seq).where(t.c.id == _ROW)).scalar()
    else:
        value = conn.execute(sa.select(t.c.last_seq).where(t.c.id == _ROW).with_for_update()).scalar()
    return int(value) if value is not None else None


def set_cursor(conn: Connection, store: Store, last_seq: int) -> None:
    t = store.cycle.cursor
    insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
    conn.execute(
        insert.values(id=_ROW, last_seq=last_seq).on_conflict_do_update(
            index_elements=["id"], set_={"last_seq": last_seq}
        )
    )


def init_cursor(engine: Engine, store: Store, last_seq: int) -> int:
    """Start the cursor at `last_seq` (the durable consumer's ack floor) unless it exists; its value."""
    t = store.cycle.cursor
    with engine.begin() as conn:
        insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
        conn.execute(insert.values(id=_ROW, last_seq=last_seq).on_conflict_do_nothing())
        return int(conn.execute(sa.select(t.c.last_seq).where(t.c.id == _ROW)).scalar_one())


def contiguous(last: int, seqs: list[int]) -> set[int]:
    """The sequences that follow `last` without a gap (sequences at or below `last` are applied already)."""
    taken: set[int] = set()
    expected = last + 1
    for seq in sorted(set(seqs)):
        if seq <= last:
            continue
        if seq != expected:
            break
        taken.add(seq)
        expected += 1
    return taken
