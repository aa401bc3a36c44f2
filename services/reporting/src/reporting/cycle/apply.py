"""What the cycle's facts do to the store, inside the writer's transaction (in the log's order).

- A review becomes its report's review state (when the report is the effective one of its key).
- A close freezes revision 1 of the quarter: the figures of every reported lead (`reporting.cycle.figures`),
  written to `publications` (the outbox: the document is built and sent after the commit).
- A report or review touching a closed quarter: its measure's figures are computed again and compared with
  the latest revision's; a difference writes the next revision, with the changes and the fact that made them.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from reporting import repository
from reporting.cycle.facts import CloseFact, ReviewFact, store_close, store_review
from reporting.cycle.figures import changes_between, figures_json, figures_of, parse_figures
from reporting.tables import Store, from_micros


def apply_review(conn: Connection, store: Store, fact: ReviewFact) -> bool:
    """Keep the review and make it its report's review state; whether it was new."""
    if not store_review(conn, store.cycle, fact):
        return False
    row, eff = fact.row, store.effective
    conn.execute(
        sa.update(eff)
        .where(
            eff.c.fiscal_year == row["fiscal_year"],
            eff.c.quarter == row["quarter"],
            eff.c.measure_id == row["measure_id"],
            eff.c.agency == row["agency"],
            eff.c.event_id == row["event_id"],
        )
        .values(review=row["decision"], review_id=row["review_id"], review_comment=row["comment"])
    )
    return True


def apply_close(conn: Connection, store: Store, fact: CloseFact) -> bool:
    """Keep the close and freeze revision 1 of the quarter; whether it was new (a second close changes nothing)."""
    if not store_close(conn, store.cycle, fact):
        return False
    fy, q = fact.quarter
    figures = figures_of(repository.effective_for_quarter(conn, fiscal_year=fy, quarter=q, store=store))
    at = from_micros(fact.admitted_at_us).isoformat()
    _write_revision(
        conn,
        store,
        fy,
        q,
        1,
        at_us=fact.admitted_at_us,
        at=at,
        published_at=at,
        figures=figures_json(figures),
        changes=[],
    )
    return True


def restate_if_changed(
    conn: Connection, store: Store, quarter: tuple[int, int], measure_id: str, *, cause: str, admitted_at_us: int
) -> int | None:
    """After a fact (`cause`: its event_id or review_id) touched `measure_id` in a closed quarter: the next revision
    if its leads' figures changed (returned), else None."""
    fy, q = quarter
    pubs = store.cycle.publications
    latest = conn.execute(
        sa.select(pubs.c.revision, pubs.c.figures, pubs.c.published_at)
        .where(pubs.c.fiscal_year == fy, pubs.c.quarter == q)
        .order_by(pubs.c.revision.desc())
        .limit(1)
    ).first()
    if latest is None:
        return None
    before = parse_figures(latest.figures)
    eff = store.effective
    reports = repository.effective_where(
        conn, store, eff.c.fiscal_year == fy, eff.c.quarter == q, eff.c.measure_id == measure_id
    )
    after = {k: v for k, v in before.items() if k[0] != measure_id} | figures_of(reports)
    changes = changes_between(before, after, measure_id, cause)
    if not changes:
        return None
    revision = int(latest.revision) + 1
    at = from_micros(admitted_at_us).isoformat()
    _write_revision(
        conn, store, fy, q, revision, at_us=admitted_at_us, at=at, published_at=latest.published_at,
        figures=figures_json(after), changes=changes,
    )  # fmt: skip
    return revision


def _write_revision(
    conn: Connection,
    store: Store,
    fiscal_year: int,
    quarter: int,
    revision: int,
    *,
    at_us: int,
    at: str,
    published_at: str,
    figures: str,
    changes: list[dict[str, Any]],
) -> None:
    conn.execute(
        sa.insert(store.cycle.publications).values(
            fiscal_year=fiscal_year,
            quarter=quarter,
            revision=revision,
            at_us=at_us,
            at=at,
            published_at=published_at,
            figures=figures,
            changes=json.dumps(changes, separators=(",", ":"), ensure_ascii=False),
            document=None,
            sha256=None,
            sent=False,
        )
    )
