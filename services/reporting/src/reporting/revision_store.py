"""The SQL of the quarters' revisions: each transaction bumps the revision of every quarter it touched, once, with
the measures it touched (`touch`, `bump_revisions`), so that a reader holding the revision before updates its
tallies by those measures only (`touched_since`, `quarter_states`; see `reporting.tallies`). A rebuilt store
records no touched measures (`fill_revisions_from_events`): a reader reads such a quarter in full.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Connection

from reporting.repository import LIVE, Store, insert_for, prebuilt, to_micros


class Touched(NamedTuple):
    """What a transaction did to one quarter: the greatest admitted_at_us it applied and the measures whose
    effective reports it may have changed."""

    admitted_at_us: int
    measures: frozenset[str]


def touch(into: dict[tuple[int, int], Touched], quarter: tuple[int, int], admitted_at_us: int, *measures: str) -> None:
    """Add a fact's quarter and measures to what a transaction touched (`bump_revisions` writes it once)."""
    found = into.get(quarter)
    if found is None:
        into[quarter] = Touched(admitted_at_us, frozenset(measures))
    else:
        into[quarter] = Touched(max(found.admitted_at_us, admitted_at_us), found.measures | frozenset(measures))


def bump_revisions(
    conn: Connection, *, store: Store, quarters: Mapping[tuple[int, int], Touched], now: datetime | None = None
) -> None:
    """Bump the revision of each touched quarter (once per transaction: a reader that holds the revision before
    updates by `touched`), with the measures touched and the revision they are counted from."""
    if not quarters:
        return
    table = store.revisions
    ins = insert_for(conn, table)
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
            "touched_since": table.c.revision,
            "touched": ins.excluded.touched,
        },
    )
    stamp = to_micros(now or datetime.now(UTC))
    rows = [
        {
            "fiscal_year": fy,
            "quarter": q,
            "revision": 1,
            "last_admitted_at_us": touched.admitted_at_us,
            "updated_at_us": stamp,
            "touched_since": 0,
            "touched": json.dumps(sorted(touched.measures)),
        }
        for (fy, q), touched in sorted(quarters.items())
    ]
    conn.execute(stmt, rows)


class TouchedSince(NamedTuple):
    """A quarter's revision, and the measures its last bump touched counted from `since` (None: not known)."""

    revision: int
    since: int | None
    measures: frozenset[str] | None


def _touched_since(store: Store) -> Any:
    t = store.revisions
    return sa.select(t.c.revision, t.c.touched_since, t.c.touched).where(
        t.c.fiscal_year == sa.bindparam("fiscal_year"), t.c.quarter == sa.bindparam("quarter")
    )


def touched_since(conn: Connection, *, fiscal_year: int, quarter: int, store: Store = LIVE) -> TouchedSince | None:
    """The quarter's revision and what its last bump touched; None when it has no data."""
    params = {"fiscal_year": fiscal_year, "quarter": quarter}
    row = conn.execute(prebuilt(store, "touched_since", _touched_since), params).first()
    return None if row is None else QuarterState(*row).touched_since()


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


def _revisions(store: Store) -> Any:
    t = store.revisions
    return sa.select(t.c.fiscal_year, t.c.quarter, t.c.revision)


def revisions(conn: Connection, *, store: Store = LIVE) -> dict[tuple[int, int], int]:
    """Every quarter's revision (a small table: one row per quarter with data)."""
    return {(fy, q): rev for fy, q, rev in conn.execute(prebuilt(store, "revisions", _revisions))}


class QuarterState(NamedTuple):
    """A quarter's revision, and the measures (JSON text) its last bump touched counted from `since`."""

    revision: int
    since: int | None
    touched: str | None

    def touched_since(self) -> TouchedSince:
        if self.touched is None or self.since is None:
            return TouchedSince(self.revision, None, None)
        return TouchedSince(self.revision, self.since, frozenset(json.loads(self.touched)))


def _quarter_states(store: Store) -> Any:
    t = store.revisions
    return sa.select(t.c.fiscal_year, t.c.quarter, t.c.revision, t.c.touched_since, t.c.touched)


def quarter_states(conn: Connection, *, store: Store = LIVE) -> dict[tuple[int, int], QuarterState]:
    """Every quarter's revision and what its last bump touched (one row per quarter with data)."""
    rows = conn.execute(prebuilt(store, "quarter_states", _quarter_states))
    return {(fy, q): QuarterState(rev, since, touched) for fy, q, rev, since, touched in rows}
