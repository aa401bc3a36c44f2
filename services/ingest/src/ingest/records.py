"""What a message's outcome becomes: the row ingest stores for it, and the message it publishes.

One place for both, whatever made the outcome: a decision of this batch, a stored decision republished (for
a redelivery, an identical resend, or by the outbox's reconciler), or the `undeliverable` rejection of a
message that could not be processed. A rejection is built here and nowhere else, and so is an admission's
`Nats-Msg-Id` (agency-qualified for a report: an event id is an agency's own; `review:{review_id}` and
`close:{close_id}` for the secretariat's commands). An admitted command's message is stored as published (it
names who sent it, which only the token said, and the token is never kept); a report's is rebuilt from STATUS.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import NamedTuple

from contracts.commands import BACKFILL, admitted_command, command_target
from contracts.events import AdmittedEvent, ReasonCode, Rejection, StatusEvent
from contracts.streams import ACCEPTED_STREAM, REJECTED_STREAM, accepted_msg_id, accepted_subject, rejected_subject
from ingest.delivery import Delivery, Outcome
from ingest.domain import Admit, Command, Decision, Reject, Report, admitted_json
from ingest.repository import DecisionRecord, StoredDecision
from ingest.tables import OUTCOME_ADMITTED, OUTCOME_DUPLICATE, OUTCOME_REJECTED

#: The stream each kind of stored decision is published on (a duplicate publishes nothing).
STREAM_OF = {OUTCOME_ADMITTED: ACCEPTED_STREAM.name, OUTCOME_REJECTED: REJECTED_STREAM.name}


class Outgoing(NamedTuple):
    """A message ingest publishes: on ACCEPTED (id: `{agency}:{event_id}`) or REJECTED (id: the rejection id)."""

    subject: str
    payload: bytes
    stream: str
    #: Its `Nats-Msg-Id`: the broker drops a republished copy by it.
    msg_id: str


def decision_record(d: Delivery, decision: Decision, decided_at: datetime) -> DecisionRecord:
    """The stored row of a decision made now (`decided_at`: an admission's `admitted_at`)."""
    report = decision.report
    event_id = measure_id = digest = None
    if report is not None:
        event_id, measure_id, digest = report.event_id, report.measure_id, report.content_hash
    sender = d.sender
    principal = sender.subject if sender is not None and sender.problem is None else None
    if isinstance(decision, Reject):
        return DecisionRecord(
            stream_seq=d.seq,
            event_id=event_id or decision.event_id,
            outcome=OUTCOME_REJECTED,
            reason=decision.reason.value,
            message=decision.message,
            subject=d.subject,
            agency=d.agency,
            measure_id=measure_id,
            received_at=d.received_at,
            admitted_at=None,
            trace_id=d.trace_id,
            content_hash=digest,
            rejection_id=d.rejection_id,
            payload=d.data,
            principal=principal,
        )
    admitted = isinstance(decision, Admit)
    body = None
    if isinstance(decision, Admit) and isinstance(report, Command):
        body = admitted_command(decision, admitted_at=decided_at, received_at=d.received_at).payload.decode()
    return DecisionRecord(
        stream_seq=d.seq,
        event_id=event_id,
        outcome=OUTCOME_ADMITTED if admitted else OUTCOME_DUPLICATE,
        reason=None,
        message=None,
        subject=d.subject,
        agency=d.agency,
        measure_id=measure_id,
        received_at=d.received_at,
        admitted_at=decided_at if admitted else None,
        trace_id=d.trace_id,
        content_hash=digest,
        rejection_id=None,
        payload=None,
        principal=principal,
        admitted_body=body,
    )


def outgoing(d: Delivery, outcome: Outcome, decided_at: datetime) -> Outgoing | None:
    """What the message publishes (None for a duplicate): built from its parts, validated already."""
    if isinstance(outcome, StoredDecision):
        return republished(outcome, d.data)
    if isinstance(outcome, Admit):
        report = outcome.report
        if isinstance(report, Command):
            command = admitted_command(outcome, admitted_at=decided_at, received_at=d.received_at)
            return Outgoing(command.subject, command.payload, ACCEPTED_STREAM.name, command.msg_id)
        event = report.event
        body = admitted_json(report, decided_at, d.subject, received_at=d.received_at, backfilled=_backfilled(report))
        subject = accepted_subject(event.agency, event.measure_id)
        return Outgoing(subject, body, ACCEPTED_STREAM.name, accepted_msg_id(d.agency, report.event_id))
    if isinstance(outcome, Reject):
        return rejected(d, outcome)
    return None


def _backfilled(report: Report | StoredDecision) -> bool:
    """Whether an admitted report is a past one the secretariat migrated (it arrived on `backfill.…`)."""
    return report.subject.startswith(f"{BACKFILL}.")


def rejected(d: Delivery, reject: Reject) -> Outgoing:
    """The rejection of a message decided now."""
    return _rejection(
        d.data,
        rejection_id=d.rejection_id,
        event_id=reject.event_id,
        agency=d.agency,
        subject=d.subject,
        reason=reject.reason,
        message=reject.message,
        received_at=d.received_at,
    )


def republished(stored: StoredDecision, data: bytes) -> Outgoing | None:
    """A stored decision published again, exactly as it was the first time (the broker drops the copy inside its
    duplicate window; a reader counts a later copy once by its agency and event id). `data`: the STATUS message's
    bytes (a report's admission), or the stored original bytes (a rejection); an admitted command's message is
    stored whole."""
    if stored.outcome == OUTCOME_ADMITTED and stored.admitted_body is not None:
        target = command_target(stored.subject, stored.event_id or "")
        if target is None:
            raise ValueError(f"stored admission of STATUS-{stored.stream_seq} is no command: {stored.subject!r}")
        subject, msg_id = target
        return Outgoing(subject, stored.admitted_body.encode(), ACCEPTED_STREAM.name, msg_id)
    if stored.outcome == OUTCOME_ADMITTED:
        event = StatusEvent.model_validate_json(data, strict=True)
        if stored.admitted_at is None:
            raise ValueError(f"stored admission of STATUS-{stored.stream_seq} has no admitted_at")
        body = AdmittedEvent(
            event=event,
            admitted_at=stored.admitted_at,
            subject=stored.subject,
            received_at=stored.received_at,
            backfilled=_backfilled(stored),
        )
        subject = accepted_subject(event.agency, event.measure_id)
        msg_id = accepted_msg_id(stored.agency, str(event.event_id))
        return Outgoing(subject, body.model_dump_json().encode(), ACCEPTED_STREAM.name, msg_id)
    if stored.outcome == OUTCOME_REJECTED:
        return _rejection(
            data,
            rejection_id=stored.rejection_id or f"STATUS-{stored.stream_seq}",
            event_id=stored.event_id,
            agency=stored.agency,
            subject=stored.subject,
            reason=ReasonCode(stored.reason or ReasonCode.malformed),
            message=stored.message or "",
            received_at=stored.received_at,
        )
    return None


def _rejection(
    data: bytes,
    *,
    rejection_id: str,
    event_id: str | None,
    agency: str,
    subject: str,
    reason: ReasonCode,
    message: str,
    received_at: datetime,
) -> Outgoing:
    rejection = Rejection(
        rejection_id=rejection_id,
        event_id=event_id,
        agency=agency,
        subject=subject,
        reason=reason,
        message=message,
        payload_b64=base64.b64encode(data).decode(),
        received_at=received_at,
    )
    return Outgoing(rejected_subject(agency), rejection.model_dump_json().encode(), REJECTED_STREAM.name, rejection_id)
