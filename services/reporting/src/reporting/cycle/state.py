"""Reading the cycle's state of a quarter: closed or not, its latest published revision and when."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from reporting.cycle.tables import CycleTables


@dataclass(frozen=True, slots=True)
class PublicationState:
    """A quarter's place in the cycle, as the rollup document states it."""

    closed: bool
    #: The latest published revision (None while the quarter is open).
    revision: int | None
    #: RFC 3339: when the quarter was closed and first published; when the latest revision restated the one before.
    published_at: str | None
    restated_at: str | None


OPEN = PublicationState(closed=False, revision=None, published_at=None, restated_at=None)


def publication_state(conn: Connection, tables: CycleTables, fiscal_year: int, quarter: int) -> PublicationState:
    closes, pubs = tables.closes, tables.publications
    close = conn.execute(
        sa.select(closes.c.admitted_at).where(closes.c.fiscal_year == fiscal_year, closes.c.quarter == quarter)
    ).first()
    if close is None:
        return OPEN
    latest = conn.execute(
        sa.select(pubs.c.revision, pubs.c.at)
        .where(pubs.c.fiscal_year == fiscal_year, pubs.c.quarter == quarter)
        .order_by(pubs.c.revision.desc())
        .limit(1)
    ).first()
    if latest is None or latest.revision == 1:
        return PublicationState(closed=True, revision=1, published_at=close.admitted_at, restated_at=None)
    return PublicationState(
        closed=True, revision=latest.revision, published_at=close.admitted_at, restated_at=latest.at
    )


def closed_quarters(conn: Connection, tables: CycleTables) -> list[tuple[int, int]]:
    """Every closed quarter as (fiscal_year, quarter), oldest first."""
    closes = tables.closes
    rows = conn.execute(
        sa.select(closes.c.fiscal_year, closes.c.quarter).order_by(closes.c.fiscal_year, closes.c.quarter)
    )
    return [(fy, q) for fy, q in rows]


def is_closed(conn: Connection, tables: CycleTables, fiscal_year: int, quarter: int) -> bool:
    closes = tables.closes
    row = conn.execute(
        sa.select(closes.c.quarter).where(closes.c.fiscal_year == fiscal_year, closes.c.quarter == quarter)
    ).first()
    return row is not None
