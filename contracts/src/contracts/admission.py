"""The admission rules of contract v1, written once: one STATUS message in, one decision out.

Ingest decides every message with them; `shinchoku import --dry-run` (and any ministry client) judges a
report with them before sending it, so a row is judged exactly as ingest would judge it. Nothing here does
I/O or raises on bad input: whatever bytes arrive, `admit` answers with a decision (admit, duplicate or
reject). The caller supplies what the rules need from the world: the time, the measure as the catalog
knows it, and what was recorded before for the event's id. Pydantic and the standard library only.

One module of ~450 lines on purpose: reading a message, the words of each rejection and the rules in their
contract order are one story read top to bottom, and a ministry's client imports it whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from pydantic import AwareDatetime, TypeAdapter, ValidationError

from contracts.agencies import Agency
from contracts.catalog import Measure
from contracts.events import REASON_PRECEDENCE, AdmittedEvent, ReasonCode, Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter, tokyo_date
from contracts.streams import MAX_STATUS_PAYLOAD_BYTES, STATUS_SUBJECT_PREFIX, parse_status_subject, status_subject

if TYPE_CHECKING:  # contracts.commands builds on this module
    from contracts.commands import Command
    from contracts.cycle import ReviewedReport

#: A valid v1 event is a few KiB at most (note ≤ 4000 characters, ≤ 100 KPIs); anything far larger is refused unread.
MAX_PAYLOAD_BYTES = MAX_STATUS_PAYLOAD_BYTES
#: How far ahead of ingest's clock `reported_at` may be (clock skew between ministries and ingest).
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)
#: Validation errors quoted in one rejection message.
MAX_ERRORS_QUOTED = 5

_ALLOWED_FIELDS = tuple(StatusEvent.model_fields)
_STATUSES = ", ".join(s.value for s in Status)
_AGENCIES = ", ".join(a.value for a in Agency)
_FIELD_HINTS: dict[str, str] = {
    "event_id": "a UUID such as 0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11",
    "schema_version": "1 (or leave it out)",
    "measure_id": "the plan's number S-N, such as 1-25",
    "agency": f"one of {_AGENCIES}",
    "fiscal_year": "an integer such as 2024 (April start)",
    "quarter": "an integer 1–4",
    "status": f"one of {_STATUSES}",
    "progress": "a number 0–100, or leave it out",
    "kpis": "a list (≤ 100) of {target: int, value: number, as_of: YYYY-MM-DD}",
    "note": "text of at most 4000 characters",
    "reported_at": "an RFC 3339 time with offset, such as 2024-12-20T17:00:00+09:00",
    "reporter": "text of at most 200 characters",
}
_HASH_EXCLUDE = {"reported_at"}
_STR_JSON: TypeAdapter[str] = TypeAdapter(str)
_TIME_JSON: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)
#: Quoted, not copied, from bad input into a message: C0 and C1 controls (tabs and newlines included: a message
#: is one line in a table, a CSV cell or a log), line and paragraph separators, and the bidirectional
#: overrides and isolates that could make a quoted value read as something else.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# --- decisions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """A well-formed v1 event as read from its message: the event, its subject, and its content hash."""

    subject: str
    subject_agency: str
    event: StatusEvent
    content_hash: str
    #: The event_id as text (asked for often: computed once).
    event_id: str
    #: The event as pydantic writes it (`event.model_dump_json()`), written once for the hash and for ACCEPTED.
    event_json: str = ""

    @property
    def measure_id(self) -> str:
        return self.event.measure_id


@dataclass(frozen=True, slots=True)
class PriorRecord:
    """What was recorded before for an event_id: the content it first carried, and whether it was admitted."""

    content_hash: str
    admitted: bool
    agency: str


@dataclass(frozen=True, slots=True)
class Admit:
    #: The report, or the secretariat's command (`contracts.commands`), admitted.
    report: Report | Command
    #: A command's verified sender (the `sub` of its bearer token); None for a ministry's report.
    principal: str | None = None
    #: A review's reviewed report, as admitted.
    reviewed: ReviewedReport | None = None


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The same event_id with the same content as an admitted event: counted once, nothing published."""

    report: Report | Command


@dataclass(frozen=True, slots=True)
class Reject:
    reason: ReasonCode
    message: str
    #: The event_id, when the payload carried a readable one.
    event_id: str | None = None
    #: Present when the message was a well-formed event or command (every reason but `malformed`).
    report: Report | Command | None = None
    #: The event field the reason is about (`kpis.0.target`, `reported_at` …), when it is one field.
    field: str | None = None


Decision = Admit | Duplicate | Reject


def claims_event_id(decision: Decision, previous: PriorRecord | None) -> bool:
    """Whether this decision binds its event_id to its content from now on.

    An id is "seen" (DESIGN: duplicate_conflict) once a well-formed event came with it on its own agency's
    subject, admitted or not. Malformed messages, forged agencies and commands from someone who may not send
    them do not claim ids, so nobody can reserve another agency's event_id (or the secretariat's command id)
    by sending garbage or impersonating it.
    """
    if previous is not None:
        return False
    if isinstance(decision, Admit):
        return True
    return isinstance(decision, Reject) and decision.report is not None and decision.reason not in _CLAIMLESS


_CLAIMLESS = (ReasonCode.malformed, ReasonCode.agency_mismatch, ReasonCode.not_permitted)


# --- reading a message ---------------------------------------------------------------------------------------


def content_hash(event: StatusEvent) -> str:
    """Hash of the event's canonical form: key order, whitespace, number spelling and offsets do not matter."""
    canonical = event.model_dump_json(exclude=_HASH_EXCLUDE) + event.reported_at.astimezone(UTC).isoformat()
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


_REPORTED_AT_MEMBER = ',"reported_at":"'


def hash_and_json(event: StatusEvent) -> tuple[str, str]:
    """(`content_hash(event)`, `event.model_dump_json()`), from one serialisation instead of two.

    The canonical form is the event's JSON without its `reported_at` member: a member whose key is written
    `,"reported_at":"` can only be that field (inside a JSON string every `"` is escaped), and its value, a
    timestamp, holds no quote. Anything unexpected takes the reference definition.
    """
    full = event.model_dump_json()
    start = full.find(_REPORTED_AT_MEMBER)
    end = full.find('"', start + len(_REPORTED_AT_MEMBER)) if start > 0 else -1
    if end < 0:
        return content_hash(event), full
    canonical = full[:start] + full[end + 1 :] + event.reported_at.astimezone(UTC).isoformat()
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest(), full


@lru_cache(maxsize=4096)
def _json_text(value: str) -> str:
    return _STR_JSON.dump_json(value).decode()


@lru_cache(maxsize=64)
def _json_time(value: datetime) -> str:
    return _TIME_JSON.dump_json(value).decode()


def admitted_json(
    report: Report,
    admitted_at: datetime,
    subject: str,
    *,
    received_at: datetime | None = None,
    backfilled: bool = False,
) -> bytes:
    """`AdmittedEvent(event=…, admitted_at=…, subject=…, received_at=…, backfilled=…).model_dump_json()`, around the
    event's JSON written once."""
    if not report.event_json:
        body = AdmittedEvent.model_construct(
            event=report.event, admitted_at=admitted_at, subject=subject, received_at=received_at, backfilled=backfilled
        )
        return body.model_dump_json().encode()
    received = "null" if received_at is None else _TIME_JSON.dump_json(received_at).decode()
    return (
        f'{{"event":{report.event_json},"admitted_at":{_json_time(admitted_at)},"subject":{_json_text(subject)},'
        f'"received_at":{received},"backfilled":{"true" if backfilled else "false"}}}'
    ).encode()


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str, limit: int = 200) -> str:
    """Text safe to quote in a message (no control characters, bounded length, storable in any database)."""
    text = _CONTROL.sub(_escaped, text)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quote(value: Any) -> str:
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        shown = repr(value)
    return clean(shown, 80)


def describe_validation_errors(
    errors: Sequence[Any],
    *,
    fields: Sequence[str] = _ALLOWED_FIELDS,
    hints: Mapping[str, str] = _FIELD_HINTS,
    contract: str = "contract v1",
) -> str:
    """Say which fields are wrong, what they held, and what is allowed, in words a clerk can act on (`fields`,
    `hints` and `contract`: what the message should have been; a v1 status event unless said)."""
    parts: list[str] = []
    for error in errors[:MAX_ERRORS_QUOTED]:
        loc = [str(x) for x in error.get("loc", ())]
        field = ".".join(loc) or "(the message)"
        top = loc[0] if loc else ""
        kind = error.get("type", "")
        if kind == "json_invalid":
            parts.append(f"not valid JSON: {clean(str(error.get('msg', '')), 160)}")
            continue
        if kind == "extra_forbidden":
            parts.append(f"unknown field {clean(field, 60)!r}: {contract} allows only {', '.join(fields)}")
            continue
        if kind == "missing":
            hint = hints.get(top, "")
            parts.append(f"missing field {clean(field, 60)!r}" + (f" (expected {hint})" if hint else ""))
            continue
        if kind == "model_type" and not loc:
            fields_of = "the v1 fields" if contract == "contract v1" else f"the fields of {contract}"
            parts.append(f"the message must be a JSON object {{…}} with {fields_of}")
            continue
        if kind == "value_error" and not loc:  # a rule over several fields (a model validator) says it all
            parts.append(clean(str(error.get("msg", "")).removeprefix("Value error, "), 200))
            continue
        got = f", got {_quote(error.get('input'))}" if "input" in error else ""
        wanted = hints.get(top)
        expected = f"; expected {wanted}" if wanted else ""
        parts.append(f"field {clean(field, 60)!r}: {clean(str(error.get('msg', '')), 120)}{got}{expected}")
    more = len(errors) - MAX_ERRORS_QUOTED
    if more > 0:
        parts.append(f"and {more} more error(s)")
    return "; ".join(parts)


def _malformed(message: str, data: bytes | None = None, field: str | None = None) -> Reject:
    return Reject(
        reason=ReasonCode.malformed,
        message=f"形式不正 (malformed): {message}",
        event_id=readable_event_id(data) if data is not None else None,
        field=field,
    )


def _first_field(errors: Sequence[Any]) -> str | None:
    loc = errors[0].get("loc", ()) if errors else ()
    return ".".join(str(x) for x in loc) or None


def readable_event_id(data: bytes, key: str = "event_id") -> str | None:
    """The event_id (or the id under `key`: a command's `review_id`, `close_id`) of a payload that failed
    validation, when it still carries a valid UUID there."""
    if len(data) > MAX_PAYLOAD_BYTES:
        return None
    try:
        body = json.loads(data)
        value = body.get(key) if isinstance(body, dict) else None
        return str(UUID(value)) if isinstance(value, str) and len(value) <= 64 else None
    except (ValueError, TypeError, RecursionError, AttributeError):
        return None


def read_report(subject: str, data: bytes, *, prefix: str = STATUS_SUBJECT_PREFIX) -> Report | Reject:
    """Decode and validate one STATUS message against contract v1 and its subject (`{prefix}.{agency}.{measure}`:
    `status`, or `backfill` for a past report the secretariat migrates)."""
    parts = parse_status_subject(subject, prefix=prefix)
    if parts is None:
        return _malformed(f"subject {clean(subject, 120)!r} is not {prefix}.{{agency}}.{{measure_id}}", data)
    if len(data) > MAX_PAYLOAD_BYTES:
        return _malformed(f"the message is {len(data)} bytes; a v1 status event is at most {MAX_PAYLOAD_BYTES} bytes")
    try:
        event = StatusEvent.model_validate_json(data, strict=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        return _malformed(describe_validation_errors(errors), data, _first_field(errors))
    event_id = str(event.event_id)
    for name in ("note", "reporter"):
        value = getattr(event, name)
        if value is not None and "\x00" in value:
            return _malformed(
                f"field {name!r} contains a NUL character (\\u0000), which no report may carry", data, name
            )
    try:
        digest, event_json = hash_and_json(event)
    except (ValueError, UnicodeError) as e:  # e.g. a lone surrogate that cannot be written as UTF-8
        return _malformed(f"the event cannot be stored as UTF-8 JSON: {clean(str(e), 120)}", data)
    if event.measure_id != parts.measure_id:
        return Reject(
            reason=ReasonCode.malformed,
            message=(
                f"形式不正 (malformed): measure_id {event.measure_id!r} in the payload differs from the subject's "
                f"measure {clean(parts.measure_id, 40)!r}; publish on {prefix}.{{agency}}.{event.measure_id}"
            ),
            event_id=event_id,
            field="measure_id",
        )
    return Report(
        subject=subject,
        subject_agency=parts.agency,
        event=event,
        content_hash=digest,
        event_id=event_id,
        event_json=event_json,
    )


# --- the rules -----------------------------------------------------------------------------------------------


class _Failure(NamedTuple):
    reason: ReasonCode
    #: The event field at fault, when it is one field.
    field: str | None
    message: str


@lru_cache(maxsize=512)
def _quarter(fiscal_year: int, quarter: int) -> tuple[FiscalQuarter, datetime]:
    period = FiscalQuarter(fiscal_year, quarter)
    return period, period.start_at


def _start_label(quarter: FiscalQuarter) -> str:
    return f"{quarter.start.isoformat()} (Asia/Tokyo)"


def _catalog_failures(report: Report, measure: Measure | None) -> list[_Failure]:
    event = report.event
    if measure is None:
        return [
            _Failure(
                ReasonCode.unknown_measure,
                "measure_id",
                f"施策番号不明 (unknown_measure): measure {event.measure_id!r} is not in the catalog of the "
                "Priority Policy Program; check the number against the catalog (GET /measures)",
            )
        ]
    failures: list[_Failure] = []
    leads = [a.value for a in measure.lead_agencies]
    if event.agency.value not in leads:
        failures.append(
            _Failure(
                ReasonCode.not_lead,
                "measure_id",
                f"主担当外 (not_lead): {event.agency.value} does not lead measure {measure.id}; its lead "
                f"agencies are {', '.join(leads)}. Report only on measures your agency leads",
            )
        )
    targets = len(measure.targets)
    for i, kpi in enumerate(event.kpis):
        if kpi.target >= targets:
            allowed = f"0–{targets - 1}" if targets else "none: the measure states no concrete targets"
            failures.append(
                _Failure(
                    ReasonCode.malformed,
                    f"kpis.{i}.target",
                    f"形式不正 (malformed): field 'kpis.{i}.target' is {kpi.target}, but target {kpi.target} does "
                    f"not exist: measure {measure.id} has {targets} target(s); allowed indexes: {allowed}",
                )
            )
            break
    return failures


def _time_failures(report: Report, now: datetime) -> list[_Failure]:
    event = report.event
    failures: list[_Failure] = []
    ahead = event.reported_at - now
    if ahead > CLOCK_SKEW_ALLOWANCE:
        minutes = int(ahead.total_seconds() // 60)
        failures.append(
            _Failure(
                ReasonCode.future_timestamp,
                "reported_at",
                f"報告日時が未来 (future_timestamp): reported_at {event.reported_at.isoformat()} is {minutes} min "
                f"ahead of ingest's clock ({now.astimezone(TOKYO).isoformat(timespec='seconds')}); at most "
                f"{int(CLOCK_SKEW_ALLOWANCE.total_seconds() // 60)} min ahead is allowed: check the sender's clock",
            )
        )
    quarter, starts_at = _quarter(event.fiscal_year, event.quarter)
    if event.reported_at < starts_at:  # FiscalQuarter.has_started, with the start computed once per quarter
        failures.append(
            _Failure(
                ReasonCode.future_period,
                "quarter",
                f"対象期間が未開始 (future_period): {quarter.label} had not started at reported_at "
                f"{event.reported_at.isoformat()}; it starts {_start_label(quarter)}. Report on a quarter "
                "that has begun",
            )
        )
    reported_on = tokyo_date(event.reported_at)
    for i, kpi in enumerate(event.kpis):
        if kpi.as_of > reported_on:
            failures.append(
                _Failure(
                    ReasonCode.kpi_future,
                    f"kpis.{i}.as_of",
                    f"観測日が報告日より後 (kpi_future): kpis.{i} (target {kpi.target}) is dated {kpi.as_of.isoformat()}, "
                    f"after the report's reported_at ({reported_on.isoformat()}, Asia/Tokyo); a value cannot be observed "
                    "after it is reported: check the as_of date (the day the value was measured) and send the report again",
                )
            )
            break
    return failures


def _precedence(failure: _Failure) -> int:
    return REASON_PRECEDENCE.index(failure.reason)


def decide(report: Report, *, now: datetime, measure: Measure | None, previous: PriorRecord | None) -> Decision:
    """Apply the admission rules to a well-formed report; several failures → the first in REASON_PRECEDENCE."""
    event = report.event
    event_id = report.event_id
    failures: list[_Failure] = []
    if report.subject_agency != event.agency.value:
        failures.append(
            _Failure(
                ReasonCode.agency_mismatch,
                "agency",
                f"省庁不一致 (agency_mismatch): the payload says agency {event.agency.value!r} but it was "
                + (
                    f"published on {clean(report.subject, 80)!r} by {clean(report.subject_agency, 40)!r}; an "
                    "agency reports only as itself, on status.{its own code}.{measure_id}"
                    if report.subject.startswith(f"{STATUS_SUBJECT_PREFIX}.")
                    else f"published on {clean(report.subject, 80)!r}, {clean(report.subject_agency, 40)!r}'s "
                    f"subject; publish {event.agency.value}'s report on "
                    f"{report.subject.partition('.')[0]}.{event.agency.value}.{event.measure_id}"
                ),
            )
        )
    elif previous is not None and previous.content_hash == report.content_hash and previous.admitted:
        # An admitted event resent as is: idempotent whatever the catalog or the clock say now.
        return Duplicate(report=report)
    failures += _catalog_failures(report, measure) + _time_failures(report, now)
    if previous is not None and previous.content_hash != report.content_hash:
        failures.append(
            _Failure(
                ReasonCode.duplicate_conflict,
                "event_id",
                f"ID重複 (duplicate_conflict): event_id {event_id} was already used for a report with different "
                "content; a corrected or new report needs a new event_id (a retry must resend the same content)",
            )
        )
    if failures:
        first = min(failures, key=_precedence)
        return Reject(reason=first.reason, message=first.message, event_id=event_id, report=report, field=first.field)
    return Admit(report=report)


def admit(
    subject: str,
    data: bytes,
    *,
    now: datetime,
    measure: Callable[[str], Measure | None] | Mapping[str, Measure],
    previous: Callable[[UUID], PriorRecord | None] | Mapping[UUID, PriorRecord],
) -> Decision:
    """The whole admission decision for one message, given the catalog and the idempotency records."""
    read = read_report(subject, data)
    if isinstance(read, Reject):
        return read
    measure_id = read.event.measure_id
    found = measure.get(measure_id) if isinstance(measure, Mapping) else measure(measure_id)
    event_id = read.event.event_id
    prior = previous.get(event_id) if isinstance(previous, Mapping) else previous(event_id)
    return decide(read, now=now, measure=found, previous=prior)


def judge_event(
    event: StatusEvent, *, now: datetime, measure: Measure | None, previous: PriorRecord | None = None
) -> Decision:
    """The decision ingest would make for `event` sent as a ministry client sends it (its JSON, on its own
    agency's subject), received at `now`: for checking a report before it is sent."""
    read = read_report(status_subject(event.agency, event.measure_id), event.model_dump_json().encode())
    if isinstance(read, Reject):
        return read
    return decide(read, now=now, measure=measure, previous=previous)
