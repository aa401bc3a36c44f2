"""HTTP on :8002: what became of an event, the rejections, and readiness."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from contracts.agencies import Agency
from contracts.events import ReasonCode
from ingest import repository
from ingest.repository import StoredDecision
from shinchoku_runtime.http import BadRequest, Limit, NotFound, Offset
from shinchoku_runtime.service import health_response

router = APIRouter()

_REASONS = ", ".join(r.value for r in ReasonCode)
_AGENCIES = ", ".join(a.value for a in Agency)


class Attempt(BaseModel):
    """A later delivery of the same event_id: an identical resend (`duplicate`) or a conflicting one."""

    outcome: Literal["admitted", "rejected", "duplicate"]
    reason: ReasonCode | None = None
    message: str | None = None
    subject: str
    received_at: datetime
    stream_seq: int
    trace_id: str | None = None


class EventOutcome(BaseModel):
    """What ingest decided for an event_id."""

    event_id: str = Field(examples=["0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11"])
    outcome: Literal["admitted", "rejected"]
    reason: ReasonCode | None = Field(default=None, description="The reason code when rejected")
    message: str | None = Field(default=None, description="Why it was rejected, in words a clerk can act on")
    subject: str = Field(examples=["status.mof.1-25"])
    agency: str = Field(examples=["mof"])
    measure_id: str | None = Field(default=None, examples=["1-25"])
    received_at: datetime = Field(description="When the report reached the STATUS stream")
    admitted_at: datetime | None = None
    trace_id: str | None = Field(default=None, description="OpenTelemetry trace id of the report (shinchoku trace)")
    stream_seq: int = Field(description="Sequence of the message in the STATUS stream")
    rejection_id: str | None = None
    attempts: list[Attempt] = Field(description="Every later delivery of the same event_id")


class RejectionItem(BaseModel):
    rejection_id: str | None
    event_id: str | None
    agency: str
    subject: str
    reason: ReasonCode
    message: str
    received_at: datetime
    trace_id: str | None
    stream_seq: int
    payload_b64: str | None = Field(description="The original message bytes, base64")


class RejectionPage(BaseModel):
    items: list[RejectionItem]
    total: int


def _attempt(d: StoredDecision) -> Attempt:
    return Attempt(
        outcome=d.outcome,
        reason=ReasonCode(d.reason) if d.reason else None,
        message=d.message,
        subject=d.subject,
        received_at=d.received_at,
        stream_seq=d.stream_seq,
        trace_id=d.trace_id,
    )


@router.get("/events/{event_id}", response_model=EventOutcome, tags=["events"])
def get_event(
    request: Request,
    event_id: Annotated[UUID, Path(description="The report's event_id (a UUID)")],
) -> EventOutcome:
    """What became of one report: admitted or rejected (with reason), and every later attempt with its id."""
    runtime = request.app.state.runtime
    history = repository.event_history(runtime.engine, event_id=str(event_id))
    if history is None:
        raise NotFound(
            f"no decision for event {event_id}: ingest has not seen it yet (if it was just published, try again "
            "in a moment) or it was never published on STATUS"
        )
    main = history.main
    return EventOutcome(
        event_id=str(event_id),
        outcome="admitted" if main.outcome == repository.OUTCOME_ADMITTED else "rejected",
        reason=ReasonCode(main.reason) if main.reason else None,
        message=main.message,
        subject=main.subject,
        agency=main.agency,
        measure_id=main.measure_id,
        received_at=main.received_at,
        admitted_at=main.admitted_at,
        trace_id=main.trace_id,
        stream_seq=main.stream_seq,
        rejection_id=main.rejection_id,
        attempts=[_attempt(a) for a in history.attempts],
    )


@router.get("/rejections", response_model=RejectionPage, tags=["rejections"])
def get_rejections(
    request: Request,
    limit: Limit = 100,
    offset: Offset = 0,
    agency: Annotated[str | None, Query(description=f"Agency code: {_AGENCIES}")] = None,
    reason: Annotated[str | None, Query(description=f"Reason code: {_REASONS}")] = None,
) -> RejectionPage:
    """Rejected messages, newest first, filtered by agency and reason code, paged."""
    if agency is not None and agency not in Agency.__members__:
        raise BadRequest(f"unknown agency {agency!r}; use one of {_AGENCIES}")
    if reason is not None and reason not in ReasonCode.__members__:
        raise BadRequest(f"unknown reason {reason!r}; use one of {_REASONS}")
    runtime = request.app.state.runtime
    records, total = repository.list_rejections(
        runtime.engine, agency=agency, reason=reason, limit=limit, offset=offset
    )
    items = [
        RejectionItem(
            rejection_id=r.decision.rejection_id,
            event_id=r.decision.event_id,
            agency=r.decision.agency,
            subject=r.decision.subject,
            reason=ReasonCode(r.decision.reason or ReasonCode.malformed),
            message=r.decision.message or "",
            received_at=r.decision.received_at,
            trace_id=r.decision.trace_id,
            stream_seq=r.decision.stream_seq,
            payload_b64=base64.b64encode(r.payload).decode() if r.payload is not None else None,
        )
        for r in records
    ]
    return RejectionPage(items=items, total=total)


@router.get("/healthz", tags=["health"])
def healthz(request: Request) -> JSONResponse:
    """Ready when NATS is connected with the consumer running, the store answers and JetStream takes what ingest
    publishes (else 503; `publishing` names each stream that refuses or does not answer, and since when)."""
    runtime = request.app.state.runtime
    mirror = runtime.mirror
    problems = runtime.health.publishing_problems()
    return health_response(
        {"nats": runtime.nats_connected(), "database": runtime.database_ready(), "jetstream": not problems},
        catalog_mirror=len(mirror) if mirror is not None else 0,
        publishing=problems,
    )
