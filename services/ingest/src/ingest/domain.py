"""Ingest's pure decision of a batch: its messages decided in stream order, each seeing the ones before it.

The rules for one message are contract v1's, written once in `contracts.admission` (re-exported here for
ingest's modules and tests). This module adds what a batch needs on top of them: which kind of message
each one is (by its subject), and the idempotency records (claims) the batch leaves behind, so that the
second copy of an event in one batch is decided against the first. Nothing here does I/O: the batch's
measures and stored records are handed in, and tests call it with plain values.

Kinds: a report on `status.{agency}.{measure_id}` is the one kind today. The secretariat's commands
(`review.…`, `close.…`, `backfill.…`) will arrive on the same stream and be decided like reports: each will
be a `MessageKind` with its own reader and decider, registered in `KINDS` under its subject's first token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
from contracts.streams import STATUS_SUBJECT_PREFIX

__all__ = [
    "CLOCK_SKEW_ALLOWANCE",
    "KINDS",
    "MAX_PAYLOAD_BYTES",
    "REPORT",
    "Admit",
    "BatchDecision",
    "ClaimKey",
    "Decision",
    "Duplicate",
    "LateAdmission",
    "MessageKind",
    "NewClaim",
    "Pending",
    "PriorRecord",
    "Read",
    "Reject",
    "Report",
    "admit",
    "admitted_json",
    "claims_event_id",
    "clean",
    "content_hash",
    "decide",
    "decide_batch",
    "describe_validation_errors",
    "hash_and_json",
    "kind_of",
    "read_message",
    "read_report",
    "readable_event_id",
]

#: A message as read: a well-formed report, or its rejection (malformed).
Read = Report | Reject


class NewClaim(NamedTuple):
    """A new idempotency record: an agency's event_id bound to the content it first carried (a row of
    `event_claim`)."""

    event_id: str
    content_hash: str
    agency: str
    first_seq: int
    admitted_seq: int | None


class LateAdmission(NamedTuple):
    """An agency's event_id claimed by an earlier rejected message, now admitted by an identical resend."""

    agency: str
    event_id: str
    admitted_seq: int


#: What idempotency is keyed by: (the agency of the subject, event_id). An event id is an agency's own, so
#: no agency can claim, block or replace another's report by using its id first (DESIGN "Admission rules").
ClaimKey = tuple[str, str]


class Decider(Protocol):
    def __call__(
        self, read: Report, *, now: datetime, measures: Mapping[str, Measure | None], previous: PriorRecord | None
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class MessageKind:
    """How one kind of message on STATUS is read from its bytes and decided."""

    name: str
    read: Callable[[str, bytes], Read]
    decide: Decider


def _decide_report(
    read: Report, *, now: datetime, measures: Mapping[str, Measure | None], previous: PriorRecord | None
) -> Decision:
    return decide(read, now=now, measure=measures.get(read.event.measure_id), previous=previous)


REPORT = MessageKind("report", read_report, _decide_report)
#: Kinds by their subjects' first token. Any other subject is read as a report, and so rejected as malformed
#: (it is not `status.{agency}.{measure_id}`), as every message that is nothing ingest knows.
KINDS: dict[str, MessageKind] = {STATUS_SUBJECT_PREFIX: REPORT}


def kind_of(subject: str) -> MessageKind:
    return KINDS.get(subject.partition(".")[0], REPORT)


def read_message(subject: str, data: bytes) -> Read:
    """Read one message as its kind reads it."""
    return kind_of(subject).read(subject, data)


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
    messages: Sequence[Pending], *, measures: Mapping[str, Measure | None], priors: Mapping[ClaimKey, PriorRecord]
) -> BatchDecision:
    """Decide every message in stream order, each decision seeing the claims of the ones before it.

    `measures` holds every measure the reports name (None: not in the catalog); `priors` the stored
    idempotency records of their (agency, event_id) (or none of them: see `BatchDecision.unclaimed_event_ids`).
    Each message is judged at its own receipt time.
    """
    seen = dict(priors)
    batch = BatchDecision()
    decisions = batch.decisions
    for m in messages:
        read = m.read
        if read is None:
            raise ValueError(f"message {m.seq} was not read before deciding")
        if isinstance(read, Reject):
            decisions.append(read)
            continue
        previous = seen.get((read.subject_agency, read.event_id))
        decision = kind_of(m.subject).decide(read, now=m.received_at, measures=measures, previous=previous)
        decisions.append(decision)
        if not isinstance(decision, Duplicate):
            _record_claim(m, decision, previous, seen, batch)
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
