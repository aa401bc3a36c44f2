"""All SQL of the catalog: the registry of measures, their targets and lead agencies, and its revision."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.orm import registry
from sqlmodel import JSON, Column, Field, Session, SQLModel, col, func, select

from catalog.domain import measure_hash, measure_search_key
from contracts.agencies import Agency
from contracts.catalog import Measure, Target
from shinchoku_runtime.db import serialize_schema_changes

#: Any constant key for PostgreSQL's advisory lock that serialises seeding between catalog processes.
_SEED_LOCK_KEY = 0x5EED_CA7A


class CatalogTable(SQLModel, registry=registry()):
    """Base of the catalog's tables: their own metadata, apart from other services' tables in one process."""


class MeasureRow(CatalogTable, table=True):
    __tablename__ = "measure"

    id: str = Field(primary_key=True, max_length=8)
    section: int = Field(index=True)
    number: int
    section_title: str
    title: str
    description: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: NFKC, casefolded, whitespace-free keys of title, bullets and targets, one per line (see domain).
    search_key: str = Field(sa_column=Column(sa.Text, nullable=False))
    content_hash: str = Field(max_length=64)


class TargetRow(CatalogTable, table=True):
    __tablename__ = "measure_target"

    measure_id: str = Field(foreign_key="measure.id", primary_key=True, max_length=8)
    position: int = Field(primary_key=True)
    text: str = Field(sa_column=Column(sa.Text, nullable=False))
    due_date: date | None = None
    due_approximate: bool = False
    value: float | None = None
    unit: str | None = None


class TargetReadingRow(CatalogTable, table=True):
    """What the plan states of a target beyond its final value and date (baseline, direction, milestones, …).

    A table of its own rather than new columns of `measure_target`: `create_schema` adds missing tables, not
    missing columns, and a catalog seeded before these fields existed reseeds every measure (its content
    hash changed), filling this table.
    """

    __tablename__ = "measure_target_reading"

    measure_id: str = Field(foreign_key="measure.id", primary_key=True, max_length=8)
    position: int = Field(primary_key=True)
    #: `Target`'s fields in `_READING_FIELDS`, as JSON.
    reading: dict[str, object] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


#: The target fields stored in `measure_target_reading` (the others are columns of `measure_target`).
_READING_FIELDS: set[str] = {"due_range", "due_note", "baseline", "direction", "value_is_change", "milestones"}


class LeadRow(CatalogTable, table=True):
    __tablename__ = "measure_lead"

    measure_id: str = Field(foreign_key="measure.id", primary_key=True, max_length=8)
    agency: str = Field(primary_key=True, max_length=16, index=True)
    position: int


class RegistryRow(CatalogTable, table=True):
    """The one row saying which registry is stored, and what has not yet been announced on NATS."""

    __tablename__ = "registry"

    id: int = Field(default=1, primary_key=True)
    revision: str = Field(max_length=64)
    measures_total: int
    seeded_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    #: The revision last published on `catalog.changed`; differs from `revision` until the catalog announces it.
    announced_revision: str | None = Field(default=None, max_length=64)
    #: Ids changed since the last announcement (a catalog seeded while NATS was away announces them later).
    pending_changed_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


def create_schema(engine: Engine) -> None:
    with engine.begin() as conn:
        serialize_schema_changes(conn, "catalog")
        CatalogTable.metadata.create_all(conn)


# --- writing -------------------------------------------------------------------------------------------------


def lock_registry(session: Session) -> None:
    """Hold the registry for this transaction, so that two catalog processes seeding at once take turns."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEED_LOCK_KEY})
    else:
        # A write, even of no row, makes SQLite take the database's write lock now rather than at commit.
        session.execute(sa.update(RegistryRow).where(col(RegistryRow.id) == 1).values(id=1))


def get_registry(session: Session) -> RegistryRow | None:
    return session.get(RegistryRow, 1)


def stored_hashes(session: Session) -> dict[str, str]:
    """`{measure id: content hash}` of the stored registry."""
    return dict(session.exec(select(MeasureRow.id, MeasureRow.content_hash)).all())


def delete_measures(session: Session, *, measure_ids: Sequence[str]) -> None:
    if not measure_ids:
        return
    ids = list(measure_ids)
    session.execute(sa.delete(TargetReadingRow).where(col(TargetReadingRow.measure_id).in_(ids)))
    session.execute(sa.delete(TargetRow).where(col(TargetRow.measure_id).in_(ids)))
    session.execute(sa.delete(LeadRow).where(col(LeadRow.measure_id).in_(ids)))
    session.execute(sa.delete(MeasureRow).where(col(MeasureRow.id).in_(ids)))


def insert_measures(session: Session, *, measures: Sequence[Measure]) -> None:
    """Bulk-insert measures with their targets and leads (SQLAlchemy Core: one statement per table)."""
    if not measures:
        return
    session.execute(
        sa.insert(MeasureRow),
        [
            {
                "id": m.id,
                "section": m.section,
                "number": int(m.id.partition("-")[2]),
                "section_title": m.section_title,
                "title": m.title,
                "description": list(m.description),
                "search_key": measure_search_key(m),
                "content_hash": measure_hash(m),
            }
            for m in measures
        ],
    )
    leads = [
        {"measure_id": m.id, "agency": agency.value, "position": i}
        for m in measures
        for i, agency in enumerate(m.lead_agencies)
    ]
    session.execute(sa.insert(LeadRow), leads)
    targets = [
        {
            "measure_id": m.id,
            "position": t.index,
            "text": t.text,
            "due_date": t.due_date,
            "due_approximate": t.due_approximate,
            "value": t.value,
            "unit": t.unit,
        }
        for m in measures
        for t in m.targets
    ]
    if targets:
        session.execute(sa.insert(TargetRow), targets)
        readings = [
            {"measure_id": m.id, "position": t.index, "reading": t.model_dump(mode="json", include=_READING_FIELDS)}
            for m in measures
            for t in m.targets
        ]
        session.execute(sa.insert(TargetReadingRow), readings)


def save_registry(
    session: Session, *, revision: str, measures_total: int, pending_changed_ids: list[str], seeded_at: datetime
) -> None:
    row = get_registry(session)
    if row is None:
        row = RegistryRow(revision=revision, measures_total=measures_total, seeded_at=seeded_at)
    row.revision = revision
    row.measures_total = measures_total
    row.seeded_at = seeded_at
    row.pending_changed_ids = pending_changed_ids
    session.add(row)


def mark_announced(session: Session, *, revision: str) -> bool:
    """Record that `revision` was published; False (and nothing changes) when the registry moved on meanwhile."""
    result = session.execute(
        sa.update(RegistryRow)
        .where(col(RegistryRow.id) == 1, col(RegistryRow.revision) == revision)
        .values(announced_revision=revision, pending_changed_ids=[])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- reading -------------------------------------------------------------------------------------------------


def ping(session: Session) -> None:
    session.execute(sa.text("SELECT 1"))


def get_measure(session: Session, *, measure_id: str) -> Measure | None:
    row = session.get(MeasureRow, measure_id)
    if row is None:
        return None
    return _assemble(session, [row])[0]


def list_measures(
    session: Session,
    *,
    agency: Agency | None = None,
    section: int | None = None,
    terms: Sequence[str] = (),
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[Measure], int]:
    """Measures matching every filter, in document order, one page of them, and how many match in all.

    `terms` are compact search keys (see domain.query_terms); each must occur in the measure's search key.
    """
    conditions: list[sa.ColumnElement[bool]] = []
    if section is not None:
        conditions.append(col(MeasureRow.section) == section)
    if agency is not None:
        conditions.append(col(MeasureRow.id).in_(select(LeadRow.measure_id).where(LeadRow.agency == agency.value)))
    for term in terms:
        conditions.append(col(MeasureRow.search_key).contains(term, autoescape=True))
    total = session.exec(select(func.count()).select_from(MeasureRow).where(*conditions)).one()
    query = (
        select(MeasureRow)
        .where(*conditions)
        .order_by(col(MeasureRow.section), col(MeasureRow.number))
        .offset(offset)
        .limit(limit)
    )
    rows = list(session.exec(query).all())
    return _assemble(session, rows), int(total)


def all_measures(session: Session) -> list[Measure]:
    return list_measures(session)[0]


def agency_totals(session: Session) -> dict[str, int]:
    """How many measures each agency leads (agencies leading none are absent)."""
    query = select(LeadRow.agency, func.count()).group_by(col(LeadRow.agency))
    return {agency: int(n) for agency, n in session.exec(query).all()}


def section_totals(session: Session) -> dict[int, int]:
    query = select(MeasureRow.section, func.count()).group_by(col(MeasureRow.section))
    return {section: int(n) for section, n in session.exec(query).all()}


def _assemble(session: Session, rows: Sequence[MeasureRow]) -> list[Measure]:
    if not rows:
        return []
    ids = [r.id for r in rows]
    leads: dict[str, list[Agency]] = {i: [] for i in ids}
    lead_query = select(LeadRow).where(col(LeadRow.measure_id).in_(ids)).order_by(col(LeadRow.position))
    for lead in session.exec(lead_query).all():
        leads[lead.measure_id].append(Agency(lead.agency))
    targets: dict[str, list[Target]] = {i: [] for i in ids}
    reading_query = select(TargetReadingRow).where(col(TargetReadingRow.measure_id).in_(ids))
    readings = {(r.measure_id, r.position): r.reading for r in session.exec(reading_query).all()}
    target_query = select(TargetRow).where(col(TargetRow.measure_id).in_(ids)).order_by(col(TargetRow.position))
    for t in session.exec(target_query).all():
        targets[t.measure_id].append(
            Target.model_validate(
                {
                    **readings.get((t.measure_id, t.position), {}),
                    "index": t.position,
                    "text": t.text,
                    "due_date": t.due_date,
                    "due_approximate": t.due_approximate,
                    "value": t.value,
                    "unit": t.unit,
                }
            )
        )
    return [
        Measure(
            id=r.id,
            section=r.section,
            section_title=r.section_title,
            title=r.title,
            description=list(r.description),
            lead_agencies=leads[r.id],
            targets=targets[r.id],
        )
        for r in rows
    ]
