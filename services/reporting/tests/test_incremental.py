"""The incremental tallies: a quarter updated by the measures a change touched, and the plan by the measures that
moved, equal their full computations (pure, on generated changes); on a real store, a reader holding the revision
before a transaction updates by what it touched and reads no quarter in full, and reads what a cold reader reads."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from contracts.periods import FiscalQuarter
from contracts.streams import closed_subject, reviewed_subject
from reporting import repository, views
from reporting.cycle.testing import admitted_close, admitted_review
from reporting.domain import LeadReport, effective_reports
from reporting.handlers import apply_admitted, apply_facts, decode_admitted, decode_tolerant
from reporting.queries import RollupQueries
from reporting.registry import CatalogView
from reporting.tallies import (
    changed_measures,
    plan_standing,
    plan_updated,
    quarter_data,
    quarter_data_updated,
)
from reporting.testing import random_admissions, synthetic_measures
from shinchoku_runtime.db import make_engine

QUARTERS = [FiscalQuarter(2024, 4), FiscalQuarter(2025, 1), FiscalQuarter(2025, 2)]
TODAY = date(2025, 11, 1)


def reports_of(measures: list[Any], count: int, seed: int) -> list[LeadReport]:
    return [decode_admitted(a.body()).report for a in random_admissions(measures, QUARTERS, count, seed=seed)]


def in_quarter(effective: dict[Any, LeadReport], quarter: FiscalQuarter) -> list[LeadReport]:
    return [r for r in effective.values() if r.fiscal_quarter == quarter]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 6))
def test_updating_by_the_touched_measures_equals_computing_in_full(seed: int, steps: int) -> None:
    rnd = random.Random(seed)
    measures = synthetic_measures(30, seed=seed % 7)
    by_id = {m.id: m for m in measures}
    effective = effective_reports(reports_of(measures, 120, seed))
    datas = {q: quarter_data(q, measures, in_quarter(effective, q)) for q in QUARTERS}
    plan = plan_standing(measures, datas.values(), TODAY)
    for step in range(steps):
        # A change: new reports (some win, some lose), a review state moved, a report gone (a rebuild's view).
        before = dict(effective)
        for report in reports_of(measures, rnd.randrange(1, 8), seed * 31 + step):
            if report.key not in effective or report.reported_at > effective[report.key].reported_at:
                effective[report.key] = report
        for key in rnd.sample(sorted(effective), k=min(2, len(effective))):
            effective[key] = effective[key]._replace(review=rnd.choice(["pending", "accepted", "returned"]))
        if rnd.random() < 0.3:
            del effective[rnd.choice(sorted(effective))]
        touched = {k for k in before.keys() | effective.keys() if before.get(k) != effective.get(k)}
        new_datas = {}
        for q in QUARTERS:
            measure_ids = {m for m, _, fy, n in touched if FiscalQuarter(fy, n) == q}
            now = in_quarter(effective, q)
            updated = quarter_data_updated(
                datas[q], by_id, measure_ids, [r for r in now if r.measure_id in measure_ids]
            )
            assert updated == quarter_data(q, measures, now)
            new_datas[q] = updated
        changed: set[str] = set()
        for q in QUARTERS:
            changed |= changed_measures(datas[q], new_datas[q])
        assert changed <= {m for m, *_ in touched}
        plan = plan_updated(plan, measures, changed, new_datas.values(), TODAY)
        assert plan == plan_standing(measures, new_datas.values(), TODAY)
        datas = new_datas


def test_a_measure_moved_is_taken_back_from_every_tally() -> None:
    measures = synthetic_measures(20, seed=3)
    q = QUARTERS[1]
    reports = in_quarter(effective_reports(reports_of(measures, 80, 5)), q)
    data = quarter_data(q, measures, reports)
    first = reports[0]
    moved = first._replace(status="delayed" if first.status != "delayed" else "on_track", review="returned")
    now = [moved if r is first else r for r in reports]
    mine = [r for r in now if r.measure_id == first.measure_id]  # the touched measure's reports, every lead's
    updated = quarter_data_updated(data, {m.id: m for m in measures}, {first.measure_id}, mine)
    full = quarter_data(q, measures, now)
    assert (updated.rollup.overall, updated.rollup.by_agency) != (data.rollup.overall, data.rollup.by_agency)
    assert updated == full
    # Untouched measures keep their standings (the plan's update compares them by identity first).
    assert changed_measures(data, updated) == {first.measure_id}


# --- On a store --------------------------------------------------------------------------------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    repository.create_store(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_reader_updates_by_what_each_transaction_touched(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    measures = synthetic_measures(40, seed=2)
    admissions = random_admissions(measures, QUARTERS, 400, seed=11)
    with engine.begin() as conn:
        apply_admitted(conn, store=repository.LIVE, batch=[decode_admitted(a.body()) for a in admissions[:300]])
    reader = RollupQueries(engine, CatalogView(measures))
    for q in QUARTERS:
        reader.rollup_json(q)

    full_reads: list[tuple[int, int]] = []
    counting = False
    real = repository.effective_for_quarter

    def counted(conn: Any, *, fiscal_year: int, quarter: int, **kw: Any) -> list[LeadReport]:
        if counting:
            full_reads.append((fiscal_year, quarter))
        reports: list[LeadReport] = real(conn, fiscal_year=fiscal_year, quarter=quarter, **kw)
        return reports

    monkeypatch.setattr(views.repository, "effective_for_quarter", counted)

    steps: list[FiscalQuarter] = []

    def apply_and_read(facts: list[Any], q: FiscalQuarter) -> None:
        nonlocal counting
        with engine.begin() as conn:
            apply_facts(conn, store=repository.LIVE, facts=facts)
        counting = True
        warm = reader.rollup_json(q)
        others = [reader.rollup_json(other) for other in QUARTERS if other != q]  # their documents kept or not
        items = [reader.measures(quarter) for quarter in QUARTERS] if len(steps) % 3 == 0 else None
        counting = False
        cold = RollupQueries(engine, CatalogView(measures))
        assert warm == cold.rollup_json(q)
        assert others == [cold.rollup_json(other) for other in QUARTERS if other != q]
        if items is not None:
            assert items == [cold.measures(quarter) for quarter in QUARTERS]
        steps.append(q)

    # One transaction each, each followed by a read: a report; every tenth time a review of it on its own; once
    # a close of a quarter, after which its reports restate it.
    for i, a in enumerate(admissions[300:340]):
        report = decode_admitted(a.body())
        q = report.report.fiscal_quarter
        apply_and_read([report], q)
        if i % 10 == 3:
            review = admitted_review(
                event_id=report.event_id,
                agency=report.report.agency,
                measure_id=report.report.measure_id,
                fiscal_year=q.fiscal_year,
                quarter=q.quarter,
                decision="returned",
                comment="根拠を添付してください",
                admitted_at=a.admitted_at,
            )
            subject = reviewed_subject(report.report.agency, report.report.measure_id)
            apply_and_read([decode_tolerant(subject, 0, review.model_dump_json().encode())[0]], q)
        if i == 20:
            close = admitted_close(fiscal_year=2024, quarter=4, admitted_at=a.admitted_at)
            apply_and_read([decode_tolerant(closed_subject(2024, 4), 0, close.model_dump_json().encode())[0]], q)
    assert full_reads == []


def test_a_rebuilt_store_is_read_in_full(tmp_path: Path) -> None:
    """A quarter whose revision row does not say what was touched (a rebuild's store) is computed in full."""
    engine = make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    repository.create_store(engine)
    measures = synthetic_measures(20, seed=4)
    admissions = random_admissions(measures, QUARTERS[:1], 100, seed=3)
    with engine.begin() as conn:
        apply_admitted(conn, store=repository.LIVE, batch=[decode_admitted(a.body()) for a in admissions[:50]])
    reader = RollupQueries(engine, CatalogView(measures))
    reader.rollup_json(QUARTERS[0])
    with engine.begin() as conn:
        apply_admitted(conn, store=repository.LIVE, batch=[decode_admitted(a.body()) for a in admissions[50:]])
        conn.execute(repository.LIVE.revisions.update().values(touched=None))
    assert reader.rollup_json(QUARTERS[0]) == RollupQueries(engine, CatalogView(measures)).rollup_json(QUARTERS[0])
    engine.dispose()
