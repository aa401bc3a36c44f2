"""The reporting store's tables and rows: what `repository` reads and writes (its SQL is there).

The store holds three tables, and the reporting cycle's (`reporting.cycle.tables`):

- `events`: the reporting store's own copy of every admitted event, unique on (agency, event_id);
- `effective_reports`: the effective report per (quarter, measure, agency), derived from `events`;
- `quarter_revisions`: bookkeeping, not content: a counter per quarter bumped by every transaction that
  touches the quarter, so that readers can cache a quarter's rollup until it changes; with the measures that
  transaction touched (`touched`, from revision `touched_since`), so that a reader holding the revision before
  updates its tallies by those measures instead of reading the quarter again.

The tables are built by a factory so that `rebuild` can fill a shadow copy under other names and swap it
in; constraint and index names carry a tag because PostgreSQL keeps them unique per schema.
Timestamps are stored as integer microseconds since the epoch (exact ordering on both databases) next to
the RFC 3339 text as reported (keeping the reporter's offset).

Rows go in and come out as named tuples (`EventRow`, `EffectiveRow`) whose fields are the tables' columns in
order: cheap to make in bulk, read by name anywhere.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Engine

from reporting.cycle.tables import CYCLE_BASES, CycleTables, cycle_tables
from reporting.domain import EFFECTIVE_ORDER, KpiReading
from shinchoku_runtime.db import size_sqlite_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Canonical UUID text compared byte-wise on both databases (PostgreSQL's default collation may not).
_EVENT_ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")

LIVE_SUFFIX = ""
SHADOW_SUFFIX = "__rebuild"
OLD_SUFFIX = "__old"


def to_micros(moment: datetime) -> int:
    """Exact microseconds since the epoch of an aware moment (integer arithmetic, no float rounding)."""
    if moment.tzinfo is None:
        raise ValueError("a moment needs a UTC offset")
    since = moment - _EPOCH
    return (since.days * 86400 + since.seconds) * 1_000_000 + since.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class Store:
    """One set of the store's tables (the live one, or a shadow being rebuilt)."""

    metadata: sa.MetaData
    events: sa.Table
    effective: sa.Table
    revisions: sa.Table
    #: The reporting cycle's tables (`reporting.cycle.tables`).
    cycle: CycleTables
    #: Indexes created after a bulk load rather than with the tables.
    late_indexes: tuple[sa.Index, ...]
    suffix: str = LIVE_SUFFIX
    tag: str = ""

    @property
    def tables(self) -> tuple[sa.Table, ...]:
        return (self.events, self.effective, self.revisions, *self.cycle.tables)


def store_tables(*, suffix: str = LIVE_SUFFIX, tag: str = "") -> Store:
    """The store's tables named `events{suffix}` etc., with constraint and index names ending in `tag`."""
    metadata = sa.MetaData()
    events = sa.Table(
        f"events{suffix}",
        metadata,
        sa.Column("event_id", _EVENT_ID, nullable=False),
        sa.Column("measure_id", sa.String(16), nullable=False),
        sa.Column("agency", sa.String(16), nullable=False),
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reported_at_us", sa.BigInteger, nullable=False),
        sa.Column("reported_at", sa.String(40), nullable=False),
        sa.Column("on_time", sa.Boolean, nullable=False),
        sa.Column("admitted_at_us", sa.BigInteger, nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("kpis", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("reporter", sa.String(200), nullable=True),
        sa.Column("backfilled", sa.Boolean, nullable=False, server_default=sa.false()),
        # When the platform received the report (RFC 3339; the broker's timestamp): what on_time is judged by.
        sa.Column("received_at", sa.String(40), nullable=True),
        # An event id is its agency's own (DESIGN.md "Admission rules"): two agencies may use one id.
        sa.PrimaryKeyConstraint("agency", "event_id", name=f"pk_events{tag}"),
    )
    effective = sa.Table(
        f"effective_reports{suffix}",
        metadata,
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("measure_id", sa.String(16), nullable=False),
        sa.Column("agency", sa.String(16), nullable=False),
        sa.Column("event_id", _EVENT_ID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reported_at_us", sa.BigInteger, nullable=False),
        sa.Column("reported_at", sa.String(40), nullable=False),
        sa.Column("on_time", sa.Boolean, nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("kpis", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("reporter", sa.String(200), nullable=True),
        sa.Column("backfilled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("received_at", sa.String(40), nullable=True),
        # The report's review state (the reporting cycle): its latest admitted review, `pending` while none; the
        # returned report it answers (an agency's next report after a return).
        sa.Column("review", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("review_id", _EVENT_ID, nullable=True),
        sa.Column("review_comment", sa.Text, nullable=True),
        sa.Column("answers", _EVENT_ID, nullable=True),
        sa.PrimaryKeyConstraint(*EFFECTIVE_KEY, name=f"pk_effective_reports{tag}"),
    )
    revisions = sa.Table(
        f"quarter_revisions{suffix}",
        metadata,
        sa.Column("fiscal_year", sa.Integer, nullable=False),
        sa.Column("quarter", sa.SmallInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("last_admitted_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        # The revision before the last bump, and the measures (JSON list) whose effective reports that bump's
        # transaction may have changed; NULL: not known (a rebuild's store), read the quarter in full.
        sa.Column("touched_since", sa.BigInteger, nullable=True),
        sa.Column("touched", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("fiscal_year", "quarter", name=f"pk_quarter_revisions{tag}"),
    )
    late = (
        sa.Index(f"ix_events_quarter_admitted{tag}", events.c.fiscal_year, events.c.quarter, events.c.admitted_at_us),
        sa.Index(f"ix_effective_reports_measure{tag}", effective.c.measure_id),
    )
    cycle = cycle_tables(metadata, suffix=suffix, tag=tag)
    return Store(metadata, events, effective, revisions, cycle, late, suffix, tag)


#: The base names of every table of a store (a store's names add its suffix).
TABLE_BASES: Final[tuple[str, ...]] = ("events", "effective_reports", "quarter_revisions", *CYCLE_BASES)


# --- Rows ------------------------------------------------------------------------------------


class EventRow(NamedTuple):
    """An `events` row: an admitted event as the store keeps it (fields in column order)."""

    event_id: str
    measure_id: str
    agency: str
    fiscal_year: int
    quarter: int
    status: str
    reported_at_us: int
    reported_at: str
    on_time: bool
    admitted_at_us: int
    subject: str
    progress: float | None
    kpis: str | None
    note: str | None
    reporter: str | None
    backfilled: bool
    received_at: str | None


class EffectiveRow(NamedTuple):
    """An `effective_reports` row: the effective report of its key, copied from its event (column order)."""

    fiscal_year: int
    quarter: int
    measure_id: str
    agency: str
    event_id: str
    status: str
    reported_at_us: int
    reported_at: str
    on_time: bool
    progress: float | None
    kpis: str | None
    note: str | None
    reporter: str | None
    backfilled: bool
    received_at: str | None
    review: str
    review_id: str | None
    review_comment: str | None
    answers: str | None

    @classmethod
    def of_event(cls, row: EventRow) -> EffectiveRow:
        """The effective report an event makes: the event's columns this table has, picked by name; its review
        state `pending` (a report's reviews come after it in the log)."""
        # `tuple.__new__` rather than `_make`: once per event in a rebuild, and the picked values are complete.
        effective: EffectiveRow = tuple.__new__(cls, (*_effective_from_event(row), *_PENDING))
        return effective


EVENT_COLUMNS: Final[tuple[str, ...]] = EventRow._fields
EFFECTIVE_COLUMNS: Final[tuple[str, ...]] = EffectiveRow._fields
#: What an effective report is the effective report of: one agency on one measure in one quarter.
EFFECTIVE_KEY: Final[tuple[str, ...]] = ("fiscal_year", "quarter", "measure_id", "agency")
#: The columns an effective report copies from its event (besides its key).
EFFECTIVE_VALUES: Final[tuple[str, ...]] = tuple(c for c in EFFECTIVE_COLUMNS if c not in EFFECTIVE_KEY)

#: The columns that store what the domain's `EFFECTIVE_ORDER` compares, in its order: moments as exact
#: microseconds since the epoch (the RFC 3339 text keeps the reporter's offset and does not order).
ORDER_COLUMNS: Final[tuple[str, ...]] = tuple({"reported_at": "reported_at_us"}.get(f, f) for f in EFFECTIVE_ORDER)

#: The review state's columns of an effective report, and their values for a report no review has reached yet.
REVIEW_COLUMNS: Final[tuple[str, ...]] = ("review", "review_id", "review_comment", "answers")
_PENDING = ("pending", None, None, None)
_effective_from_event = operator.itemgetter(
    *(EVENT_COLUMNS.index(name) for name in EFFECTIVE_COLUMNS if name not in REVIEW_COLUMNS)
)

#: The key of an `EventRow` or `EffectiveRow` (`EFFECTIVE_KEY`) and what "the latest report wins" compares in it
#: (`ORDER_COLUMNS`): of two rows with one key, the one with the greater order is the effective report.
effective_key = operator.attrgetter(*EFFECTIVE_KEY)
stored_order = operator.attrgetter(*ORDER_COLUMNS)


#: What `json.dumps(…, separators=(",", ":"))` builds on every call, built once (the same output).
_KPIS_ENCODER = json.JSONEncoder(separators=(",", ":"))


def kpis_json(kpis: Sequence[KpiReading]) -> str | None:
    if not kpis:
        return None
    return _KPIS_ENCODER.encode([{"target": k.target, "value": k.value, "as_of": k.as_of.isoformat()} for k in kpis])


def parse_kpis(text: str | None) -> tuple[KpiReading, ...]:
    if not text:
        return ()
    return tuple(
        KpiReading(int(k["target"]), float(k["value"]), date.fromisoformat(k["as_of"])) for k in json.loads(text)
    )


LIVE = store_tables()


#: SQLite page cache per connection (KiB when negative) and memory-mapped reads: the `events` primary key is
#: a random UUID, so inserts touch pages all over its index; with SQLite's default 2 MB cache each insert into
#: a store of a million events went to the file for them.
SQLITE_CACHE_KIB = 131_072
SQLITE_MMAP_BYTES = 512 * 1024 * 1024


def tune(engine: Engine) -> Engine:
    """Give a SQLite engine a page cache and memory-mapped reads sized for the store (no-op on PostgreSQL)."""
    return size_sqlite_cache(engine, cache_kib=SQLITE_CACHE_KIB, mmap_bytes=SQLITE_MMAP_BYTES)
