"""Alerts evaluated by the measures a change touched: after each change, evaluating the touched measures leaves
nothing for a full evaluation to change (on SQLite and PostgreSQL, with reviews, corrections and a report that moves
the earliest reported quarter); the service evaluates every measure when the Tokyo date changes and only the touched
ones otherwise, reading no other measure's reports."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from contracts.periods import FiscalQuarter
from contracts.streams import reviewed_subject
from reporting import repository
from reporting.alerts import evaluate as evaluate_module
from reporting.alerts import store
from reporting.alerts.evaluate import evaluate
from reporting.alerts.service import ALERT_DUTY, AlertSettings, AlertsService, clock_day, pause_after
from reporting.cycle.testing import admitted_review
from reporting.handlers import apply_admitted, apply_facts, decode_admitted, decode_tolerant
from reporting.registry import CatalogView
from reporting.testing import Admission, random_admissions, status_event, synthetic_measures
from shinchoku_runtime.db import make_engine

QUARTERS = [FiscalQuarter(2024, 3), FiscalQuarter(2024, 4), FiscalQuarter(2025, 1)]
#: Q2 FY2025's reporting window is open (report_due), FY2025 Q1 and before are past their deadlines.
NOW = FiscalQuarter(2025, 2).on_time_deadline - timedelta(days=3)
MEASURES = synthetic_measures(60, seed=5)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    repository.create_store(engine)
    store.create_tables(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def alert_table(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(*store.alerts.c)))


def test_evaluating_the_touched_measures_leaves_nothing_for_a_full_evaluation(engine: Engine) -> None:
    # The first reports are on the later quarters; a later one moves the earliest reported quarter back.
    later = random_admissions(MEASURES, QUARTERS[1:], 150, seed=3)
    earlier = random_admissions(MEASURES, QUARTERS[:1], 30, seed=4)
    with engine.begin() as conn:
        apply_admitted(conn, store=repository.LIVE, batch=[decode_admitted(a.body()) for a in later[:100]])
    first = evaluate(engine, measures=MEASURES, now=NOW, since=None, due_days=14)
    assert first.changes
    assert first.start is not None
    assert first.start.first_quarter() == QUARTERS[1]
    start = first.start

    # A measure nobody reported on yet gets its first report, on the latest quarter: its earlier quarters stay
    # missing (the evaluation looks from the earliest quarter anyone reported on, not from the measure's own).
    reported = {decode_admitted(a.body()).report.measure_id for a in later}
    fresh = next(m for m in MEASURES if m.id not in reported)
    first_report = Admission(
        status_event(
            measure_id=fresh.id,
            agency=str(fresh.lead_agencies[0]),
            quarter=QUARTERS[2],
            status="on_track",
            reported_at=NOW,
        ),
        admitted_at=NOW,
    )
    steps = [[first_report]] + [later[100:][i : i + 5] for i in range(0, 50, 5)] + [earlier[:5], earlier[5:]]
    widened = partial = 0
    for n, step in enumerate(steps):
        facts: list[Any] = [decode_admitted(a.body()) for a in step]
        if n % 3 == 1:  # the secretariat returns one of them, and accepts another
            for admitted, decision in zip(facts[:2], ("returned", "accepted"), strict=False):
                review = admitted_review(
                    event_id=admitted.event_id,
                    agency=admitted.report.agency,
                    measure_id=admitted.report.measure_id,
                    fiscal_year=admitted.report.fiscal_year,
                    quarter=admitted.report.quarter,
                    decision=decision,
                    comment="根拠を添付してください" if decision == "returned" else None,
                    admitted_at=step[0].admitted_at,
                )
                subject = reviewed_subject(admitted.report.agency, admitted.report.measure_id)
                facts.append(decode_tolerant(subject, 0, review.model_dump_json().encode())[0])
        with engine.begin() as conn:
            apply_facts(conn, store=repository.LIVE, facts=facts)
        touched = {a.report.measure_id for a in facts if hasattr(a, "report")}
        result = evaluate(engine, measures=MEASURES, now=NOW, since=None, due_days=14, only=touched, start=start)
        if result.widened:
            widened += 1
            assert not result.changes
            result = evaluate(engine, measures=MEASURES, now=NOW, since=None, due_days=14)
            assert result.start is not None
            assert result.start.first_quarter() == QUARTERS[0]
            start = result.start
        else:
            partial += 1
        before = alert_table(engine)
        full = evaluate(engine, measures=MEASURES, now=NOW, since=None, due_days=14)
        assert full.changes == [], f"step {n}: a full evaluation still changed {full.changes[:3]}"
        assert alert_table(engine) == before
    assert widened == 1
    assert partial == len(steps) - 1


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def test_the_clock_day_changes_at_a_tokyo_midnight_that_a_deadline_is_passed_strictly_after() -> None:
    deadline = FiscalQuarter(2025, 1).on_time_deadline
    assert clock_day(deadline) == clock_day(deadline - timedelta(hours=1))
    assert clock_day(deadline + timedelta(microseconds=1)) == clock_day(deadline) + timedelta(days=1)


def test_alerts_take_at_most_their_share_of_the_time() -> None:
    assert pause_after(0.01, 1.0) == 1.0
    for seconds in (0.5, 2.0, 8.0):
        assert seconds / (seconds + pause_after(seconds, 1.0)) <= ALERT_DUTY + 1e-9


async def test_the_service_evaluates_the_touched_measures_and_everything_when_the_day_changes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    quarter = FiscalQuarter(2025, 1)
    with engine.begin() as conn:
        apply_admitted(
            conn,
            store=repository.LIVE,
            batch=[decode_admitted(a.body()) for a in random_admissions(MEASURES, [quarter], 40, seed=9)],
        )
    clock = Clock(quarter.on_time_deadline - timedelta(days=2))
    service = AlertsService(engine, CatalogView(MEASURES), AlertSettings(since=quarter), clock=clock)

    read: list[int] = []
    real_all, real_some = repository.all_effective, repository.effective_of_measures

    def all_effective(conn: Any, **kw: Any) -> Any:
        out = real_all(conn, **kw)
        read.append(len(out))
        return out

    def effective_of_measures(conn: Any, **kw: Any) -> Any:
        out = real_some(conn, **kw)
        read.append(len(out))
        return out

    monkeypatch.setattr(evaluate_module.repository, "all_effective", all_effective)
    monkeypatch.setattr(evaluate_module.repository, "effective_of_measures", effective_of_measures)

    await service.evaluate_pending()  # the first: every measure
    assert (service.full_evaluations, service.partial_evaluations) == (1, 0)
    due = {r.alert_id for r in store_rows(engine) if r.kind == "report_due" and r.state == "raised"}
    assert due

    # A report on one measure: that measure alone is read and evaluated; its due alert resolves.
    unreported = next(r for r in store_rows(engine) if r.alert_id in due)
    assert unreported.measure_id is not None
    fix = Admission(
        status_event(
            measure_id=unreported.measure_id,
            agency=unreported.agency,
            quarter=quarter,
            status="on_track",
            reported_at=clock.moment,
        ),
        admitted_at=clock.moment,
    )
    with engine.begin() as conn:
        apply_admitted(conn, store=repository.LIVE, batch=[decode_admitted(fix.body())])
    read.clear()
    service.touched([unreported.measure_id])
    assert await service.evaluate_pending() >= 1
    assert (service.full_evaluations, service.partial_evaluations) == (1, 1)
    measure_reports = sum(1 for r in all_reports(engine) if r.measure_id == unreported.measure_id)
    assert read == [measure_reports]
    assert state_of(engine, unreported.alert_id) == "resolved"

    # Nothing touched, the same day: nothing is evaluated.
    read.clear()
    assert await service.evaluate_pending() == 0
    assert read == []

    # The deadline passes with nothing reported: the day changed, every measure is evaluated, due becomes missing.
    clock.moment = quarter.on_time_deadline + timedelta(seconds=1)
    changed = await service.evaluate_pending()
    assert service.full_evaluations == 2
    assert changed > 0
    assert read == [len(all_reports(engine))]
    missing = {r.alert_id for r in store_rows(engine) if r.kind == "report_missing" and r.state == "raised"}
    assert len(missing) == len(due) - 1

    # notify() (a rebuild swapped the store) evaluates every measure again.
    service.notify()
    await service.evaluate_pending()
    assert service.full_evaluations == 3


def store_rows(engine: Engine) -> list[store.AlertRow]:
    with engine.connect() as conn:
        return list(store.all_alerts(conn).values())


def state_of(engine: Engine, alert_id: str) -> str:
    with engine.connect() as conn:
        state: str = store.all_alerts(conn)[alert_id].state
        return state


#: The store's own read, kept before a test counts the evaluations' reads by patching it.
_ALL_EFFECTIVE = repository.all_effective


def all_reports(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        reports: list[Any] = _ALL_EFFECTIVE(conn)
        return reports
