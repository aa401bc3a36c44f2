"""The outbox's store on SQLite and PostgreSQL: marks, the unpublished, one reconciler at a time, and a store
from before the outbox and before per-agency claims brought up to date at start."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from ingest import outbox_repository, repository
from ingest.domain import NewClaim
from ingest.outbox_repository import PassLock
from ingest.repository import DecisionRecord, Mark
from shinchoku_runtime.db import make_engine

RECEIVED = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def decision(seq: int, outcome: str, event_id: str | None = None) -> DecisionRecord:
    admitted = outcome == repository.OUTCOME_ADMITTED
    return DecisionRecord(
        stream_seq=seq,
        event_id=event_id or f"00000000-0000-4000-8000-{seq:012d}",
        outcome=outcome,
        reason=None if outcome != repository.OUTCOME_REJECTED else "not_lead",
        message=None,
        subject="status.mof.1-25",
        agency="mof",
        measure_id="1-25",
        received_at=RECEIVED,
        admitted_at=RECEIVED if admitted else None,
        trace_id=None,
        content_hash="c" * 32,
        rejection_id=None if outcome != repository.OUTCOME_REJECTED else f"STATUS-{seq}",
        payload=None if outcome != repository.OUTCOME_REJECTED else b"{}",
    )


def test_marks_the_unpublished_and_what_a_stream_lost(database_url: str) -> None:
    engine = make_engine(database_url)
    repository.create_schema(engine)
    rows = [decision(1, "admitted"), decision(2, "rejected"), decision(3, "admitted"), decision(4, "duplicate")]
    repository.write_batch(engine, decisions=rows, claims=[], late_admissions=[])
    assert outbox_repository.count_unpublished(engine) == (3, 1)  # the duplicate publishes nothing
    # Marks ride in the next batch's transaction; a mark never moves a decision already marked.
    repository.write_batch(
        engine, decisions=[decision(5, "admitted")], claims=[], late_admissions=[], published=[Mark(1, 10), Mark(2, 4)]
    )
    repository.mark_published(engine, [Mark(1, 99), Mark(3, 11)])
    assert outbox_repository.count_unpublished(engine) == (1, 5)
    assert [u.decision.stream_seq for u in outbox_repository.load_unpublished(engine, limit=10)] == [5]
    assert outbox_repository.max_published_seq(engine, outcome="admitted") == 11
    assert repository.load_stored(engine, seqs=[1])[1].published_seq == 10
    # ACCEPTED now ends at 10: the admission published at 11 is unpublished again, the one at 10 is not.
    lost = outbox_repository.unmark_after(engine, outcome="admitted", seq=10)
    assert [u.decision.stream_seq for u in lost] == [3]
    assert outbox_repository.count_unpublished(engine) == (2, 3)
    engine.dispose()


def test_one_reconciler_at_a_time(database_url: str) -> None:
    """Two processes' engines on one store: the second cannot take the pass lock while the first holds it."""
    first, second = make_engine(database_url), make_engine(database_url)
    repository.create_schema(first)
    a, b = PassLock(first), PassLock(second)
    try:
        assert a.acquire()
        assert not b.acquire()
        a.release()
        assert b.acquire()
        assert not PassLock(first).acquire()
    finally:
        a.release()
        b.release()
        first.dispose()
        second.dispose()


def test_a_store_from_before_the_outbox_is_brought_up_to_date(database_url: str) -> None:
    """A decision table without `published_seq` and claims keyed by event id alone (`event_id_claim`): at start
    the old decisions count as published (the outbox starts with the upgrade, it does not republish history),
    and the claims move to per-agency `event_claim`."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE decision (stream_seq BIGINT PRIMARY KEY, event_id VARCHAR(36), outcome VARCHAR(10) NOT "
                "NULL, reason VARCHAR(32), message TEXT, subject TEXT NOT NULL, agency VARCHAR(64) NOT NULL, "
                "measure_id VARCHAR(16), received_at TIMESTAMP WITH TIME ZONE NOT NULL, admitted_at TIMESTAMP WITH "
                "TIME ZONE, trace_id VARCHAR(32), content_hash VARCHAR(32), rejection_id VARCHAR(40), payload "
                + ("BYTEA" if engine.dialect.name == "postgresql" else "BLOB")
                + ")"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE event_id_claim (event_id VARCHAR(36) PRIMARY KEY, content_hash VARCHAR(32) NOT NULL, "
                "agency VARCHAR(64) NOT NULL, first_seq BIGINT NOT NULL, admitted_seq BIGINT)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO decision (stream_seq, event_id, outcome, subject, agency, received_at) VALUES "
                "(1, 'e1', 'admitted', 'status.mof.1-25', 'mof', :at), (2, 'e1', 'duplicate', 'status.mof.1-25', "
                "'mof', :at)"
            ),
            {"at": RECEIVED},
        )
        conn.execute(sa.text("INSERT INTO event_id_claim VALUES ('e1', :h, 'mof', 1, 1)"), {"h": "c" * 32})
    repository.create_schema(engine)
    repository.create_schema(engine)  # a second start finds nothing left to do
    assert outbox_repository.count_unpublished(engine) == (0, None)
    assert repository.load_stored(engine, seqs=[1])[1].published_seq == repository.PUBLISHED_BEFORE_OUTBOX
    assert repository.load_priors(engine, keys=[("mof", "e1")])[("mof", "e1")].admitted
    assert "event_id_claim" not in sa.inspect(engine).get_table_names()
    # Another agency may now use the same id.
    repository.write_batch(
        engine,
        decisions=[decision(3, "admitted", event_id="e1")._replace(agency="mhlw")],
        claims=[NewClaim("e1", "d" * 32, "mhlw", 3, 3)],
        late_admissions=[],
    )
    assert set(repository.load_priors(engine, keys=[("mof", "e1"), ("mhlw", "e1")])) == {("mof", "e1"), ("mhlw", "e1")}
    engine.dispose()
