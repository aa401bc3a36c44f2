"""Ingest's pure decision of a batch: its messages decided in stream order, each seeing the ones before it.

The rules for one message are contract v1's, written once in `contracts.admission` (re-exported here for
ingest's modules and tests). This module adds what a batch needs on top of them: which kind of message
each one is (by its subject), and the idempotency records (claims) the batch leaves behind, so that the
second copy of an event in one batch is decided against the first. Nothing here does I/O: the batch's
measures and stored records are handed in, and tests call it with plain values.

Kinds, by their subjects' first token (`KINDS`): a ministry's report on `status.{agency}.{measure_id}`, and
the secretariat's commands on the same stream, decided by their own rules (`contracts.commands`): a review
(`review.{agency}.{measure_id}`), a close (`close.{fy}.{q}`) and a backfilled report
(`backfill.{agency}.{measure_id}`). Each is a `MessageKind` with its reader and decider. Besides the
message and its id's record, a decision sees what the batch knows (`Known`): the catalog's measures, the
admitted reports that its reviews name, the closed quarters and who sent each command; a report or close
admitted earlier in the batch counts for the messages after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from contracts.admission import (
    CLOCK_SKEW_ALLOWANCE,
    MAX_PAYLOAD_BYTES,
    Admit,
    Decision,
    Duplicate,
    PriorRecord,
    Reject,
    Report,
    admit,
    admitted_json,
    claims_event_id,
    clean,
    content_hash,
    decide,
    describe_validation_errors,
    hash_and_json,
    read_report,
    readable_event_id,
)
from contracts.catalog import Measure
from contracts.commands import (
    BACKFILL,
    CLOSE,
    NO_TOKEN,
    REVIEW,
    Command,
    Sender,
    decide_backfill,
    decide_close,
    decide_review,
    read_backfill,
    read_close,
    read_review,
    reviewed_report,
)
from contracts.cycle import CloseEvent, ReviewedReport, ReviewEvent
from contracts.streams import STATUS_SUBJECT_PREFIX

__all__ = [
    "BACKFILL_KIND",
    "CLOCK_SKEW_ALLOWANCE",
    "CLOSE_KIND",
    "KINDS",
    "MAX_PAYLOAD_BYTES",
    "REPORT",
    "REVIEW_KIND",
    "Admit",
    "BatchDecision",
    "ClaimKey",
    "Command",
    "Decision",
    "Duplicate",
    "Known",
    "LateAdmission",
    "MessageKind",
    "NewClaim",
    "NewClose",
    "Pending",
    "PriorRecord",
    "Read",
    "Reject",
    "Report",
    "Sender",
    "admit",
    "admitted_json",
    "claims_event_id",
    "clean",
    "closes_named",
    "content_hash",
    "decide",
    "decide_batch",
    "describe_validation_errors",
    "hash_and_json",
    "kind_of",
    "read_message",
    "read_report",
    "readable_event_id",
    "reports_named",
]

#: A message as read: a well-formed report or command, or its rejection (malformed).
Read = Report | Command | Reject
#: A fiscal quarter: (fiscal year, quarter).
QuarterKey = tuple[int, int]


class NewClaim(NamedTuple):
    """A new idempotency record: an agency's event_id bound to the content it first carried (a row of
    `event_claim`)."""

    event_id: str
    content_hash: str
    agency: str
    first_seq: int
    admitted_seq: int | None


class NewClose(NamedTuple):
    """A quarter the batch closes (a row of `closed_quarter`): at most one close per quarter is ever admitted."""

    fiscal_year: int
    quarter: int
    close_id: str
    stream_seq: int


class LateAdmission(NamedTuple):
    """An agency's event_id claimed by an earlier rejected message, now admitted by an identical resend."""

    agency: str
    event_id: str
    admitted_seq: int


#: What idempotency is keyed by: (the agency of the subject, event_id). An event id is an agency's own, so
#: no agency can claim, block or replace another's report by using its id first (DESIGN "Admission rules").
ClaimKey = tuple[str, str]


@dataclass(slots=True)
class Known:
    """What the batch's decisions see besides each message and its id's record."""

    #: Every measure the batch's reports name (None: not in the catalog).
    measures: Mapping[str, Measure | None]
    #: Admitted reports by (agency, event_id) that the batch's reviews name, from the store.
    reports: Mapping[ClaimKey, ReviewedReport] = field(default_factory=dict)
    #: Reports the batch admitted so far (a review after its report in the same batch names one of them).
    admitted: dict[ClaimKey, Report] = field(default_factory=dict)
    #: Closed quarters, and the close_id that closed each.
    closed: dict[QuarterKey, str] = field(default_factory=dict)
    #: Who sent each command, by stream sequence (verified from its bearer token; none: `NO_TOKEN`).
    senders: Mapping[int, Sender] = field(default_factory=dict)

    def sender(self, seq: int) -> Sender:
        return self.senders.get(seq, NO_TOKEN)

    def report(self, key: ClaimKey) -> ReviewedReport | None:
        """The admitted report (agency, event_id), stored before or admitted earlier in the batch."""
        admitted = self.admitted.get(key)
        return reviewed_report(admitted) if admitted is not None else self.reports.get(key)


class Decider(Protocol):
    def __call__(
        self, read: Report | Command, *, message: Pending, known: Known, previous: PriorRecord | None
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class MessageKind:
    """How one kind of message on STATUS is read from its bytes and decided."""

    name: str
    read: Callable[[str, bytes], Read]
    decide: Decider


def _report(read: Report | Command) -> Report:
    if not isinstance(read, Report):
        raise TypeError(f"a {read.kind} is not decided as a report")
    return read


def _command(read: Report | Command, kind: str) -> Command:
    if not isinstance(read, Command) or read.kind != kind:
        raise TypeError(f"not a {kind}: {read.subject}")
    return read


def _decide_report(read: Report | Command, *, message: Pending, known: Known, previous: PriorRecord | None) -> Decision:
    report = _report(read)
    return decide(
        report, now=message.received_at, measure=known.measures.get(report.event.measure_id), previous=previous
    )


def _decide_review(read: Report | Command, *, message: Pending, known: Known, previous: PriorRecord | None) -> Decision:
    command = _command(read, REVIEW)
    review = command.body
    assert isinstance(review, ReviewEvent)
    reviewed = known.report((command.agency or "", str(review.event_id)))
    return decide_review(command, sender=known.sender(message.seq), reviewed=reviewed, previous=previous)


def _decide_close(read: Report | Command, *, message: Pending, known: Known, previous: PriorRecord | None) -> Decision:
    command = _command(read, CLOSE)
    close = command.body
    assert isinstance(close, CloseEvent)
    return decide_close(
        command,
        sender=known.sender(message.seq),
        received_at=message.received_at,
        closed_by=known.closed.get((close.fiscal_year, close.quarter)),
        previous=previous,
    )


def _decide_backfill(
    read: Report | Command, *, message: Pending, known: Known, previous: PriorRecord | None
) -> Decision:
    report = _report(read)
    return decide_backfill(
        report,
        sender=known.sender(message.seq),
        now=message.received_at,
        measure=known.measures.get(report.measure_id),
        previous=previous,
    )


REPORT = MessageKind("report", read_report, _decide_report)
REVIEW_KIND = MessageKind("review", read_review, _decide_review)
CLOSE_KIND = MessageKind("close", read_close, _decide_close)
BACKFILL_KIND = MessageKind("backfill", read_backfill, _decide_backfill)
#: Kinds by their subjects' first token. Any other subject is read as a report, and so rejected as malformed
#: (it is not `status.{agency}.{measure_id}`), as every message that is nothing ingest knows.
KINDS: dict[str, MessageKind] = {
    STATUS_SUBJECT_PREFIX: REPORT,
    REVIEW: REVIEW_KIND,
    CLOSE: CLOSE_KIND,
    BACKFILL: BACKFILL_KIND,
}


def kind_of(subject: str) -> MessageKind:
    return KINDS.get(subject.partition(".")[0], REPORT)


def read_message(subject: str, data: bytes) -> Read:
    """Read one message as its kind reads it."""
    return kind_of(subject).read(subject, data)


def reports_named(reads: Iterable[Read | None]) -> list[ClaimKey]:
    """(agency, event_id) of the reports the reviews among `reads` name (what the store is asked for)."""
    keys = []
    for read in reads:
        if isinstance(read, Command) and isinstance(read.body, ReviewEvent) and read.agency is not None:
            keys.append((read.agency, str(read.body.event_id)))
    return keys


def closes_named(reads: Iterable[Read | None]) -> bool:
    """Whether any of `reads` is a close (the closed quarters are then read from the store)."""
    return any(isinstance(read, Command) and read.kind == CLOSE for read in reads)


class Pending(Protocol):
    """What the batch decision needs of a message (ingest's `Delivery`, or plain values in a test)."""

    @property
    def seq(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def agency(self) -> str: ...
    @property
    def received_at(self) -> datetime: ...
    @property
    def read(self) -> Read | None: ...


@dataclass(slots=True)
class BatchDecision:
    #: One decision per message, in the order given.
    decisions: list[Decision] = field(default_factory=list)
    #: The event ids this batch binds to their content, by (agency, event_id).
    claims: dict[ClaimKey, NewClaim] = field(default_factory=dict)
    #: Event ids claimed before (by a rejected message) that this batch admits.
    late: list[LateAdmission] = field(default_factory=list)
    #: Quarters this batch closes.
    closes: list[NewClose] = field(default_factory=list)

    def unclaimed_event_ids(self) -> list[ClaimKey]:
        """(agency, event_id) of well-formed reports whose decision claims nothing.

        Decided without stored records, only these could come out differently with them (e.g. an admitted
        event resent after the catalog dropped a target it reports on: a duplicate, not malformed); every
        other id is checked by the claim insert itself, which fails if the id was claimed before.
        """
        return [
            (d.report.subject_agency, d.report.event_id)
            for d in self.decisions
            if isinstance(d, Reject) and d.report is not None and not claims_event_id(d, None)
        ]


def decide_batch(
    messages: Sequence[Pending],
    *,
    measures: Mapping[str, Measure | None],
    priors: Mapping[ClaimKey, PriorRecord],
    reports: Mapping[ClaimKey, ReviewedReport] | None = None,
    closed: Mapping[QuarterKey, str] | None = None,
    senders: Mapping[int, Sender] | None = None,
) -> BatchDecision:
    """Decide every message in stream order, each decision seeing the claims (and admissions) of the ones before it.

    `measures` holds every measure the reports name (None: not in the catalog); `priors` the stored
    idempotency records of their (agency, event_id) (or none of them: see `BatchDecision.unclaimed_event_ids`);
    `reports` the stored admitted reports the reviews name (`reports_named`), `closed` the closed quarters,
    `senders` who sent each command (by stream sequence). Each message is judged at its own receipt time.
    """
    seen = dict(priors)
    known = Known(measures, reports=reports or {}, closed=dict(closed or {}), senders=senders or {})
    batch = BatchDecision()
    decisions = batch.decisions
    admitted = known.admitted
    for m in messages:
        read = m.read
        if read is None:
            raise ValueError(f"message {m.seq} was not read before deciding")
        if isinstance(read, Reject):
            decisions.append(read)
            continue
        previous = seen.get((read.subject_agency, read.event_id))
        decision = kind_of(m.subject).decide(read, message=m, known=known, previous=previous)
        decisions.append(decision)
        if not isinstance(decision, Duplicate):
            _record_claim(m, decision, previous, seen, batch)
        # What the messages after an admission see of it: the report a review may name, the quarter now closed.
        if isinstance(read, Report):
            if isinstance(decision, Admit):
                admitted[read.subject_agency, read.event_id] = read
        elif isinstance(decision, Admit) and isinstance(read.body, CloseEvent):
            quarter = (read.body.fiscal_year, read.body.quarter)
            known.closed[quarter] = read.event_id
            batch.closes.append(NewClose(*quarter, close_id=read.event_id, stream_seq=m.seq))
    return batch


def _record_claim(
    m: Pending,
    decision: Admit | Reject,
    previous: PriorRecord | None,
    seen: dict[ClaimKey, PriorRecord],
    batch: BatchDecision,
) -> None:
    """Keep the batch's idempotency records, and let later messages in it see them."""
    report = decision.report
    if report is None:
        return
    event_id = report.event_id
    key = (report.subject_agency, event_id)
    admitted = isinstance(decision, Admit)
    if claims_event_id(decision, previous):
        batch.claims[key] = NewClaim(
            event_id=event_id,
            content_hash=report.content_hash,
            agency=report.subject_agency,
            first_seq=m.seq,
            admitted_seq=m.seq if admitted else None,
        )
        seen[key] = PriorRecord(content_hash=report.content_hash, admitted=admitted, agency=m.agency)
    elif admitted and previous is not None and not previous.admitted:
        pending = batch.claims.get(key)
        if pending is not None:
            batch.claims[key] = pending._replace(admitted_seq=m.seq)
        else:
            batch.late.append(LateAdmission(agency=report.subject_agency, event_id=event_id, admitted_seq=m.seq))
        seen[key] = PriorRecord(content_hash=previous.content_hash, admitted=True, agency=previous.agency)
