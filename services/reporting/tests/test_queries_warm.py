"""Rollups read lately are recomputed when the store changes; a document is computed once however many ask."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from contracts.periods import FiscalQuarter
from reporting import queries, repository
from reporting.handlers import apply_admitted, decode_admitted
from reporting.queries import RollupQueries
from reporting.registry import CatalogView
from reporting.testing import random_admissions, synthetic_measures
from shinchoku_runtime.db import make_engine

Q = FiscalQuarter(2025, 1)


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'reporting.sqlite'}")
    repository.create_store(engine)
    measures = synthetic_measures(60)
    admissions = random_admissions(measures, [Q.previous(), Q], 600, seed=4)

    def admit(batch: list[Any]) -> None:
        with engine.begin() as conn:
            apply_admitted(conn, store=repository.LIVE, batch=[decode_admitted(a.body()) for a in batch])

    admit(admissions[:300])
    yield engine, RollupQueries(engine, CatalogView(measures)), admit, admissions[300:]
    engine.dispose()


def test_a_rollup_read_lately_is_recomputed_after_a_change(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, rollups, admit, later = setup
    assert rollups.warm() == 0  # nothing read yet: nothing to keep warm
    before = rollups.rollup_json(Q)
    assert rollups.warm() == 0  # read, but nothing changed

    admit(later)
    assert rollups.warm() == 1  # the changed quarter's document, computed here …
    built: list[Any] = []
    real = queries.rollup_document

    def counted(view: Any) -> Any:
        built.append(view)
        return real(view)

    monkeypatch.setattr(queries, "rollup_document", counted)
    after = rollups.rollup_json(Q)  # … so the reader finds it ready
    assert built == []
    assert after != before
    # … and it is what a cold computation says.
    assert after == RollupQueries(engine, CatalogView(rollups.catalog().measures)).rollup_json(Q)

    monkeypatch.setattr(queries, "WARM_WINDOW", 0.0)
    admit(later[:1])  # whatever changes now, nothing was read within the window: nothing is kept warm
    assert rollups.warm() == 0


def test_readers_asking_together_wait_for_one_computation(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, rollups, _, _ = setup
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []
    real = queries.rollup_document

    def slow(view: Any) -> Any:
        calls.append(1)
        started.set()
        release.wait(10)
        return real(view)

    monkeypatch.setattr(queries, "rollup_document", slow)
    results: list[bytes] = []
    first = threading.Thread(target=lambda: results.append(rollups.rollup_json(Q)))
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=lambda: results.append(rollups.rollup_json(Q))) for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert len(results) == 4
    assert len(set(results)) == 1
    assert len(calls) == 1
