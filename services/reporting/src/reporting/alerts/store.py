"""The alerts' own tables and all their SQL (reporting's database, outside the rebuilt store).

- `alerts`: one row per condition ever raised (`alert_id`), its state and occurrence (a condition that ends and
  starts again is its next occurrence), the moments and the messages as raised.
- `alert_outbox`: each raise and resolve to publish on ALERTS and to post to the webhook, unique per (alert id,
  state, occurrence): written in the transaction that changes the alert, so nothing is published that was not
  committed and nothing committed is left unpublished.
The secretariat's reviews (for `returned`, `kpi_jump`) are read from the reporting cycle's `reviews` table.

A rebuild replaces the store's tables, not these: the alerts raised stay raised, and since the rebuilt store
holds the same facts, the next evaluation finds the same conditions and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from contracts.alerts import AlertEvent
from reporting.alerts.conditions import Review
from reporting.tables import LIVE, from_micros, to_micros
from shinchoku_runtime.db import serialize_schema_changes

metadata = sa.MetaData()

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("alert_id", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("agency", sa.String(16), nullable=False),
    sa.Column("measure_id", sa.String(16), nullable=True),
    sa.Column("fiscal_year", sa.Integer, nullable=True),
    sa.Column("quarter", sa.SmallInteger, nullable=True),
    sa.Column("target_index", sa.Integer, nullable=True),
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("occurrence", sa.Integer, nullable=False),
    sa.Column("raised_at_us", sa.BigInteger, nullable=False),
    sa.Column("resolved_at_us", sa.BigInteger, nullable=True),
    sa.Column("message_ja", sa.Text, nullable=False),
    sa.Column("message_en", sa.Text, nullable=False),
    sa.Column("refs", sa.Text, nullable=False),
    sa.Index("ix_alerts_agency_state", "agency", "state"),
    sa.Index("ix_alerts_measure", "measure_id"),
)

outbox = sa.Table(
    "alert_outbox",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.String(200), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("occurrence", sa.Integer, nullable=False),
    sa.Column("agency", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("published_at_us", sa.BigInteger, nullable=True),
    sa.Column("webhook_at_us", sa.BigInteger, nullable=True),
    sa.Column("webhook_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("webhook_next_us", sa.BigInteger, nullable=False, default=0),
    sa.UniqueConstraint("alert_id", "state", "occurrence", name="uq_alert_outbox_change"),
)


def create_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        serialize_schema_changes(conn, "reporting-alerts")
        metadata.create_all(conn, checkfirst=True)
        for index in alerts.indexes:  # create_all skips the indexes of a table that exists (added later)
            index.create(conn, checkfirst=True)


# --- alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRow:
    alert_id: str
    kind: str
    agency: str
    measure_id: str | None
    fiscal_year: int | None
    quarter: int | None
    target_index: int | None
    state: str
    occurrence: int
    raised_at_us: int
    resolved_at_us: int | None
    message_ja: str
    message_en: str
    refs: str

    def event(self) -> AlertEvent:
        return AlertEvent.model_validate(
            {
                "alert_id": self.alert_id,
                "kind": self.kind,
                "state": self.state,
                "agency": self.agency,
                "measure_id": self.measure_id,
                "fiscal_year": self.fiscal_year,
                "quarter": self.quarter,
                "target_index": self.target_index,
                "raised_at": from_micros(self.raised_at_us),
                "resolved_at": None if self.resolved_at_us is None else from_micros(self.resolved_at_us),
                "message_ja": self.message_ja,
                "message_en": self.message_en,
                "refs": json.loads(self.refs),
            }
        )


def _alert_row(row: Sequence[Any]) -> AlertRow:
    return AlertRow(*row)


def all_alerts(conn: Connection) -> dict[str, AlertRow]:
    return {row[0]: _alert_row(row) for row in conn.execute(sa.select(*alerts.c))}


def alerts_for_measures(conn: Connection, measure_ids: Sequence[str]) -> dict[str, AlertRow]:
    """The alerts of the measures named (every kind is about one measure)."""
    if not measure_ids:
        return {}
    rows = conn.execute(sa.select(*alerts.c).where(alerts.c.measure_id.in_(list(measure_ids))))
    return {row[0]: _alert_row(row) for row in rows}


def insert_alerts(conn: Connection, rows: Sequence[AlertRow]) -> None:
    """Insert new alerts (one statement for many: a first evaluation may raise thousands)."""
    if rows:
        conn.execute(sa.insert(alerts), [{c.name: getattr(row, c.name) for c in alerts.c} for row in rows])


class Conflict(Exception):
    """Another evaluation (another replica) changed the alert first: roll back and evaluate again."""


def change_alert(conn: Connection, before: AlertRow, after: AlertRow) -> None:
    """Move an alert from `before` to `after`, only if no one else moved it meanwhile."""
    values = {c.name: getattr(after, c.name) for c in alerts.c if c.name != "alert_id"}
    result = conn.execute(
        sa.update(alerts)
        .where(
            alerts.c.alert_id == before.alert_id,
            alerts.c.state == before.state,
            alerts.c.occurrence == before.occurrence,
        )
        .values(**values)
    )
    if result.rowcount != 1:
        raise Conflict(before.alert_id)


def list_alerts(
    conn: Connection,
    *,
    agencies: Sequence[str] | None,
    kind: str | None,
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[list[AlertRow], int]:
    """Alerts newest first (raised or resolved latest), filtered; and how many match."""
    where: list[sa.ColumnElement[bool]] = []
    if agencies is not None:
        where.append(alerts.c.agency.in_(list(agencies)))
    if kind is not None:
        where.append(alerts.c.kind == kind)
    if state is not None:
        where.append(alerts.c.state == state)
    total = conn.execute(sa.select(sa.func.count()).select_from(alerts).where(*where)).scalar_one()
    latest = sa.func.coalesce(alerts.c.resolved_at_us, alerts.c.raised_at_us)
    rows = conn.execute(
        sa.select(*alerts.c).where(*where).order_by(latest.desc(), alerts.c.alert_id).limit(limit).offset(offset)
    )
    return [_alert_row(r) for r in rows], int(total)


# --- outbox ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    alert_id: str
    state: str
    occurrence: int
    agency: str
    kind: str
    payload: str
    webhook_attempts: int = 0


def add_to_outbox(conn: Connection, rows: Sequence[AlertRow]) -> None:
    """Queue each change to publish and to post, in the order given."""
    if not rows:
        return
    conn.execute(
        sa.insert(outbox),
        [
            {
                "alert_id": row.alert_id,
                "state": row.state,
                "occurrence": row.occurrence,
                "agency": row.agency,
                "kind": row.kind,
                "payload": row.event().model_dump_json(),
                "webhook_attempts": 0,
                "webhook_next_us": 0,
            }
            for row in rows
        ],
    )


_OUTBOX_COLUMNS = (
    outbox.c.seq,
    outbox.c.alert_id,
    outbox.c.state,
    outbox.c.occurrence,
    outbox.c.agency,
    outbox.c.kind,
    outbox.c.payload,
    outbox.c.webhook_attempts,
)


def unpublished(conn: Connection, *, limit: int = 500) -> list[OutboxRow]:
    rows = conn.execute(
        sa.select(*_OUTBOX_COLUMNS).where(outbox.c.published_at_us.is_(None)).order_by(outbox.c.seq).limit(limit)
    )
    return [OutboxRow(*r) for r in rows]


def mark_published(conn: Connection, seqs: Sequence[int], at: datetime) -> None:
    if seqs:
        conn.execute(sa.update(outbox).where(outbox.c.seq.in_(list(seqs))).values(published_at_us=to_micros(at)))


def next_for_webhook(conn: Connection, *, now: datetime) -> OutboxRow | None:
    """The oldest change not yet delivered to the webhook (in order: a later one waits for it), if it is due."""
    row = conn.execute(
        sa.select(*_OUTBOX_COLUMNS, outbox.c.webhook_next_us)
        .where(outbox.c.webhook_at_us.is_(None))
        .order_by(outbox.c.seq)
        .limit(1)
    ).first()
    if row is None or row[-1] > to_micros(now):
        return None
    return OutboxRow(*row[:-1])


def claim_webhook_attempt(conn: Connection, row: OutboxRow, *, retry_at: datetime) -> bool:
    """Take the next attempt of `row` (another replica may hold it): the attempt count moves only once."""
    result = conn.execute(
        sa.update(outbox)
        .where(
            outbox.c.seq == row.seq, outbox.c.webhook_attempts == row.webhook_attempts, outbox.c.webhook_at_us.is_(None)
        )
        .values(webhook_attempts=row.webhook_attempts + 1, webhook_next_us=to_micros(retry_at))
    )
    return result.rowcount == 1


def mark_delivered(conn: Connection, seq: int, at: datetime) -> None:
    conn.execute(sa.update(outbox).where(outbox.c.seq == seq).values(webhook_at_us=to_micros(at)))


def outbox_counts(conn: Connection) -> dict[str, int]:
    return {
        "unpublished": conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at_us.is_(None))
        ).scalar_one(),
        "undelivered": conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.webhook_at_us.is_(None))
        ).scalar_one(),
    }


# --- reviews -----------------------------------------------------------------------------------


def latest_reviews(conn: Connection) -> dict[tuple[str, str], Review]:
    """The review state of each reviewed report, keyed by (agency, event id): its latest admitted review, from the
    reporting cycle's `reviews` table (in the log's order, `position`)."""
    t = LIVE.cycle.reviews
    out: dict[tuple[str, str], Review] = {}
    rows = conn.execute(
        sa.select(t.c.agency, t.c.event_id, t.c.review_id, t.c.decision, t.c.comment, t.c.reviewed_at).order_by(
            t.c.position
        )
    )
    for agency, event_id, review_id, decision, comment, reviewed_at in rows:
        out[(agency, event_id)] = Review(review_id, event_id, decision, comment, datetime.fromisoformat(reviewed_at))
    return out
