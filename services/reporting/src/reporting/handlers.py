"""Applying admitted events to the store: one call per batch, inside the caller's transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from contracts.events import AdmittedEvent
from contracts.periods import FiscalQuarter
from reporting import repository, revision_store
from reporting.cycle.apply import apply_close, apply_review, restate_if_changed
from reporting.cycle.cursor import contiguous, lock_cursor, set_cursor
from reporting.cycle.facts import (
    CloseFact,
    ReviewFact,
    decode_close,
    decode_review,
    is_close_subject,
    is_review_subject,
)
from reporting.cycle.state import closed_quarters
from reporting.domain import KpiReading, LeadReport, effective_reports
from reporting.repository import EffectiveRow, EventRow, Store


@dataclass(frozen=True, slots=True)
class Admitted:
    """An admitted event as the store keeps it: its `events` row and the report it makes."""

    event_row: EventRow
    report: LeadReport

    @property
    def event_id(self) -> str:
        return self.report.event_id

    @property
    def key(self) -> tuple[str, str]:
        """What identifies an admitted report: an event id is its agency's own (DESIGN.md "Admission rules"), so
        two agencies' reports under one id are two reports."""
        return (self.report.agency, self.report.event_id)

    @property
    def admitted_at_us(self) -> int:
        return self.event_row.admitted_at_us

    def effective_row(self) -> EffectiveRow:
        """The `effective_reports` row this event makes."""
        return EffectiveRow.of_event(self.event_row)


@lru_cache(maxsize=256)
def _deadline_us(fiscal_year: int, quarter: int) -> int:
    return repository.to_micros(FiscalQuarter(fiscal_year, quarter).on_time_deadline)


def admitted_from_model(admitted: AdmittedEvent) -> Admitted:
    event = admitted.event
    event_id = str(event.event_id)
    reported_us = repository.to_micros(event.reported_at)
    # Timeliness by receipt (DESIGN.md "Rollup semantics"): the broker's timestamp that ingest carries, else (an
    # ingest from before that field) its admission, never earlier than receipt; a backfill by its reported_at.
    received_at = admitted.received_at or admitted.admitted_at
    judged_us = reported_us if admitted.backfilled else repository.to_micros(received_at)
    kpis = tuple(KpiReading(k.target, k.value, k.as_of) for k in event.kpis) if event.kpis else ()
    # `_value_` rather than `.value`: the enum property costs a microsecond each on this path.
    agency: str = event.agency._value_
    status: str = event.status._value_
    # Positional, in the named tuples' field order: keywords cost about a microsecond per event on this path.
    row = EventRow(
        event_id,
        event.measure_id,
        agency,
        event.fiscal_year,
        event.quarter,
        status,
        reported_us,
        event.reported_at.isoformat(),
        judged_us <= _deadline_us(event.fiscal_year, event.quarter),  # on_time
        repository.to_micros(admitted.admitted_at),
        admitted.subject,
        event.progress,
        repository.kpis_json(kpis),
        event.note,
        event.reporter,
        admitted.backfilled,
        received_at.isoformat(),
    )
    report = LeadReport(
        event.measure_id,
        agency,
        event.fiscal_year,
        event.quarter,
        status,
        event.reported_at,
        event_id,
        event.progress,
        kpis,
        event.note,
        event.reporter,
        admitted.backfilled,
        received_at=received_at,
    )
    return Admitted(row, report)


def decode_admitted(data: bytes) -> Admitted:
    """Decode an ACCEPTED message body (AdmittedEvent JSON); raises pydantic.ValidationError on bad input."""
    return admitted_from_model(AdmittedEvent.model_validate_json(data))


def apply_admitted(
    conn: Connection,
    *,
    store: Store,
    batch: Sequence[Admitted],
    now: datetime | None = None,
    touched: dict[tuple[int, int], revision_store.Touched] | None = None,
) -> int:
    """Store a batch of admitted events and update the effective reports they affect.

    Idempotent: an event already stored is not stored again, and an effective report only changes when a
    report wins the ordering, so redeliveries and replays never double-count. Returns the batch size.
    The quarters' revisions are bumped here, or, given `touched`, noted there for the caller to bump once.
    """
    if not batch:
        return 0
    unique: dict[tuple[str, str], Admitted] = {}
    for admitted in batch:
        unique.setdefault(admitted.key, admitted)
    events = sorted(unique.values(), key=lambda a: a.key)
    repository.insert_events(conn, store=store, rows=[a.event_row for a in events])
    winners = effective_reports(a.report for a in events)
    winner_keys = {(report.agency, report.event_id) for report in winners.values()}
    repository.upsert_effective(conn, store=store, rows=[a.effective_row() for a in events if a.key in winner_keys])
    quarters = {} if touched is None else touched
    for admitted in events:
        report = admitted.report
        revision_store.touch(quarters, (report.fiscal_year, report.quarter), admitted.admitted_at_us, report.measure_id)
    if touched is None:
        revision_store.bump_revisions(conn, store=store, quarters=quarters, now=now)
    return len(batch)


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    """What the consumer needs back about a stored event: ids for its span, admission time for the lag."""

    event_id: str
    measure_id: str
    agency: str
    admitted_at_us: int


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Per message, the stored fact or why the message is not the JSON its subject calls for; and a database fault, if
    one rolled the transaction back (then nothing of the batch was stored)."""

    events: list[AppliedEvent | str]
    error: str | None = None
    #: Indexes of the messages not applied yet (the facts before them in the log are not): to nak, not to ack.
    deferred: list[int] = field(default_factory=list)
    #: The fields of a newer contract this version left out to decode a message (`event.confidence`), one entry per
    #: message and field.
    ignored: tuple[str, ...] = ()
    #: Whether the batch may have written a revision to publish (a close, a restatement): the service's publication
    #: outbox is woken for it at once (otherwise it finds revisions by polling). True after a fault, to be safe.
    publishes: bool = False
    #: The order cursor when messages were deferred (the last sequence applied): what they wait for is the next.
    cursor: int | None = None


T = TypeVar("T")


def _unknown_fields_only(error: ValidationError) -> list[tuple[int | str, ...]] | None:
    """The paths of the fields a message has and this version's contract does not, when that is all that is wrong
    with it (None otherwise: a missing field, a wrong type, a value out of range are not additive)."""
    problems = error.errors()
    if not problems or any(p["type"] != "extra_forbidden" for p in problems):
        return None
    return [tuple(p["loc"]) for p in problems]


def _without(doc: Any, path: tuple[int | str, ...]) -> None:
    for step in path[:-1]:
        doc = doc[step]
    del doc[path[-1]]


def additive(decode: Callable[[bytes], T], data: bytes) -> tuple[T, tuple[str, ...]]:
    """`decode(data)`, except that a message whose only fault is fields this version does not know (what a newer
    ingest adds: the contracts change only additively) is decoded without them, the rest as strictly as ever.
    Returns the decoded value and the ignored fields' paths; raises like `decode` on anything else."""
    try:
        return decode(data), ()
    except ValidationError as e:
        paths = _unknown_fields_only(e)
        if paths is None:
            raise
    doc = json.loads(data)
    for path in paths:
        _without(doc, path)
    return decode(json.dumps(doc).encode()), tuple(".".join(map(str, p)) for p in paths)


#: A message of ACCEPTED as the writer gets it: (subject, stream sequence or 0 when unknown, payload).
Delivered = tuple[str, int, bytes]

Fact = Admitted | ReviewFact | CloseFact


def decode_fact(subject: str, seq: int, data: bytes) -> Fact:
    """An ACCEPTED message by its subject: an admitted report, review or close (pydantic.ValidationError if not)."""
    if is_review_subject(subject):
        return decode_review(data, position=seq or time.time_ns())
    if is_close_subject(subject):
        return decode_close(data)
    return decode_admitted(data)


def decode_tolerant(subject: str, seq: int, data: bytes) -> tuple[Fact, tuple[str, ...]]:
    """`decode_fact` through `additive`."""
    return additive(lambda body: decode_fact(subject, seq, body), data)


def applied(fact: Fact) -> AppliedEvent:
    """What the consumer's span and lag need of a fact."""
    if isinstance(fact, Admitted):
        report = fact.report
        return AppliedEvent(report.event_id, report.measure_id, report.agency, fact.admitted_at_us)
    if isinstance(fact, ReviewFact):
        row = fact.row
        return AppliedEvent(fact.review_id, row["measure_id"], row["agency"], fact.admitted_at_us)
    return AppliedEvent(fact.close_id, "", "", fact.admitted_at_us)


def apply_facts(conn: Connection, *, store: Store, facts: Sequence[Fact], now: datetime | None = None) -> bool:
    """Apply admitted facts in their (the log's) order: runs of reports to open quarters as one batch each; a
    report to a closed quarter, a review or a close one at a time, each followed by what it does to the cycle
    (`reporting.cycle.apply`: review states, revision 1 on a close, a restatement when a closed quarter's
    figures changed). Each quarter's revision is bumped once, at the end, with every measure the facts touched.
    Returns whether a revision to publish was written (a close, a restatement).
    """
    publishes = False
    closed = set(closed_quarters(conn, store.cycle))
    run: list[Admitted] = []
    touched: dict[tuple[int, int], revision_store.Touched] = {}

    def flush() -> None:
        if run:
            apply_admitted(conn, store=store, batch=run, touched=touched)
            run.clear()

    for fact in facts:
        if isinstance(fact, Admitted):
            report = fact.report
            quarter = (report.fiscal_year, report.quarter)
            if quarter not in closed:
                run.append(fact)
                continue
            flush()
            apply_admitted(conn, store=store, batch=[fact], touched=touched)
            restated = restate_if_changed(
                conn, store, quarter, report.measure_id, cause=fact.event_id, admitted_at_us=fact.admitted_at_us
            )
            publishes = publishes or restated is not None
            continue
        flush()
        if isinstance(fact, ReviewFact):
            changed = apply_review(conn, store, fact)
            if changed and fact.quarter in closed:
                publishes = True  # a restatement when its measure's figures changed
                restate_if_changed(
                    conn,
                    store,
                    fact.quarter,
                    fact.row["measure_id"],
                    cause=fact.review_id,
                    admitted_at_us=fact.admitted_at_us,
                )
        else:
            changed = apply_close(conn, store, fact)
            if changed:
                closed.add(fact.quarter)
                publishes = True  # revision 1
        if changed:  # a review may change its measure's figures; a close no report's
            measures = (fact.row["measure_id"],) if isinstance(fact, ReviewFact) else ()
            revision_store.touch(touched, fact.quarter, fact.admitted_at_us, *measures)
    flush()
    revision_store.bump_revisions(conn, store=store, quarters=touched, now=now)
    return publishes


#: The writer's answer for a batch sent behind one that failed (`workers.InLogOrder`): nothing of it was attempted;
#: it is sent again, as a retry, once the failed batch is committed.
NOT_ATTEMPTED = "not attempted: a batch before it failed"

#: How long a batch waits for the facts before it in the log (held by another replica) before its messages that
#: do not follow the cursor are nak'ed; and the nak's delay.
ORDER_WAIT_SECONDS = 1.0
ORDER_POLL_SECONDS = 0.01
DEFERRED_DELAY_SECONDS = 0.0


def decode_and_apply(
    engine: Engine, messages: Sequence[Delivered], *, store: Store, order_wait: float = ORDER_WAIT_SECONDS
) -> BatchOutcome:
    """Decode a batch of ACCEPTED messages and apply the admitted facts in the log's order.

    With stream sequences (the consumer's messages), each transaction applies the batch's messages that follow the
    order cursor without a gap (those at or below it were applied already); the rest wait for the facts before
    them (another replica holds them) and are `deferred` (nak'ed: they come back) when `order_wait` seconds pass
    without progress. Without sequences (0), in the order given, in one transaction.
    """
    events: list[AppliedEvent | str] = []
    pending: list[tuple[int, int, Fact | None]] = []  # (index in the batch, stream sequence, fact or None)
    ignored: list[str] = []
    for index, (subject, seq, data) in enumerate(messages):
        try:
            fact, unknown = decode_tolerant(subject, seq, data)
        except (ValidationError, ValueError) as e:
            events.append(str(e))
            pending.append((index, seq, None))
            continue
        ignored += unknown
        pending.append((index, seq, fact))
        events.append(applied(fact))
    ordered = bool(pending) and all(seq > 0 for _, seq, _ in pending)
    deadline = time.monotonic() + order_wait
    publishes = False
    try:
        while True:
            with engine.begin() as conn:
                last = lock_cursor(conn, store) if ordered else None
                if last is None:
                    take = {seq for _, seq, _ in pending}
                else:
                    # A message this version cannot decode is held: the cursor stops before it, so that the version
                    # that decodes it (after an upgrade) applies it in its place, and what follows waits.
                    take = contiguous(last, [seq for _, seq, f in pending if f is not None])
                facts = sorted(((seq, f) for _, seq, f in pending if f is not None and seq in take), key=lambda x: x[0])
                wrote = apply_facts(conn, store=store, facts=[f for _, f in facts])
                if ordered and take:
                    set_cursor(conn, store, max(take))
            publishes = publishes or wrote
            if last is None:
                return BatchOutcome(events, ignored=tuple(ignored), publishes=publishes)
            pending = [(i, seq, f) for i, seq, f in pending if seq > last and seq not in take and f is not None]
            if not pending:
                return BatchOutcome(events, ignored=tuple(ignored), publishes=publishes)
            now = time.monotonic()
            if take:
                deadline = now + order_wait
            elif now >= deadline:
                deferred = [i for i, _, _ in pending]
                return BatchOutcome(events, deferred=deferred, ignored=tuple(ignored), publishes=publishes, cursor=last)
            time.sleep(ORDER_POLL_SECONDS)
    except SQLAlchemyError as e:
        error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        return BatchOutcome(events, error, ignored=tuple(ignored), publishes=True)
