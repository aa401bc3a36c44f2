"""Test support for the reporting cycle: admitted reviews and closes as ingest publishes them on ACCEPTED."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from nats.aio.client import Client

from contracts.agencies import Agency
from contracts.cycle import AdmittedClose, AdmittedReview, CloseEvent, ReviewDecision, ReviewedReport, ReviewEvent
from contracts.streams import (
    ACCEPTED_STREAM,
    MSG_ID_HEADER,
    closed_subject,
    command_msg_id,
    review_subject,
    reviewed_subject,
)


def admitted_review(
    *,
    event_id: str,
    agency: str,
    measure_id: str,
    fiscal_year: int,
    quarter: int,
    decision: str,
    comment: str | None = None,
    admitted_at: datetime,
    review_id: str | None = None,
) -> AdmittedReview:
    review = ReviewEvent(
        review_id=uuid.UUID(review_id) if review_id else uuid.uuid4(),
        event_id=uuid.UUID(event_id),
        decision=ReviewDecision(decision),
        comment=comment,
        reviewed_at=admitted_at,
        reviewer="重点計画事務局 山田",
    )
    return AdmittedReview(
        review=review,
        report=ReviewedReport(agency=Agency(agency), measure_id=measure_id, fiscal_year=fiscal_year, quarter=quarter),
        principal="yamada",
        admitted_at=admitted_at.astimezone(UTC),
        received_at=admitted_at.astimezone(UTC),
        subject=review_subject(agency, measure_id),
    )


def admitted_close(
    *, fiscal_year: int, quarter: int, admitted_at: datetime, close_id: str | None = None
) -> AdmittedClose:
    close = CloseEvent(
        close_id=uuid.UUID(close_id) if close_id else uuid.uuid4(),
        fiscal_year=fiscal_year,
        quarter=quarter,
        closed_at=admitted_at,
        closed_by="重点計画事務局",
    )
    return AdmittedClose(
        close=close,
        principal="secretariat",
        admitted_at=admitted_at.astimezone(UTC),
        received_at=admitted_at.astimezone(UTC),
        subject=f"close.{fiscal_year}.{quarter}",
    )


async def publish_review(nc: Client, review: AdmittedReview) -> None:
    """Onto ACCEPTED as ingest does (as a user allowed to publish `reviewed.>`)."""
    headers = {MSG_ID_HEADER: command_msg_id("review", str(review.review.review_id))}
    subject = reviewed_subject(review.report.agency, review.report.measure_id)
    await nc.jetstream().publish(
        subject, review.model_dump_json().encode(), headers=headers, stream=ACCEPTED_STREAM.name
    )


async def publish_close(nc: Client, close: AdmittedClose) -> None:
    headers = {MSG_ID_HEADER: command_msg_id("close", str(close.close.close_id))}
    subject = closed_subject(close.close.fiscal_year, close.close.quarter)
    await nc.jetstream().publish(
        subject, close.model_dump_json().encode(), headers=headers, stream=ACCEPTED_STREAM.name
    )
