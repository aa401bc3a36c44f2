"""The reporting cycle's tables (DESIGN.md "The reporting cycle"): closes, reviews, the order cursor, publications.

- `closes`: the admitted closes, one per quarter (a closed quarter stays closed).
- `reviews`: every admitted review, in the order it was applied (`position`); a report's review state is its latest.
- `cycle_cursor`: one row, the ACCEPTED stream sequence of the last fact applied (facts are applied in the log's order).
- `publications`: every revision of every closed quarter: the figures it froze, what changed since the revision
  before, the document (built from the figures) and its SHA-256, and whether it was sent on PUBLICATIONS (the
  outbox: written in the transaction of the fact that made the revision, sent afterwards).

Built by `reporting.tables.store_tables` with the other tables, so that a rebuild fills and swaps them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

_ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")


@dataclass(frozen=True)
class CycleTables:
    closes: sa.Table
    reviews: sa.Table
    cursor: sa.Table
    publications: sa.Table

    @property
    def tables(self) -> tuple[sa.Table, ...]:
        return (self.closes, self.reviews, self.cursor, self.publications)


#: The cycle's tables' base names (a store's names add its suffix).
CYCLE_BASES = ("closes", "reviews", "cycle_cursor", "publications")


def cycle_tables(metadata: sa.MetaData, *, suffix: str, tag: str) -> CycleTables:
    closes = sa.Table(
        f"closes{suffix}",
        metadata,
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("close_id", _ID, nullable=False),
        sa.Column("closed_at", sa.String(40), nullable=False),
        sa.Column("closed_by", sa.String(200), nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("admitted_at_us", sa.BigInteger, nullable=False),
        sa.Column("admitted_at", sa.String(40), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("fiscal_year", "quarter", name=f"pk_closes{tag}"),
    )
    reviews = sa.Table(
        f"reviews{suffix}",
        metadata,
        sa.Column("review_id", _ID, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("agency", sa.String(16), nullable=False),
        sa.Column("event_id", _ID, nullable=False),
        sa.Column("measure_id", sa.String(16), nullable=False),
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("reviewed_at", sa.String(40), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("admitted_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("review_id", name=f"pk_reviews{tag}"),
        sa.Index(f"ix_reviews_report{tag}", "agency", "event_id"),
    )
    cursor = sa.Table(
        f"cycle_cursor{suffix}",
        metadata,
        sa.Column("id", sa.SmallInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_cycle_cursor{tag}"),
    )
    publications = sa.Table(
        f"publications{suffix}",
        metadata,
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        #: published_at (revision 1) or restated_at: the admission time of the fact that made the revision.
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("published_at", sa.String(40), nullable=False),
        #: JSON: the figures of every reported lead, [[measure_id, agency, status, on_time, review], …] sorted.
        sa.Column("figures", sa.Text, nullable=False),
        #: JSON: [{measure_id, agency, before, after, event_ids}] (empty for revision 1).
        sa.Column("changes", sa.Text, nullable=False),
        #: The frozen document (canonical JSON) and its SHA-256, built from `figures` and the catalog.
        sa.Column("document", sa.Text, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("sent", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("fiscal_year", "quarter", "revision", name=f"pk_publications{tag}"),
    )
    return CycleTables(closes, reviews, cursor, publications)
