"""A batch says whether it wrote a revision to publish (`BatchOutcome.publishes`): the service wakes its publication
outbox for those batches only (`ReportingService._committed`), so that a report to an open quarter, the common
case, does not make the outbox look for unsent revisions (a thread and a query competing with the readers of the
rollup the report changed). A close and a restatement must say so, or their `published`/`restated` event would
wait for the outbox's next poll."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from contracts.periods import FiscalQuarter
from contracts.streams import closed_subject
from reporting import repository
from reporting.cycle import publications
from reporting.cycle.testing import admitted_close
from reporting.handlers import decode_and_apply
from reporting.testing import Admission, random_admissions, status_event, synthetic_measures
from shinchoku_runtime.db import make_engine

QUARTER = FiscalQuarter(2024, 3)
OPEN = FiscalQuarter(2024, 4)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = repository.tune(make_engine(database_url))
    repository.create_store(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_only_a_close_and_a_restatement_say_they_publish(engine: Engine) -> None:
    measures = synthetic_measures(10)
    reports = random_admissions(measures, [QUARTER, OPEN], 60)
    seq = 0

    def apply(*messages: tuple[str, bytes]) -> bool:
        nonlocal seq
        numbered = []
        for subject, body in messages:
            seq += 1
            numbered.append((subject, seq, body))
        outcome = decode_and_apply(engine, numbered, store=repository.LIVE)
        assert outcome.error is None
        assert not outcome.deferred
        return bool(outcome.publishes)

    assert apply(*((a.subject, a.body()) for a in reports)) is False  # reports to open quarters
    now = datetime.now(UTC)
    close = admitted_close(fiscal_year=QUARTER.fiscal_year, quarter=QUARTER.quarter, admitted_at=now)
    assert apply((closed_subject(QUARTER.fiscal_year, QUARTER.quarter), close.model_dump_json().encode())) is True
    assert [rev for fy, q, rev in publications.unsent(engine)] == [1]

    # A later report of a lead of the closed quarter with another status: a restatement, said.
    lead = next(a for a in reports if (a.event["fiscal_year"], a.event["quarter"]) == (2024, 3))
    status = "delayed" if lead.event["status"] != "delayed" else "on_track"
    later = status_event(
        measure_id=lead.event["measure_id"],
        agency=lead.event["agency"],
        quarter=QUARTER,
        status=status,
        reported_at=now + timedelta(days=1),
    )
    restating = Admission(later, now + timedelta(seconds=1))
    assert apply((restating.subject, restating.body())) is True
    assert [rev for fy, q, rev in publications.unsent(engine)] == [1, 2]

    # The same status again (another event) changes no figure: nothing to publish; nor does a report to the open
    # quarter.
    again = Admission({**later, "event_id": str(uuid.uuid4())}, now + timedelta(seconds=2))
    assert apply((again.subject, again.body())) is False
    other = next(a for a in reports if (a.event["fiscal_year"], a.event["quarter"]) == (2024, 4))
    fresh = Admission({**other.event, "event_id": str(uuid.uuid4())}, now + timedelta(seconds=3))
    assert apply((fresh.subject, fresh.body())) is False
    assert [rev for fy, q, rev in publications.unsent(engine)] == [1, 2]


def test_a_batch_beyond_a_gap_is_deferred_and_says_where_the_cursor_stands(engine: Engine) -> None:
    """Messages that do not follow the order cursor wait `order_wait`, then come back deferred, with the cursor they
    waited at (what the consumer's warning names: the next sequence is held elsewhere)."""
    reports = random_admissions(synthetic_measures(5), [OPEN], 4)
    first = decode_and_apply(engine, [(reports[0].subject, 1, reports[0].body())], store=repository.LIVE)
    assert first.error is None
    assert not first.deferred
    assert first.cursor is None
    beyond = [(a.subject, seq, a.body()) for seq, a in zip((3, 4, 5), reports[1:], strict=True)]
    outcome = decode_and_apply(engine, beyond, store=repository.LIVE, order_wait=0.05)
    assert outcome.error is None
    assert outcome.deferred == [0, 1, 2]
    assert outcome.cursor == 1
