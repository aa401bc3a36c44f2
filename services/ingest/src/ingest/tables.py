"""Ingest's tables: one decision per STATUS message, the idempotency claims, the closed quarters.

Their meaning is told in `repository`, which holds all of ingest's SQL over them (the outbox's in
`outbox_repository`, the HTTP reads in `queries`).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

OUTCOME_ADMITTED = "admitted"
OUTCOME_REJECTED = "rejected"
#: An identical resend of an admitted event: recorded as an attempt, nothing published.
OUTCOME_DUPLICATE = "duplicate"
#: `published_seq` of the decisions stored before ingest recorded sequences: published, where is not known.
PUBLISHED_BEFORE_OUTBOX = 0
#: What makes a decision the outbox's to publish (partial index and queries alike).
UNPUBLISHED = "published_seq IS NULL AND outcome <> 'duplicate'"


class DecisionRow(SQLModel, table=True):
    """What ingest decided for one STATUS message."""

    __tablename__ = "decision"
    __table_args__ = (
        # Rejections are few: a partial index keeps the hot insert path free of it for admissions.
        sa.Index(
            "ix_decision_rejections",
            "agency",
            "reason",
            "stream_seq",
            sqlite_where=sa.text("outcome = 'rejected'"),
            postgresql_where=sa.text("outcome = 'rejected'"),
        ),
        # The outbox: only the decisions waiting for their PubAck (a few batches, unless a stream is down).
        sa.Index(
            "ix_decision_unpublished",
            "stream_seq",
            sqlite_where=sa.text(UNPUBLISHED),
            postgresql_where=sa.text(UNPUBLISHED),
        ),
    )

    stream_seq: int = Field(sa_column=Column(sa.BigInteger, primary_key=True, autoincrement=False))
    event_id: str | None = Field(default=None, max_length=36, index=True)
    outcome: str = Field(max_length=10)
    reason: str | None = Field(default=None, max_length=32)
    message: str | None = Field(default=None, sa_column=Column(sa.Text))
    subject: str = Field(sa_column=Column(sa.Text, nullable=False))
    agency: str = Field(max_length=64)
    measure_id: str | None = Field(default=None, max_length=16)
    received_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    admitted_at: datetime | None = Field(default=None, sa_column=Column(sa.DateTime(timezone=True)))
    trace_id: str | None = Field(default=None, max_length=32)
    content_hash: str | None = Field(default=None, max_length=32)
    rejection_id: str | None = Field(default=None, max_length=40)
    #: The original bytes of a rejected message (admitted ones live on ACCEPTED).
    payload: bytes | None = Field(default=None, sa_column=Column(sa.LargeBinary))
    #: The sequence the decision was stored at on ACCEPTED/REJECTED: NULL until its PubAck (the outbox). Exact
    #: for an atomic batch; for a batch the broker refused whole and took message by message (part of it was
    #: stored before), the batch's last sequence, an upper bound.
    published_seq: int | None = Field(default=None, sa_column=Column(sa.BigInteger))
    #: A command's verified sender: the `sub` of its bearer token (the token itself is never stored).
    principal: str | None = Field(default=None, max_length=200)
    #: An admitted review's or close's message on ACCEPTED, as published (a report's is rebuilt from STATUS).
    admitted_body: str | None = Field(default=None, sa_column=Column(sa.Text))


class EventClaimRow(SQLModel, table=True):
    """The idempotency record of an agency's event_id: the content it is bound to and the message that admitted
    it. Keyed by (event_id, agency): another agency's use of the same id is another claim."""

    __tablename__ = "event_claim"

    event_id: str = Field(primary_key=True, max_length=36)
    content_hash: str = Field(max_length=32)
    agency: str = Field(primary_key=True, max_length=64)
    first_seq: int = Field(sa_column=Column(sa.BigInteger, nullable=False))
    admitted_seq: int | None = Field(default=None, sa_column=Column(sa.BigInteger))


class ClosedQuarterRow(SQLModel, table=True):
    """A quarter the secretariat closed, and the close that closed it (its admitted close_id)."""

    __tablename__ = "closed_quarter"

    fiscal_year: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    quarter: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    close_id: str = Field(max_length=36)
    stream_seq: int = Field(sa_column=Column(sa.BigInteger, nullable=False))


decision_table: sa.Table = DecisionRow.__table__  # type: ignore[attr-defined]
claim_table: sa.Table = EventClaimRow.__table__  # type: ignore[attr-defined]
closed_table: sa.Table = ClosedQuarterRow.__table__  # type: ignore[attr-defined]
