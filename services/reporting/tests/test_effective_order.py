"""The latest report wins, defined once (`domain.EFFECTIVE_ORDER`); every rendering of it agrees with it.

Hypothesis makes sets of reports with many ties (one instant in several UTC offsets, so only the event id can
decide) and feeds them, in random order and batches, to each rendering on the real SQLite and PostgreSQL:
the upsert's `ON CONFLICT … WHERE` (one row at a time and through `apply_admitted`), the ranking of
`effective_as_of` (at every admission moment), and the row key and order a merge of stored rows compares
(`tables.effective_key`, `tables.stored_order`). Each must pick, per key, what `domain.effective_reports` picks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from contracts.periods import FiscalQuarter
from reporting import repository
from reporting.domain import EFFECTIVE_ORDER, LeadReport, effective_order, effective_reports
from reporting.handlers import Admitted, apply_admitted, decode_admitted
from reporting.tables import EFFECTIVE_KEY, ORDER_COLUMNS, EffectiveRow, effective_key, stored_order
from reporting.testing import Admission, status_event
from shinchoku_runtime.db import make_engine

QUARTERS = (FiscalQuarter(2024, 3), FiscalQuarter(2024, 4))
#: A few instants, so that reports share them; each is reported in one of several offsets (the same instant).
INSTANTS = tuple(datetime(2025, 1, 20, 3, 0, tzinfo=UTC) + timedelta(microseconds=m) for m in (0, 1, 999_999))
OFFSETS = tuple(timezone(timedelta(hours=h)) for h in (9, 0, -5))
ADMITTED_FROM = datetime(2025, 2, 1, tzinfo=UTC)

#: (measure_id, agency, fiscal_year, quarter) → event id of its effective report.
Winners = dict[tuple[str, str, int, int], str]


@st.composite
def admissions(draw: st.DrawFn) -> list[Admitted]:
    """Reports on two measures by two agencies in two quarters, at shared instants, each event id once."""
    ids = draw(st.lists(st.uuids(version=4), min_size=1, max_size=24, unique=True))
    out = []
    for i, event_id in enumerate(ids):
        event = status_event(
            measure_id=draw(st.sampled_from(("1-1", "2-7"))),
            agency=draw(st.sampled_from(("digital", "mic"))),
            quarter=draw(st.sampled_from(QUARTERS)),
            status=draw(st.sampled_from(("on_track", "delayed", "completed"))),
            reported_at=draw(st.sampled_from(INSTANTS)).astimezone(draw(st.sampled_from(OFFSETS))),
            event_id=str(event_id),
        )
        out.append(decode_admitted(Admission(event, ADMITTED_FROM + timedelta(seconds=i)).body()))
    return draw(st.permutations(out))


def expected(reports: list[LeadReport]) -> Winners:
    return {key: report.event_id for key, report in effective_reports(reports).items()}


def by_report_key(reports: list[LeadReport]) -> Winners:
    return {(r.measure_id, r.agency, r.fiscal_year, r.quarter): r.event_id for r in reports}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    repository.create_store(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in repository.LIVE.tables:
            conn.execute(table.delete())


def test_the_order_is_named_once() -> None:
    report = LeadReport("1-1", "mic", 2024, 3, "on_track", INSTANTS[0], "00000000-0000-4000-8000-000000000001")
    assert effective_order(report) == tuple(getattr(report, name) for name in EFFECTIVE_ORDER)
    assert ORDER_COLUMNS == ("reported_at_us", "event_id")
    assert EFFECTIVE_KEY == ("fiscal_year", "quarter", "measure_id", "agency")


@given(batch=admissions())
@settings(max_examples=200, deadline=None)
def test_stored_rows_order_as_the_domain_orders_reports(batch: list[Admitted]) -> None:
    for a in batch:
        for b in batch:
            assert (stored_order(a.event_row) < stored_order(b.event_row)) == (
                effective_order(a.report) < effective_order(b.report)
            )
    best: dict[tuple[object, ...], EffectiveRow] = {}
    for admitted in batch:  # the merge of stored rows (what the rebuild's writers' shares are merged by)
        row = admitted.effective_row()
        seen = best.get(effective_key(row))
        if seen is None or stored_order(row) > stored_order(seen):
            best[effective_key(row)] = row
    assert {(r.measure_id, r.agency, r.fiscal_year, r.quarter): r.event_id for r in best.values()} == expected(
        [a.report for a in batch]
    )


@given(batch=admissions())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_upsert_keeps_what_the_domain_picks(engine: Engine, batch: list[Admitted]) -> None:
    _empty(engine)
    for admitted in batch:  # one row at a time: every comparison is the SQL's
        with engine.begin() as conn:
            repository.upsert_effective(conn, store=repository.LIVE, rows=[admitted.effective_row()])
    with engine.connect() as conn:
        assert by_report_key(repository.all_effective(conn)) == expected([a.report for a in batch])


@given(batch=admissions(), sizes=st.lists(st.integers(1, 6), min_size=1, max_size=24))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_batches_applied_in_any_order_keep_what_the_domain_picks(
    engine: Engine, batch: list[Admitted], sizes: list[int]
) -> None:
    _empty(engine)
    start = 0
    for size in sizes * len(batch):
        if start >= len(batch):
            break
        with engine.begin() as conn:
            apply_admitted(conn, store=repository.LIVE, batch=batch[start : start + size])
        start += size
    with engine.connect() as conn:
        assert by_report_key(repository.all_effective(conn)) == expected([a.report for a in batch])


@given(batch=admissions())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_effective_as_of_ranks_what_the_domain_picks(engine: Engine, batch: list[Admitted]) -> None:
    _empty(engine)
    with engine.begin() as conn:
        apply_admitted(conn, store=repository.LIVE, batch=batch)
    moments = sorted({a.admitted_at_us for a in batch})
    for moment in moments[:: max(1, len(moments) // 4)] + moments[-1:]:
        as_of = repository.from_micros(moment)
        known = [a.report for a in batch if a.admitted_at_us <= moment]
        with engine.connect() as conn:
            assert by_report_key(repository.effective_as_of(conn, as_of=as_of)) == expected(known)


def test_a_tie_on_the_instant_goes_to_the_greater_event_id(engine: Engine) -> None:
    low, high = str(uuid.UUID(int=1, version=4)), str(uuid.UUID(int=2**100, version=4))
    assert low < high
    reports = [
        status_event(measure_id="1-1", agency="mic", quarter=QUARTERS[0], status=status, reported_at=at, event_id=eid)
        for status, at, eid in (
            ("delayed", INSTANTS[0].astimezone(OFFSETS[0]), high),
            ("completed", INSTANTS[0].astimezone(OFFSETS[2]), low),
        )
    ]
    for order in (reports, reports[::-1]):
        _empty(engine)
        for i, event in enumerate(order):
            with engine.begin() as conn:
                admitted = decode_admitted(Admission(event, ADMITTED_FROM + timedelta(seconds=i)).body())
                apply_admitted(conn, store=repository.LIVE, batch=[admitted])
        with engine.connect() as conn:
            (winner,) = repository.all_effective(conn)
        assert (winner.event_id, winner.status) == (high, "delayed")
