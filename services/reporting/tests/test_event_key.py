"""An event id is its agency's own (DESIGN.md "Admission rules"): reporting keeps two agencies' reports under one
event id as two reports (issue #15 hole 3, reporting's side), and a store keyed by `event_id` alone is re-keyed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from contracts.events import AdmittedEvent
from contracts.periods import FiscalQuarter
from reporting import repository
from reporting.handlers import Admitted, admitted_from_model, apply_admitted
from reporting.repository import LIVE
from reporting.testing import status_event
from shinchoku_runtime.db import make_engine

Q = FiscalQuarter(2025, 2)


def _admitted(agency: str, measure_id: str, event_id: str) -> Admitted:
    at = Q.end_at - timedelta(days=1)
    event = status_event(
        measure_id=measure_id, agency=agency, quarter=Q, status="on_track", reported_at=at, event_id=event_id
    )
    doc = {
        "event": event,
        "admitted_at": datetime.now(UTC).isoformat(),
        "received_at": at.astimezone(UTC).isoformat(),
        "subject": f"status.{agency}.{measure_id}",
    }
    return admitted_from_model(AdmittedEvent.model_validate(doc))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _stored(engine: Engine, event_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(LIVE.events.c.agency).where(LIVE.events.c.event_id == event_id)).all()
    return sorted(agency for (agency,) in rows)


def test_two_agencies_reports_under_one_event_id_are_both_kept(engine: Engine) -> None:
    repository.create_store(engine)
    event_id = str(uuid.uuid4())
    first, second = _admitted("digital", "1-1", event_id), _admitted("mic", "1-2", event_id)
    with engine.begin() as conn:
        apply_admitted(conn, store=LIVE, batch=[first])
    with engine.begin() as conn:
        apply_admitted(conn, store=LIVE, batch=[second, first])  # a redelivery of the first alongside
    assert _stored(engine, event_id) == ["digital", "mic"]
    with engine.connect() as conn:
        effective = repository.effective_for_quarter(conn, fiscal_year=Q.fiscal_year, quarter=Q.quarter)
    assert sorted((r.agency, r.measure_id, r.event_id) for r in effective) == [
        ("digital", "1-1", event_id),
        ("mic", "1-2", event_id),
    ]


def test_a_store_keyed_by_event_id_alone_is_rekeyed_keeping_its_rows(engine: Engine) -> None:
    old = sa.MetaData()
    legacy = sa.Table(
        LIVE.events.name,
        old,
        *(sa.Column(c.name, c.type, nullable=c.nullable) for c in LIVE.events.columns),
        sa.PrimaryKeyConstraint("event_id", name="pk_events"),
    )
    old.create_all(engine)
    kept = _admitted("digital", "1-1", str(uuid.uuid4()))
    with engine.begin() as conn:
        conn.execute(sa.insert(legacy), [kept.event_row._asdict()])
    repository.create_store(engine)
    with engine.connect() as conn:
        key = sa.inspect(conn).get_pk_constraint(LIVE.events.name)
    assert key["constrained_columns"] == ["agency", "event_id"]
    assert _stored(engine, kept.event_id) == ["digital"]
    other = _admitted("mic", "1-2", kept.event_id)
    with engine.begin() as conn:
        apply_admitted(conn, store=LIVE, batch=[other])
    assert _stored(engine, kept.event_id) == ["digital", "mic"]
    repository.create_store(engine)  # a second start changes nothing
    assert _stored(engine, kept.event_id) == ["digital", "mic"]
