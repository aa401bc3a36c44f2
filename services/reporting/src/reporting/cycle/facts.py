"""The secretariat's admitted commands as reporting applies them: reviews and closes (`contracts.cycle`).

Ingest publishes them on ACCEPTED with the admitted reports (`reviewed.{agency}.{measure_id}`,
`closed.{fy}.{q}`), in the one order reporting applies every admitted fact in. Here they are decoded and
written; what they do to review states and publications is in `reporting.cycle.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from contracts.cycle import AdmittedClose, AdmittedReview
from contracts.streams import CLOSED_SUBJECT_PREFIX, REVIEWED_SUBJECT_PREFIX
from reporting.cycle.tables import CycleTables
from reporting.repository import insert_for
from reporting.tables import to_micros


@dataclass(frozen=True, slots=True)
class _CycleFact:
    """An admitted command of the cycle: the row it makes in its table, and what every such row names."""

    row: dict[str, Any]

    @property
    def quarter(self) -> tuple[int, int]:
        return (self.row["fiscal_year"], self.row["quarter"])

    @property
    def admitted_at_us(self) -> int:
        value: int = self.row["admitted_at_us"]
        return value


@dataclass(frozen=True, slots=True)
class ReviewFact(_CycleFact):
    """An admitted review: the `reviews` row it makes."""

    @property
    def review_id(self) -> str:
        value: str = self.row["review_id"]
        return value


@dataclass(frozen=True, slots=True)
class CloseFact(_CycleFact):
    """An admitted close: the `closes` row it makes."""

    @property
    def close_id(self) -> str:
        value: str = self.row["close_id"]
        return value


def is_review_subject(subject: str) -> bool:
    return subject.startswith(REVIEWED_SUBJECT_PREFIX + ".")


def is_close_subject(subject: str) -> bool:
    return subject.startswith(CLOSED_SUBJECT_PREFIX + ".")


def decode_review(data: bytes, *, position: int) -> ReviewFact:
    """An AdmittedReview JSON body; `position` orders a report's reviews (the stream sequence, or a counter)."""
    admitted = AdmittedReview.model_validate_json(data)
    review, report = admitted.review, admitted.report
    return ReviewFact(
        {
            "review_id": str(review.review_id),
            "position": position,
            "agency": report.agency.value,
            "event_id": str(review.event_id),
            "measure_id": report.measure_id,
            "fiscal_year": report.fiscal_year,
            "quarter": report.quarter,
            "decision": review.decision.value,
            "comment": review.comment,
            "reviewed_at": review.reviewed_at.isoformat(),
            "reviewer": review.reviewer,
            "principal": admitted.principal,
            "admitted_at_us": to_micros(admitted.admitted_at),
        }
    )


def decode_close(data: bytes) -> CloseFact:
    admitted = AdmittedClose.model_validate_json(data)
    close = admitted.close
    return CloseFact(
        {
            "fiscal_year": close.fiscal_year,
            "quarter": close.quarter,
            "close_id": str(close.close_id),
            "closed_at": close.closed_at.isoformat(),
            "closed_by": close.closed_by,
            "principal": admitted.principal,
            "admitted_at_us": to_micros(admitted.admitted_at),
            "admitted_at": admitted.admitted_at.isoformat(),
            "note": close.note,
        }
    )


def store_review(conn: Connection, tables: CycleTables, fact: ReviewFact) -> bool:
    """Keep the review (once: its review_id is its key); whether it was new."""
    t = tables.reviews
    stmt = insert_for(conn, t).values(fact.row).on_conflict_do_nothing().returning(t.c.review_id)
    return conn.execute(stmt).first() is not None


def store_close(conn: Connection, tables: CycleTables, fact: CloseFact) -> bool:
    """Keep the close (a quarter is closed once: a second close of it changes nothing); whether it was new."""
    t = tables.closes
    stmt = insert_for(conn, t).values(fact.row).on_conflict_do_nothing().returning(t.c.close_id)
    return conn.execute(stmt).first() is not None
