"""The rules for the secretariat's commands, written once: a review, a close or a backfill in, a decision out.

The secretariat (重点計画事務局) publishes its commands on STATUS with the ministries' reports, so that every
admitted fact has one place in one order (DESIGN.md "The reporting cycle"): reviews on
`review.{agency}.{measure_id}`, closes on `close.{fy}.{q}`, backfilled past reports on
`backfill.{agency}.{measure_id}`. Ingest decides each like a report, with these rules and the same decision
types as `contracts.admission` (admit, duplicate or reject with a reason). Like that module, nothing here
does I/O or raises on bad input; the caller supplies what the rules need from the world: who sent the
command (its bearer token, verified by the caller: `Sender`), the time the broker received it, the admitted
report a review names, the quarters already closed, and what was recorded before for the command's id.

When several rules fail, the first in `COMMAND_PRECEDENCE` is the reason: what reading the message finds
(`malformed`), then who sent it (`not_permitted`: only the secretariat sends commands, and nothing about the
world is said to anyone else), then the command's own rules, `duplicate_conflict` last. A backfill is a v1
report: after `not_permitted` its rules and their order are the report's (`contracts.admission.decide`).

Idempotency: a review's and a close's id (`review_id`, `close_id`) are the secretariat's own, so their claims
are the secretariat's (`SECRETARIAT`), apart from every agency's event ids; a backfilled report's event_id is
its agency's, the same id the agency would use for it. The same id with the same content is a duplicate;
with other content, `duplicate_conflict`.

One module of ~470 lines on purpose, as `contracts.admission`: reading a command, the words of each rejection,
the rules in their order and what an admission publishes are one story, and a client imports it whole.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from contracts.admission import (
    MAX_PAYLOAD_BYTES,
    Admit,
    Decision,
    Duplicate,
    PriorRecord,
    Reject,
    Report,
    clean,
    decide,
    describe_validation_errors,
    read_report,
    readable_event_id,
)
from contracts.agencies import Agency
from contracts.catalog import Measure
from contracts.cycle import AdmittedClose, AdmittedReview, CloseEvent, ReviewedReport, ReviewEvent
from contracts.events import ReasonCode
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import (
    BACKFILL_SUBJECT_PREFIX,
    CLOSE_SUBJECT_PREFIX,
    REVIEW_SUBJECT_PREFIX,
    closed_subject,
    command_msg_id,
    parse_quarter_subject,
    parse_status_subject,
    reviewed_subject,
)

#: Who sends commands, and whose ids a review's and a close's are (the owner of their idempotency claims).
SECRETARIAT = "secretariat"
#: The role a command's bearer token must carry.
SECRETARIAT_ROLE = "secretariat"
#: Command kinds, by the first token of their subjects.
REVIEW = REVIEW_SUBJECT_PREFIX
CLOSE = CLOSE_SUBJECT_PREFIX
BACKFILL = BACKFILL_SUBJECT_PREFIX
COMMAND_PREFIXES = (REVIEW, CLOSE, BACKFILL)

COMMAND_PRECEDENCE: tuple[ReasonCode, ...] = (
    ReasonCode.malformed,
    ReasonCode.not_permitted,
    ReasonCode.unknown_event,
    ReasonCode.period_open,
    ReasonCode.already_closed,
    ReasonCode.duplicate_conflict,
)
#: The reasons only a command can get (a ministry's report never does).
COMMAND_REASONS = frozenset(COMMAND_PRECEDENCE) - {ReasonCode.malformed, ReasonCode.duplicate_conflict}

_MEASURE_ID = re.compile(r"^[1-6]-\d{1,3}$")
_REVIEW_HINTS = {
    "review_id": "a UUID of this review (reuse it only to resend the same review)",
    "event_id": "the reviewed report's event_id (a UUID)",
    "decision": "accepted or returned",
    "comment": "text of at most 4000 characters, required when returned",
    "reviewed_at": "an RFC 3339 time with offset, such as 2025-01-15T10:00:00+09:00",
    "reviewer": "text of 1–200 characters",
}
_CLOSE_HINTS = {
    "close_id": "a UUID of this close",
    "fiscal_year": "an integer such as 2024 (April start)",
    "quarter": "an integer 1–4",
    "closed_at": "an RFC 3339 time with offset, such as 2025-02-03T10:00:00+09:00",
    "closed_by": "text of 1–200 characters",
    "note": "text of at most 4000 characters, or leave it out",
}


# --- who sent it ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a command, as its bearer token says once the caller verified it: the principal's role, its
    agency (role `agency`) and the person (`sub`); or, in `problem`, why the token names nobody (none sent,
    not valid, expired …). Never the token itself."""

    role: str | None = None
    subject: str | None = None
    agency: str | None = None
    problem: str | None = None

    @property
    def label(self) -> str:
        if self.role == "agency" and self.agency:
            return f"agency {self.agency}"
        return self.role or "nobody"


#: A command that carried no bearer token.
NO_TOKEN = Sender(problem="it carried no bearer token (NATS header `Authorization: Bearer <token>`)")


def _not_permitted(sender: Sender, what: str) -> str | None:
    """Why `sender` may not send `what` (None: the secretariat may)."""
    if sender.problem is None and sender.role == SECRETARIAT_ROLE and sender.subject:
        return None
    why = sender.problem or f"its token is {sender.label}'s"
    return (
        f"権限なし (not_permitted): {what} may be sent only by the secretariat (重点計画事務局), with its own bearer "
        f"token in the message's Authorization header; {clean(why, 240)}"
    )


# --- reading a command ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed review or close as read from its message (a backfill reads as a `Report`).

    Named like a `Report` where the batch treats both alike: `subject_agency` owns the idempotency claim (the
    secretariat), `event_id` is the command's id, `measure_id` the reviewed report's measure (None for a close).
    """

    kind: str
    subject: str
    body: ReviewEvent | CloseEvent
    content_hash: str
    event_id: str
    #: A review: the reviewed report's agency, from the subject.
    agency: str | None = None
    measure_id: str | None = None
    subject_agency: str = SECRETARIAT


def _malformed(text: str, data: bytes, id_key: str, field: str | None = None) -> Reject:
    return Reject(
        reason=ReasonCode.malformed,
        message=f"形式不正 (malformed): {text}",
        event_id=readable_event_id(data, id_key),
        field=field,
    )


def _command_hash(kind: str, body: ReviewEvent | CloseEvent, moment: str, *where: str) -> str:
    """The command's canonical form: its kind, where it was sent, its fields with its time in UTC."""
    when = getattr(body, moment).astimezone(UTC).isoformat()
    canonical = "|".join((kind, *where, body.model_dump_json(exclude={moment}), when))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


_Model = TypeVar("_Model", ReviewEvent, CloseEvent)


def _validate(
    model: type[_Model], data: bytes, id_key: str, hints: dict[str, str], texts: tuple[str, ...], what: str
) -> _Model | Reject:
    if len(data) > MAX_PAYLOAD_BYTES:
        return _malformed(
            f"the message is {len(data)} bytes; {what} is at most {MAX_PAYLOAD_BYTES} bytes", data, id_key
        )
    try:
        body = model.model_validate_json(data, strict=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        text = describe_validation_errors(errors, fields=tuple(model.model_fields), hints=hints, contract=what)
        loc = errors[0].get("loc", ()) if errors else ()
        return _malformed(text, data, id_key, ".".join(str(x) for x in loc) or None)
    for name in texts:
        value = getattr(body, name)
        if value is not None and "\x00" in value:
            return _malformed(
                f"field {name!r} contains a NUL character (\\u0000), which no command may carry", data, id_key, name
            )
    try:
        body.model_dump_json().encode()
    except (ValueError, UnicodeError) as e:  # e.g. a lone surrogate that cannot be written as UTF-8
        return _malformed(f"the command cannot be stored as UTF-8 JSON: {clean(str(e), 120)}", data, id_key)
    return body


def read_review(subject: str, data: bytes) -> Command | Reject:
    """Decode and validate a review published on `review.{agency}.{measure_id}` (the reviewed report's)."""
    parts = parse_status_subject(subject, prefix=REVIEW)
    if parts is None or parts.agency not in Agency.__members__ or not _MEASURE_ID.match(parts.measure_id):
        return _malformed(
            f"subject {clean(subject, 120)!r} is not review.{{agency}}.{{measure_id}}, the reviewed report's agency "
            "code and measure (such as review.mof.1-25)",
            data,
            "review_id",
        )
    body = _validate(ReviewEvent, data, "review_id", _REVIEW_HINTS, ("comment", "reviewer"), "a review")
    if isinstance(body, Reject):
        return body
    return Command(
        kind=REVIEW,
        subject=subject,
        body=body,
        content_hash=_command_hash(REVIEW, body, "reviewed_at", parts.agency, parts.measure_id),
        event_id=str(body.review_id),
        agency=parts.agency,
        measure_id=parts.measure_id,
    )


def read_close(subject: str, data: bytes) -> Command | Reject:
    """Decode and validate a close published on `close.{fy}.{q}` (the closed quarter)."""
    parts = parse_quarter_subject(subject, prefix=CLOSE)
    if parts is None:
        return _malformed(
            f"subject {clean(subject, 120)!r} is not close.{{fiscal_year}}.{{quarter}} (such as close.2024.3)",
            data,
            "close_id",
        )
    body = _validate(CloseEvent, data, "close_id", _CLOSE_HINTS, ("closed_by", "note"), "a close")
    if isinstance(body, Reject):
        return body
    if (body.fiscal_year, body.quarter) != (parts.fiscal_year, parts.quarter):
        return Reject(
            reason=ReasonCode.malformed,
            message=(
                f"形式不正 (malformed): the payload closes FY{body.fiscal_year}Q{body.quarter} but was published on "
                f"{subject!r}; publish it on close.{body.fiscal_year}.{body.quarter}"
            ),
            event_id=str(body.close_id),
            field="quarter",
        )
    return Command(
        kind=CLOSE,
        subject=subject,
        body=body,
        content_hash=_command_hash(CLOSE, body, "closed_at"),
        event_id=str(body.close_id),
    )


def read_backfill(subject: str, data: bytes) -> Report | Reject:
    """Decode and validate a backfilled report on `backfill.{agency}.{measure_id}` (a v1 status event)."""
    return read_report(subject, data, prefix=BACKFILL)


# --- the rules -----------------------------------------------------------------------------------------------


class _Failure(NamedTuple):
    reason: ReasonCode
    field: str | None
    message: str


def _first(command: Command, failures: list[_Failure]) -> Reject:
    first = min(failures, key=lambda f: COMMAND_PRECEDENCE.index(f.reason))
    return Reject(first.reason, first.message, command.event_id, command, first.field)


def _sender_first(
    command: Command, sender: Sender, previous: PriorRecord | None, what: str
) -> list[_Failure] | Duplicate:
    """Who sent it comes first; from the secretariat, an admitted command resent as is is a duplicate whatever
    the world says now."""
    refused = _not_permitted(sender, what)
    if refused is not None:
        return [_Failure(ReasonCode.not_permitted, None, refused)]
    if previous is not None and previous.admitted and previous.content_hash == command.content_hash:
        return Duplicate(report=command)
    return []


def _conflict(command: Command, previous: PriorRecord | None) -> list[_Failure]:
    if previous is None or previous.content_hash == command.content_hash:
        return []
    id_name = "review_id" if command.kind == REVIEW else "close_id"
    return [
        _Failure(
            ReasonCode.duplicate_conflict,
            id_name,
            f"ID重複 (duplicate_conflict): {id_name} {command.event_id} was already used for a {command.kind} with "
            f"different content; a new {command.kind} needs a new {id_name} (a retry must resend the same content)",
        )
    ]


def decide_review(
    command: Command, *, sender: Sender, reviewed: ReviewedReport | None, previous: PriorRecord | None
) -> Decision:
    """A review is admitted when the secretariat sent it and it names a report admitted for the agency and
    measure of its subject (`reviewed`: the admitted report of that agency with the review's event_id, if any)."""
    review = command.body
    assert isinstance(review, ReviewEvent)
    failures = _sender_first(command, sender, previous, "a review")
    if isinstance(failures, Duplicate):
        return failures
    if reviewed is None or (reviewed.agency.value, reviewed.measure_id) != (command.agency, command.measure_id):
        failures.append(_Failure(ReasonCode.unknown_event, "event_id", _unknown_event(command, review, reviewed)))
    failures += _conflict(command, previous)
    if failures:
        return _first(command, failures)
    return Admit(report=command, principal=sender.subject, reviewed=reviewed)


def _unknown_event(command: Command, review: ReviewEvent, reviewed: ReviewedReport | None) -> str:
    head = f"審査対象なし (unknown_event): the review names report {review.event_id}"
    if reviewed is not None:
        return (
            f"{head}, which {reviewed.agency.value} reported on measure {reviewed.measure_id}, not on "
            f"{command.measure_id}: publish the review on review.{reviewed.agency.value}.{reviewed.measure_id}"
        )
    return (
        f"{head} of {command.agency} on measure {command.measure_id}, but no such report of {command.agency} was "
        f"admitted: a review is published on review.{{agency}}.{{measure_id}} of the admitted report it names "
        f"(check the report with GET /events/{review.event_id} on ingest)"
    )


def decide_close(
    command: Command,
    *,
    sender: Sender,
    received_at: datetime,
    closed_by: str | None,
    previous: PriorRecord | None,
) -> Decision:
    """A close is admitted when the secretariat sent it after the quarter's on-time deadline (the broker's
    receipt time decides) and the quarter is not closed yet (`closed_by`: the close_id that closed it, if any)."""
    close = command.body
    assert isinstance(close, CloseEvent)
    failures = _sender_first(command, sender, previous, "a close")
    if isinstance(failures, Duplicate):
        return failures
    quarter = FiscalQuarter(close.fiscal_year, close.quarter)
    deadline = quarter.on_time_deadline
    if received_at <= deadline:
        failures.append(
            _Failure(
                ReasonCode.period_open,
                "quarter",
                f"受付期間中 (period_open): {quarter.label} cannot be closed before its on-time deadline "
                f"{_tokyo(deadline)}; the close arrived {_tokyo(received_at)}. Ministries may still report on "
                "time until then: close it after the deadline",
            )
        )
    if closed_by is not None and closed_by != command.event_id:
        failures.append(
            _Failure(
                ReasonCode.already_closed,
                "quarter",
                f"締切済 (already_closed): {quarter.label} was closed already (close {closed_by}); a closed quarter "
                "stays closed, and reports admitted after it restate its published figures",
            )
        )
    failures += _conflict(command, previous)
    if failures:
        return _first(command, failures)
    return Admit(report=command, principal=sender.subject)


def _tokyo(moment: datetime) -> str:
    return f"{moment.astimezone(TOKYO).isoformat(timespec='seconds')} (Asia/Tokyo)"


def decide_backfill(
    report: Report, *, sender: Sender, now: datetime, measure: Measure | None, previous: PriorRecord | None
) -> Decision:
    """A backfilled report is admitted when the secretariat sent it and it passes every rule of a report."""
    refused = _not_permitted(sender, "a backfilled report")
    if refused is not None:
        return Reject(ReasonCode.not_permitted, refused, report.event_id, report)
    decision = decide(report, now=now, measure=measure, previous=previous)
    return Admit(report=report, principal=sender.subject) if isinstance(decision, Admit) else decision


# --- what an admitted command publishes ----------------------------------------------------------------------


class AdmittedCommand(NamedTuple):
    """An admitted review or close as published on ACCEPTED."""

    subject: str
    payload: bytes
    msg_id: str


def admitted_command(admit: Admit, *, admitted_at: datetime, received_at: datetime) -> AdmittedCommand:
    """The AdmittedReview (`reviewed.{agency}.{measure_id}`) or AdmittedClose (`closed.{fy}.{q}`) of an admitted
    command, with its Nats-Msg-Id (`review:{review_id}`, `close:{close_id}`)."""
    command = admit.report
    if not isinstance(command, Command) or admit.principal is None:
        raise ValueError("not an admitted command")
    body = command.body
    if isinstance(body, ReviewEvent):
        if admit.reviewed is None:
            raise ValueError("an admitted review names its reviewed report")
        message: BaseModel = AdmittedReview(
            review=body,
            report=admit.reviewed,
            principal=admit.principal,
            admitted_at=admitted_at,
            received_at=received_at,
            subject=command.subject,
        )
        subject = reviewed_subject(admit.reviewed.agency, admit.reviewed.measure_id)
    else:
        message = AdmittedClose(
            close=body,
            principal=admit.principal,
            admitted_at=admitted_at,
            received_at=received_at,
            subject=command.subject,
        )
        subject = closed_subject(body.fiscal_year, body.quarter)
    return AdmittedCommand(subject, message.model_dump_json().encode(), command_msg_id(command.kind, command.event_id))


def command_target(subject: str, command_id: str) -> tuple[str, str] | None:
    """Where an admitted review or close arriving on `subject` is published on ACCEPTED, and its Nats-Msg-Id
    (None for any other subject)."""
    kind = subject.partition(".")[0]
    if kind == REVIEW and (parts := parse_status_subject(subject, prefix=REVIEW)) is not None:
        return reviewed_subject(parts.agency, parts.measure_id), command_msg_id(kind, command_id)
    if kind == CLOSE and (quarter := parse_quarter_subject(subject)) is not None:
        return closed_subject(quarter.fiscal_year, quarter.quarter), command_msg_id(kind, command_id)
    return None


def reviewed_report(report: Report) -> ReviewedReport:
    """What a review of this admitted report records of it."""
    event = report.event
    return ReviewedReport(
        agency=event.agency, measure_id=event.measure_id, fiscal_year=event.fiscal_year, quarter=event.quarter
    )


def id_field(subject: str) -> str:
    """The field that holds the id of a message on `subject`: `review_id`, `close_id`, else `event_id`."""
    kind = subject.partition(".")[0]
    return "review_id" if kind == REVIEW else "close_id" if kind == CLOSE else "event_id"


def claim_owner(subject: str) -> str:
    """Whose idempotency claims a message on `subject` makes: the secretariat's for its reviews and closes,
    the subject's agency for reports and backfilled reports (`unknown` for a subject of another shape)."""
    kind, _, rest = subject.partition(".")
    if kind in (REVIEW, CLOSE):
        return SECRETARIAT
    agency = rest.partition(".")[0]
    return agency or "unknown"
