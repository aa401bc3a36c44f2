"""HTTP on :8002: what became of an event (a report, or a command of the secretariat), the rejections, and readiness.

An id is its owner's: an agency's for its reports (and their backfills), the secretariat's (`secretariat`) for
its reviews and closes; `?agency=` names the owner when several used one id.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from contracts.agencies import Agency
from contracts.commands import SECRETARIAT
from contracts.events import ReasonCode
from contracts.streams import BACKFILL_SUBJECT_PREFIX, CLOSE_SUBJECT_PREFIX, REVIEW_SUBJECT_PREFIX
from ingest import access, queries
from ingest.access import EventReader, RejectionReader
from ingest.repository import StoredDecision
from ingest.tables import OUTCOME_ADMITTED
from shinchoku_runtime.http import BadRequest, Limit, NotFound, Offset
from shinchoku_runtime.service import health_response

router = APIRouter()

_REASONS = ", ".join(r.value for r in ReasonCode)
_AGENCIES = ", ".join(a.value for a in Agency)
#: Who may own an id: the agencies, and the secretariat (its reviews and closes).
OWNERS = frozenset({*Agency.__members__, SECRETARIAT})
_OWNERS = f"{_AGENCIES}, or {SECRETARIAT} (its reviews and closes)"
#: What arrived, by its subject's first token.
KINDS: dict[str, Literal["review", "close", "backfill"]] = {
    REVIEW_SUBJECT_PREFIX: "review",
    CLOSE_SUBJECT_PREFIX: "close",
    BACKFILL_SUBJECT_PREFIX: "backfill",
}
#: Original bytes carried by one page of /rejections at most (a page holds at least one rejection): a page is
#: bounded in memory whatever `limit` says, since STATUS takes messages of up to 1 MiB.
PAGE_PAYLOAD_BYTES = 4 * 1024 * 1024


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
    """What ingest decided for an event_id (or a review_id, a close_id)."""

    event_id: str = Field(examples=["0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11"])
    kind: Literal["report", "review", "close", "backfill"] = Field(
        default="report", description="A ministry's report, or the secretariat's review, close or backfilled report"
    )
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
    principal: str | None = Field(
        default=None, description="A command's verified sender (the `sub` of its bearer token)"
    )


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
    truncated: bool = Field(
        default=False,
        description=(
            f"True when the page stopped short of `limit` because its payloads reached {PAGE_PAYLOAD_BYTES // 2**20} "
            "MiB: ask again from `next_offset`"
        ),
    )
    next_offset: int | None = Field(default=None, description="Where the next page starts, when `truncated`")


class AmbiguousEvent(BaseModel):
    """Several agencies used this event_id: say which one (`?agency=`)."""

    detail: str
    agencies: list[str]


def _attempt(d: StoredDecision, contents: bool) -> Attempt:
    return Attempt(
        outcome=d.outcome,
        reason=ReasonCode(d.reason) if d.reason else None,
        message=d.message if contents else None,
        subject=d.subject,
        received_at=d.received_at,
        stream_seq=d.stream_seq,
        trace_id=d.trace_id,
    )


@router.get(
    "/events/{event_id}",
    response_model=EventOutcome,
    responses={409: {"model": AmbiguousEvent, "description": "Several agencies used this event_id: give `agency`"}},
    tags=["events"],
)
def get_event(
    request: Request,
    principal: EventReader,
    event_id: Annotated[UUID, Path(description="The report's event_id (a UUID), or a review_id or close_id")],
    agency: Annotated[
        str | None, Query(description=f"Whose id it is (an event_id is an agency's own): {_OWNERS}")
    ] = None,
) -> EventOutcome | JSONResponse:
    """What became of one report or command: admitted or rejected (with reason), and every later attempt."""
    if agency is not None and agency not in OWNERS:
        raise BadRequest(f"unknown agency {agency!r}; use one of {_OWNERS}")
    allowed, owner = access.event_owner(principal, agency)
    runtime = request.app.state.runtime
    histories = queries.event_histories(runtime.engine, event_id=str(event_id), agency=owner) if allowed else {}
    if not histories:
        whose = f" from {agency}" if agency is not None else ""
        raise NotFound(
            f"no decision for event {event_id}{whose}: ingest has not seen it yet (if it was just published, try "
            "again in a moment) or it was never published on STATUS"
        )
    if len(histories) > 1:
        agencies = sorted(histories)
        body = AmbiguousEvent(
            detail=f"event {event_id} was used by {len(agencies)} agencies ({', '.join(agencies)}): add ?agency=",
            agencies=agencies,
        )
        return JSONResponse(body.model_dump(), status_code=409)
    (history,) = histories.values()
    main = history.main
    contents = access.sees_contents(principal)
    return EventOutcome(
        event_id=str(event_id),
        kind=KINDS.get(main.subject.partition(".")[0], "report"),
        principal=main.principal if contents else None,
        outcome="admitted" if main.outcome == OUTCOME_ADMITTED else "rejected",
        reason=ReasonCode(main.reason) if main.reason else None,
        message=main.message if contents else None,
        subject=main.subject,
        agency=main.agency,
        measure_id=main.measure_id,
        received_at=main.received_at,
        admitted_at=main.admitted_at,
        trace_id=main.trace_id,
        stream_seq=main.stream_seq,
        rejection_id=main.rejection_id,
        attempts=[_attempt(a, contents) for a in history.attempts],
    )


@router.get("/rejections", response_model=RejectionPage, tags=["rejections"])
def get_rejections(
    request: Request,
    principal: RejectionReader,
    limit: Limit = 100,
    offset: Offset = 0,
    agency: Annotated[str | None, Query(description=f"Whose rejections: {_OWNERS}")] = None,
    reason: Annotated[str | None, Query(description=f"Reason code: {_REASONS}")] = None,
) -> Response:
    """Rejected messages, newest first, filtered by agency (or the secretariat) and reason code, paged (a page of
    large payloads stops early: `truncated`, `next_offset`)."""
    if agency is not None and agency not in OWNERS:
        raise BadRequest(f"unknown agency {agency!r}; use one of {_OWNERS}")
    if reason is not None and reason not in ReasonCode.__members__:
        raise BadRequest(f"unknown reason {reason!r}; use one of {_REASONS}")
    agency = access.rejections_owner(principal, agency)
    contents = access.sees_contents(principal)
    runtime = request.app.state.runtime
    records, total = queries.list_rejections(
        runtime.engine, agency=agency, reason=reason, limit=limit, offset=offset, payload_budget=PAGE_PAYLOAD_BYTES
    )
    truncated = len(records) < limit and offset + len(records) < total
    page = RejectionPage(
        items=[_rejection_item(r, contents) for r in records],
        total=total,
        truncated=truncated,
        next_offset=offset + len(records) if truncated else None,
    )
    del records  # the payloads are in the page now (base64): let the bytes go before the JSON is written
    return Response(page.model_dump_json().encode(), media_type="application/json")


def _rejection_item(r: queries.RejectionRecord, contents: bool) -> RejectionItem:
    return RejectionItem(
        rejection_id=r.decision.rejection_id,
        event_id=r.decision.event_id,
        agency=r.decision.agency,
        subject=r.decision.subject,
        reason=ReasonCode(r.decision.reason or ReasonCode.malformed),
        message=(r.decision.message or "") if contents else "",
        received_at=r.decision.received_at,
        trace_id=r.decision.trace_id,
        stream_seq=r.decision.stream_seq,
        payload_b64=base64.b64encode(r.payload).decode() if r.payload is not None and contents else None,
    )


@router.get("/healthz", tags=["health"], dependencies=[Depends(access.HEALTH)])
async def healthz(request: Request) -> JSONResponse:
    """Ready when NATS is connected with the consumer running, the store answers and JetStream takes what ingest
    publishes (else 503; `publishing` names each stream that refuses or does not answer, and since when;
    `outbox` counts the decisions not yet published, and `jetstream` fails while one stays unpublished past
    the alarm or a stream holds less than ingest published there)."""
    runtime = request.app.state.runtime
    mirror = runtime.mirror
    problems = runtime.health.publishing_problems()
    database = await asyncio.to_thread(runtime.database_ready)
    outbox = await runtime.outbox_status() if database else None
    extra: dict[str, Any] = {
        "catalog_mirror": len(mirror) if mirror is not None else 0,
        "publishing": problems,
        "outbox": outbox.as_json() if outbox is not None else None,
    }
    if runtime.refused is not None:
        extra["refused"] = runtime.refused
    alarming = outbox is not None and outbox.alarming(runtime.settings.unpublished_alarm)
    checks = {"nats": runtime.nats_connected(), "database": database, "jetstream": not problems and not alarming}
    return health_response(checks, **extra)
