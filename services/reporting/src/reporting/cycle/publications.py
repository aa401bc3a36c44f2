"""Reading and completing `publications`: every revision's document, its digest, and the message that publishes it.

A revision is written by the writer's transaction with its frozen figures (`reporting.cycle.apply`); its document
is built from them and the catalog the first time anyone needs it (the outbox sending it, a reader asking for
`?revision=N`) and kept: `UPDATE … WHERE document IS NULL`, so that replicas building it at once keep the first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from contracts.catalog import Measure
from contracts.cycle import Published, Restated, RollupChange, RollupDocument, canonical_json
from contracts.periods import FiscalQuarter
from reporting.cycle.documents import build_document
from reporting.cycle.figures import parse_figures
from reporting.tables import LIVE, Store


@dataclass(frozen=True, slots=True)
class Revision:
    fiscal_year: int
    quarter: int
    revision: int
    at: str
    published_at: str
    changes: list[dict[str, Any]]
    document: RollupDocument
    sha256: str


def unsent(engine: Engine, *, store: Store = LIVE) -> list[tuple[int, int, int]]:
    """The revisions not sent yet, in the order they were made (per quarter)."""
    t = store.cycle.publications
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.fiscal_year, t.c.quarter, t.c.revision)
            .where(t.c.sent == sa.false())
            .order_by(t.c.at_us, t.c.fiscal_year, t.c.quarter, t.c.revision)
        )
        return [(fy, q, rev) for fy, q, rev in rows]


def mark_sent(engine: Engine, fiscal_year: int, quarter: int, revision: int, *, store: Store = LIVE) -> None:
    t = store.cycle.publications
    with engine.begin() as conn:
        conn.execute(
            sa.update(t)
            .where(t.c.fiscal_year == fiscal_year, t.c.quarter == quarter, t.c.revision == revision)
            .values(sent=True)
        )


def revision(
    engine: Engine, measures: Sequence[Measure], fiscal_year: int, quarter: int, number: int, *, store: Store = LIVE
) -> Revision | None:
    """Revision `number` of a quarter with its document (built and kept now if it had none), or None."""
    t = store.cycle.publications
    where = (t.c.fiscal_year == fiscal_year, t.c.quarter == quarter, t.c.revision == number)
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(*where)).first()
    if row is None:
        return None
    text, digest = row.document, row.sha256
    if text is None:
        built = canonical_json(
            build_document(
                FiscalQuarter(fiscal_year, quarter),
                measures,
                parse_figures(row.figures),
                revision=number,
                published_at=datetime.fromisoformat(row.published_at),
                restated_at=datetime.fromisoformat(row.at) if number > 1 else None,
            )
        )
        text, digest = built.decode(), hashlib.sha256(built).hexdigest()  # = document_sha256 of it
        with engine.begin() as conn:
            kept = conn.execute(sa.update(t).where(*where, t.c.document.is_(None)).values(document=text, sha256=digest))
            if kept.rowcount != 1:  # another replica built it first: its copy is the one kept (and sent)
                text, digest = conn.execute(sa.select(t.c.document, t.c.sha256).where(*where)).one()
    document = RollupDocument.model_validate_json(text)
    return Revision(fiscal_year, quarter, number, row.at, row.published_at, json.loads(row.changes), document, digest)


def revision_numbers(engine: Engine, fiscal_year: int, quarter: int, *, store: Store = LIVE) -> list[int]:
    t = store.cycle.publications
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.revision).where(t.c.fiscal_year == fiscal_year, t.c.quarter == quarter).order_by(t.c.revision)
        )
        return [int(r) for (r,) in rows]


def message(this: Revision, previous: Revision | None) -> Published | Restated:
    """What PUBLICATIONS carries for a revision: `Published` for revision 1, `Restated` for every later one."""
    if this.revision == 1:
        return Published(
            fiscal_year=this.fiscal_year,
            quarter=this.quarter,
            published_at=datetime.fromisoformat(this.published_at),
            sha256=this.sha256,
            rollup=this.document,
        )
    assert previous is not None
    return Restated(
        fiscal_year=this.fiscal_year,
        quarter=this.quarter,
        revision=this.revision,
        previous_revision=previous.revision,
        restated_at=datetime.fromisoformat(this.at),
        sha256=this.sha256,
        rollup=this.document,
        changes=[RollupChange.model_validate(c) for c in this.changes],
        by_status_before=previous.document.by_status,
        by_status_after=this.document.by_status,
    )


def keep_sent(conn: Connection, *, shadow: Store, live: Store) -> None:
    """A rebuild's revisions that the live store had sent are not sent again (same quarter and revision)."""
    sp, lp = shadow.cycle.publications, live.cycle.publications
    sent_before = sa.exists().where(
        lp.c.fiscal_year == sp.c.fiscal_year,
        lp.c.quarter == sp.c.quarter,
        lp.c.revision == sp.c.revision,
        lp.c.sent == sa.true(),
    )
    conn.execute(sa.update(sp).where(sent_before).values(sent=True))
