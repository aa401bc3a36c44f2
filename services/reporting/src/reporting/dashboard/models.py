"""What the dashboard reads from the rollup API: the binding JSON shapes, tolerant of additive fields."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_LENIENT = ConfigDict(extra="ignore", frozen=True)


class Group(BaseModel):
    """A rollup over some set of measures: `{measures_total, reported, coverage, on_time, by_status}`."""

    model_config = _LENIENT

    measures_total: int = 0
    reported: int = 0
    coverage: float = 0.0
    on_time: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    overdue_targets: int | None = None


class Rollup(Group):
    """`GET /rollups/{fy}/{q}`."""

    fiscal_year: int
    quarter: int
    label: str = ""
    period_start: date | None = None
    period_end: date | None = None
    by_agency: dict[str, Group] = Field(default_factory=dict)
    by_section: dict[str, Group] = Field(default_factory=dict)
    # The reporting cycle: whether the quarter is closed, its latest published revision, review counts.
    closed: bool = False
    revision: int | None = None
    published_at: datetime | None = None
    restated_at: datetime | None = None
    review: dict[str, int] = Field(default_factory=dict)


class RevisionChange(BaseModel):
    model_config = _LENIENT

    measure_id: str
    agency: str
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    event_ids: list[str] = Field(default_factory=list)


class Revision(BaseModel):
    """One item of `GET /rollups/{fy}/{q}/revisions`: a published revision of a closed quarter."""

    model_config = _LENIENT

    revision: int
    published_at: datetime | None = None
    restated_at: datetime | None = None
    sha256: str = ""
    changes: list[RevisionChange] = Field(default_factory=list)


class KpiObservation(BaseModel):
    model_config = _LENIENT

    target: int
    value: float
    as_of: date | None = None


class LeadReport(BaseModel):
    """One lead agency's effective report on a measure in a quarter (nulls when it has not reported)."""

    model_config = _LENIENT

    agency: str
    status: str | None = None
    event_id: str | None = None
    reported_at: datetime | None = None
    received_at: datetime | None = None
    on_time: bool | None = None
    progress: float | None = None
    note: str | None = None
    reporter: str | None = None
    kpis: list[KpiObservation] = Field(default_factory=list)
    review: str | None = None
    review_comment: str | None = None
    answers: str | None = None
    backfilled: bool | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _silence_is_no_report(cls, value: object) -> object:
        # The API names a lead's silence `unreported`; here a lead without a report has no status.
        return None if value == "unreported" else value


class BaselineRow(BaseModel):
    """Where the plan says a target starts from (3-14: 35.4 % in FY2021)."""

    model_config = _LENIENT

    value: float
    as_of: date | None = None
    unit: str | None = None


class MilestoneRow(BaseModel):
    """A milestone of a target, rated on its own."""

    model_config = _LENIENT

    due_date: date | None = None
    value: float | None = None
    text: str | None = None
    rating: str | None = None
    progress: float | None = None
    elapsed_share: float | None = None
    overdue: bool | None = None


class TargetRow(BaseModel):
    """A measure's target as the catalog states it, with what reporting knows of it."""

    model_config = _LENIENT

    index: int
    text: str = ""
    due_date: date | None = None
    due_approximate: bool = False
    value: float | None = None
    unit: str | None = None
    overdue: bool | None = None
    rating: str | None = None
    rating_reason: str | None = None
    progress: float | None = None
    elapsed_share: float | None = None
    observed: float | None = None
    observed_as_of: date | None = None
    baseline: BaselineRow | None = None
    direction: str | None = None
    rating_start: date | None = None
    milestone_ratings: list[MilestoneRow] = Field(default_factory=list)


class MeasureRow(BaseModel):
    """One item of `GET /rollups/{fy}/{q}/measures`."""

    model_config = _LENIENT

    measure_id: str
    section: int
    status: str
    title: str = ""
    leads: list[LeadReport] = Field(default_factory=list)
    targets: list[TargetRow] = Field(default_factory=list)
    overdue_targets: int | None = None
    movement: str | None = None


class HistoryEntry(BaseModel):
    """One quarter of `GET /measures/{id}/history`."""

    model_config = _LENIENT

    fiscal_year: int
    quarter: int
    label: str = ""
    status: str = "unreported"
    leads: list[LeadReport] = Field(default_factory=list)


class MeasureInfo(BaseModel):
    """The catalog's view of a measure, as far as the reporting service mirrors it."""

    model_config = _LENIENT

    id: str
    section: int
    section_title: str = ""
    title: str = ""
    description: list[str] = Field(default_factory=list)
    lead_agencies: list[str] = Field(default_factory=list)
    targets: list[TargetRow] = Field(default_factory=list)


class MeasureHistory(BaseModel):
    model_config = _LENIENT

    measure: MeasureInfo | None = None
    quarters: list[HistoryEntry] = Field(default_factory=list)


def items_of(body: Any) -> list[Any]:
    """The list in an `{items, total}` answer (or a bare list)."""
    if isinstance(body, dict):
        items = body.get("items", [])
        return list(items) if isinstance(items, list) else []
    return list(body) if isinstance(body, list) else []
