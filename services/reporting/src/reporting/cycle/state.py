"""Reading the cycle's state of a quarter: closed or not, its latest published revision and when."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from reporting.cycle.tables import CycleTables
from reporting.repository import built_once


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


def _prebuilt(tables: CycleTables, name: str, build: Callable[[CycleTables], Any]) -> Any:
    """A statement built once per store (its tables' names) and kind, its values bound at execution: these run on
    every rollup read."""
    return built_once((tables.closes.name, name), lambda: build(tables))


def _close_of(tables: CycleTables) -> Any:
    closes = tables.closes
    return sa.select(closes.c.admitted_at).where(
        closes.c.fiscal_year == sa.bindparam("fiscal_year"), closes.c.quarter == sa.bindparam("quarter")
    )


def _latest_revision(tables: CycleTables) -> Any:
    pubs = tables.publications
    return (
        sa.select(pubs.c.revision, pubs.c.at)
        .where(pubs.c.fiscal_year == sa.bindparam("fiscal_year"), pubs.c.quarter == sa.bindparam("quarter"))
        .order_by(pubs.c.revision.desc())
        .limit(1)
    )


def _closed_quarters(tables: CycleTables) -> Any:
    closes = tables.closes
    return sa.select(closes.c.fiscal_year, closes.c.quarter).order_by(closes.c.fiscal_year, closes.c.quarter)


def publication_state(conn: Connection, tables: CycleTables, fiscal_year: int, quarter: int) -> PublicationState:
    params = {"fiscal_year": fiscal_year, "quarter": quarter}
    close = conn.execute(_prebuilt(tables, "close_of", _close_of), params).first()
    if close is None:
        return OPEN
    latest = conn.execute(_prebuilt(tables, "latest_revision", _latest_revision), params).first()
    if latest is None or latest.revision == 1:
        return PublicationState(closed=True, revision=1, published_at=close.admitted_at, restated_at=None)
    return PublicationState(
        closed=True, revision=latest.revision, published_at=close.admitted_at, restated_at=latest.at
    )


def closed_quarters(conn: Connection, tables: CycleTables) -> list[tuple[int, int]]:
    """Every closed quarter as (fiscal_year, quarter), oldest first."""
    rows = conn.execute(_prebuilt(tables, "closed_quarters", _closed_quarters))
    return [(fy, q) for fy, q in rows]


def is_closed(conn: Connection, tables: CycleTables, fiscal_year: int, quarter: int) -> bool:
    params = {"fiscal_year": fiscal_year, "quarter": quarter}
    return conn.execute(_prebuilt(tables, "close_of", _close_of), params).first() is not None
