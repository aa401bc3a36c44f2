"""On time is judged by when the platform received a report, not by the reporter's own `reported_at`
(DESIGN.md "Rollup semantics"; issue #15 hole 2, reporting's side)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.events import AdmittedEvent
from contracts.periods import FiscalQuarter
from reporting.domain import LeadReport
from reporting.handlers import admitted_from_model
from reporting.testing import status_event

Q1 = FiscalQuarter(2026, 1)
DEADLINE = Q1.on_time_deadline


def _report(*, reported_at: datetime, received_at: datetime | None, backfilled: bool = False) -> LeadReport:
    return LeadReport(
        "1-1", "digital", 2026, 1, "on_track", reported_at, "e1", backfilled=backfilled, received_at=received_at
    )


def test_a_backdated_report_received_late_is_late() -> None:
    claimed = Q1.end_at - timedelta(days=3)
    late = DEADLINE + timedelta(days=150)
    assert not _report(reported_at=claimed, received_at=late).on_time


def test_a_report_received_by_the_deadline_is_on_time_whatever_it_claims() -> None:
    assert _report(reported_at=DEADLINE + timedelta(days=9), received_at=DEADLINE).on_time


def test_a_backfilled_report_is_judged_by_its_reported_at() -> None:
    late = DEADLINE + timedelta(days=400)
    assert _report(reported_at=Q1.end_at, received_at=late, backfilled=True).on_time
    assert not _report(reported_at=DEADLINE + timedelta(seconds=1), received_at=late, backfilled=True).on_time


def _admitted(*, received_at: datetime | None, admitted_at: datetime) -> AdmittedEvent:
    event = status_event(
        measure_id="1-1", agency="digital", quarter=Q1, status="on_track", reported_at=Q1.end_at - timedelta(days=3)
    )
    doc = {"event": event, "admitted_at": admitted_at.isoformat(), "subject": "status.digital.1-1"}
    if received_at is not None:
        doc["received_at"] = received_at.isoformat()
    return AdmittedEvent.model_validate(doc)


def test_the_stored_row_and_the_report_agree_on_receipt() -> None:
    received = DEADLINE + timedelta(days=60)
    admitted = admitted_from_model(_admitted(received_at=received, admitted_at=received + timedelta(seconds=1)))
    assert admitted.report.received_at == received
    assert admitted.event_row.received_at == received.isoformat()
    assert admitted.event_row.on_time is False
    assert admitted.report.on_time is False


def test_without_a_receipt_time_the_admission_time_judges() -> None:
    """An ACCEPTED message from an ingest older than `received_at`: its admission (never before receipt)."""
    admitted_at = datetime(2026, 12, 1, tzinfo=UTC)
    admitted = admitted_from_model(_admitted(received_at=None, admitted_at=admitted_at))
    assert admitted.report.received_at == admitted_at
    assert admitted.event_row.on_time is False
