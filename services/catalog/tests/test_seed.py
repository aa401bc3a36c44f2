"""Seeding the registry into SQLite and PostgreSQL: complete, faithful, idempotent, and precise about changes."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from catalog import handlers, repository
from catalog.domain import measure_document
from contracts.agencies import Agency
from contracts.catalog import Measure, Target
from shinchoku_runtime.db import make_engine


def _engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    repository.create_schema(engine)
    return engine


def _row_counts(engine: Engine) -> tuple[int, int, int]:
    with Session(engine) as session:
        return (
            session.exec(select(func.count()).select_from(repository.MeasureRow)).one(),
            session.exec(select(func.count()).select_from(repository.TargetRow)).one(),
            session.exec(select(func.count()).select_from(repository.LeadRow)).one(),
        )


def test_first_seed_stores_the_whole_plan_faithfully(database_url: str, plan: list[Measure]) -> None:
    engine = _engine(database_url)
    try:
        result = handlers.seed_registry(engine, plan)
        assert result.first_seed
        assert result.changed
        assert result.measures_total == 320
        assert len(result.changes.added) == 320
        assert not result.changes.updated
        assert not result.changes.removed
        with Session(engine) as session:
            assert repository.section_totals(session) == {1: 156, 2: 72, 3: 33, 4: 27, 5: 15, 6: 17}
            stored = repository.all_measures(session)
            registry = repository.get_registry(session)
        # What comes out of the database is byte for byte what was parsed, in document order.
        assert [measure_document(m) for m in stored] == [measure_document(m) for m in plan]
        assert registry is not None
        assert registry.revision == result.revision
        assert registry.announced_revision is None
        assert len(registry.pending_changed_ids) == 320
        assert _row_counts(engine) == (
            320,
            sum(len(m.targets) for m in plan),
            sum(len(m.lead_agencies) for m in plan),
        )
    finally:
        engine.dispose()


def test_reseeding_changes_nothing_and_a_changed_plan_changes_only_what_differs(
    database_url: str, plan: list[Measure]
) -> None:
    engine = _engine(database_url)
    try:
        first = handlers.seed_registry(engine, plan, now=datetime(2025, 1, 1, tzinfo=UTC))
        counts = _row_counts(engine)

        again = handlers.seed_registry(engine, plan)
        assert not again.changed
        assert again.revision == first.revision
        assert _row_counts(engine) == counts
        with Session(engine) as session:
            registry = repository.get_registry(session)
            assert registry is not None
            assert registry.seeded_at.replace(tzinfo=UTC) == datetime(2025, 1, 1, tzinfo=UTC)
            assert repository.mark_announced(session, revision=first.revision)
            session.commit()

        by_id = {m.id: m for m in plan}
        retitled = by_id["1-25"].model_copy(update={"title": "確定申告の利便性向上"})
        new = Measure(
            id="6-18",
            section=6,
            section_title=by_id["6-17"].section_title,
            title="新しい施策",
            lead_agencies=[Agency.digital],
        )
        changed_plan = [retitled if m.id == "1-25" else m for m in plan if m.id != "2-3"] + [new]
        result = handlers.seed_registry(engine, changed_plan)
        assert result.changed
        assert not result.first_seed
        assert result.changes.added == ("6-18",)
        assert result.changes.updated == ("1-25",)
        assert result.changes.removed == ("2-3",)
        assert result.changes.changed_ids == ["1-25", "2-3", "6-18"]
        with Session(engine) as session:
            measure = repository.get_measure(session, measure_id="1-25")
            assert measure is not None
            assert measure.title == "確定申告の利便性向上"
            assert measure.targets == by_id["1-25"].targets
            assert repository.get_measure(session, measure_id="2-3") is None
            assert repository.section_totals(session)[6] == 18
            registry = repository.get_registry(session)
            assert registry is not None
            assert registry.pending_changed_ids == ["1-25", "2-3", "6-18"]

        # Changes seeded before an announcement accumulate until one is made.
        retitled_again = by_id["1-1"].model_copy(update={"title": "マイナンバー制度の推進（改）"})
        again_changed = [retitled_again if m.id == "1-1" else m for m in changed_plan]
        latest = handlers.seed_registry(engine, again_changed)
        assert latest.changes.changed_ids == ["1-1"]
        announcement = handlers.pending_announcement(engine)
        assert announcement is not None
        assert announcement.revision == latest.revision
        assert announcement.changed_ids == ["1-1", "1-25", "2-3", "6-18"]
        assert announcement.measures_total == 320
        assert not handlers.record_announcement(engine, revision=first.revision)
        assert handlers.record_announcement(engine, revision=announcement.revision)
        assert handlers.pending_announcement(engine) is None

        # Back to a registry subscribers already heard of: re-seeded, nothing left to announce.
        handlers.seed_registry(engine, changed_plan)
        handlers.seed_registry(engine, again_changed)
        assert handlers.pending_announcement(engine) is None
    finally:
        engine.dispose()


def test_agency_totals_count_every_lead(database_url: str, plan: list[Measure]) -> None:
    engine = _engine(database_url)
    try:
        handlers.seed_registry(engine, plan)
        expected = Counter(a.value for m in plan for a in m.lead_agencies)
        with Session(engine) as session:
            assert repository.agency_totals(session) == dict(expected)
    finally:
        engine.dispose()


def test_two_catalogs_seeding_at_once_take_turns(database_url: str, plan: list[Measure]) -> None:
    engines = [_engine(database_url), make_engine(database_url)]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda engine: handlers.seed_registry(engine, plan), engines))
        assert sorted(r.first_seed for r in results) == [False, True]
        assert {r.revision for r in results} == {results[0].revision}
        assert _row_counts(engines[0])[0] == 320
    finally:
        for engine in engines:
            engine.dispose()


def test_a_catalog_stored_before_target_readings_serves_them_after_reseeding(
    database_url: str, plan: list[Measure]
) -> None:
    """A store from before issue 18 (no `measure_target_reading`, targets without their readings) catches up."""
    old_fields = {"index", "text", "due_date", "due_approximate", "value", "unit"}
    old_plan = [
        m.model_copy(update={"targets": [Target(**t.model_dump(include=old_fields)) for t in m.targets]}) for m in plan
    ]
    engine = _engine(database_url)
    try:
        handlers.seed_registry(engine, old_plan)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE measure_target_reading"))
        repository.create_schema(engine)

        result = handlers.seed_registry(engine, plan)

        assert {"1-1", "1-65", "2-40", "3-14"} <= set(result.changes.updated)
        with Session(engine) as session:
            stored = repository.all_measures(session)
        assert [measure_document(m) for m in stored] == [measure_document(m) for m in plan]
    finally:
        engine.dispose()
