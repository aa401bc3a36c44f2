"""Replicas evaluating alerts at once, on SQLite and on PostgreSQL: each condition is raised once and resolved once
(one alert row per condition, one outbox entry per change), whoever wins each race."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import sqlalchemy as sa

from contracts.catalog import SECTION_TITLES, Measure
from contracts.periods import FiscalQuarter
from reporting import repository
from reporting.alerts import store
from reporting.alerts.evaluate import evaluate
from shinchoku_runtime.db import make_engine

Q3 = FiscalQuarter(2024, 3)
MEASURES = [
    Measure(
        id=f"1-{n}", section=1, section_title=SECTION_TITLES[1], title=f"施策 {n}", lead_agencies=["mof", "digital"]
    )
    for n in range(1, 21)
]


def evaluate_together(engine: sa.Engine, now_offset: timedelta, replicas: int = 4) -> None:
    barrier = threading.Barrier(replicas)
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            barrier.wait()
            for _ in range(3):  # a conflict makes a replica evaluate again, as the service does
                result = evaluate(
                    engine, measures=MEASURES, now=Q3.on_time_deadline + now_offset, since=Q3, due_days=14
                )
                if not result.conflict:
                    break
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=replica) for _ in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def changes(engine: sa.Engine) -> Counter[tuple[str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(store.outbox.c.alert_id, store.outbox.c.state, store.outbox.c.occurrence))
        return Counter((alert_id, state, occurrence) for alert_id, state, occurrence in rows)


def test_replicas_raise_and_resolve_each_condition_once(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        repository.create_store(engine)
        store.create_tables(engine)
        evaluate_together(engine, -timedelta(days=1))  # a day before the deadline: 40 reports due
        due = changes(engine)
        assert len(due) == 40
        assert set(due.values()) == {1}
        evaluate_together(engine, timedelta(seconds=1))  # past it: due resolved, missing raised
        after = changes(engine)
        assert len(after) == 40 * 3
        assert set(after.values()) == {1}
        assert Counter(state for (_, state, _) in after) == {"raised": 80, "resolved": 40}
        with engine.connect() as conn:
            assert {row.state for row in store.all_alerts(conn).values() if row.kind == "report_missing"} == {"raised"}
    finally:
        engine.dispose()
