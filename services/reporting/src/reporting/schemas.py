"""Response shapes of the reporting API, for the OpenAPI document at /docs (binding fields first, then additive).

The documents the routes answer are built as these models (`reporting.documents`): a document carries every
field its model declares and nothing else (`extra="forbid"`), and tests/test_documents.py checks every route's
JSON against its model over real data.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from contracts.catalog import Target

StatusName = Literal["delayed", "at_risk", "suspended", "not_started", "on_track", "completed", "unreported"]
#: The keys of every `by_status`, most severe first, then `unreported` (as `domain.ROLLUP_STATUSES`).
STATUS_NAMES: Final[tuple[StatusName, ...]] = get_args(StatusName)


class Document(BaseModel):
    """A response model: a document built as one has no field it does not declare."""

    model_config = ConfigDict(extra="forbid")


class TallyOut(Document):
    measures_total: int = Field(description="Measures expected to report in the scope", examples=[320])
    reported: int = Field(description="Measures with at least one effective report", examples=[250])
    coverage: float = Field(description="reported / measures_total (0 when nothing is expected)", examples=[0.78])
    on_time: int = Field(description="Reported measures whose effective reports were all on time", examples=[230])
    on_time_rate: float = Field(description="on_time / measures_total (additive)", examples=[0.72])
    by_status: dict[StatusName, int] = Field(description="All seven keys, each a count of measures")


class ScopeTallyOut(TallyOut):
    overdue_targets: int = Field(description="Overdue targets of the measures in the scope")


class SectionTallyOut(ScopeTallyOut):
    title: str = Field(description="The section's title in the plan")


class QuarterRefOut(TallyOut):
    fiscal_year: int
    quarter: int
    label: str = Field(examples=["FY2024Q3"])
    period_start: date
    period_end: date


class TargetSummaryOut(Document):
    total: int
    overdue: int = Field(
        description="Targets whose due date has passed while the measure's latest status is not completed"
    )
    measures_with_overdue: int
    ratings: dict[Literal["A", "B", "N"], int]
    reference_date: date = Field(description="The day `overdue` is judged on (today, or the as_of date), Asia/Tokyo")


class ReviewCountsOut(Document):
    pending: int
    accepted: int
    returned: int


class RevisionOut(Document):
    revision: int
    published_at: str = Field(description="When the quarter was closed and first published")
    restated_at: str | None = Field(description="When this revision restated the one before (null for revision 1)")
    sha256: str = Field(description="SHA-256 of the revision's document (canonical JSON), hexadecimal")
    changes: list[dict[str, Any]] = Field(description="What changed since the revision before (RollupChange objects)")
    by_status: dict[StatusName, int] = Field(description="Government-wide counts of this revision")


class RevisionsOut(Document):
    fiscal_year: int
    quarter: int
    items: list[RevisionOut]
    total: int


class RollupOut(QuarterRefOut):
    """A quarter's rollup."""

    on_time_deadline: str = Field(description="Reports at or before this instant are on time (quarter end + 30 days)")
    by_agency: dict[str, ScopeTallyOut] = Field(
        description="Keyed by agency code: the measures it leads, by its own report"
    )
    by_section: dict[str, SectionTallyOut] = Field(description='Keyed "1"–"6": each measure once, combined status')
    previous: QuarterRefOut = Field(description="The previous quarter's government-wide counts (trend)")
    moved_worse: list[str] = Field(description="Measures whose combined status became more severe than last quarter")
    moved_better: list[str] = Field(description="Measures whose combined status became less severe than last quarter")
    overdue_targets: int
    targets: TargetSummaryOut
    as_of: str | None = Field(description="The as_of moment answered for, or null for as known now")
    review: ReviewCountsOut = Field(description="The leads' effective reports by review state")
    closed: bool = Field(description="Whether the secretariat has closed the quarter")
    revision: int | None = Field(description="The latest published revision (null while the quarter is open)")
    published_at: str | None = Field(description="When the quarter was closed and first published (RFC 3339)")
    restated_at: str | None = Field(description="When the latest revision restated the one before (RFC 3339)")


class YearQuarterOut(RollupOut):
    """A quarter's rollup within its fiscal year."""

    has_started: bool = Field(description="Whether the quarter had begun by the as_of moment (or now)")


class YearOut(Document):
    fiscal_year: int
    period_start: date
    period_end: date
    as_of: str | None
    quarters: list[YearQuarterOut]


class KpiOut(Document):
    target: int
    value: float
    as_of: date


class LeadOut(Document):
    agency: str
    status: StatusName
    event_id: str | None = Field(description="The effective report's event id (null when the agency did not report)")
    reported_at: str | None = Field(description="The reporter's own claim of when it reported: orders its reports")
    received_at: str | None = Field(
        description="When the platform received the report (the broker's timestamp, UTC): what on_time is judged "
        "by, except for a backfilled report (judged by reported_at); null when unreported, or in a store older "
        "than this field until a rebuild"
    )
    on_time: bool | None
    progress: float | None
    kpis: list[KpiOut]
    note: str | None
    reporter: str | None
    review: Literal["pending", "accepted", "returned"] | None = Field(
        description="The effective report's review state (null when the agency did not report)"
    )
    review_comment: str | None = Field(description="Why the secretariat returned the report (差戻し), when it did")
    answers: str | None = Field(description="The returned report (event id) this one answers, if it answers one")
    backfilled: bool | None = Field(description="A past report migrated by the secretariat (null when unreported)")


class ObservationOut(Document):
    value: float
    as_of: date
    agency: str
    event_id: str
    reported_at: str


class MilestoneRatingOut(Document):
    """A milestone of a target rated on its own value and date (`reporting.ratings`)."""

    due_date: date | None
    value: float | None
    text: str | None
    rating: Literal["A", "B", "N"]
    rating_reason: str | None
    progress: float | None
    elapsed_share: float | None
    overdue: bool | None = Field(description="None for a milestone that states no value")


class TargetOut(Target, Document):
    """A target as the catalog states it (every field of `contracts.catalog.Target`), with what reporting knows."""

    overdue: bool = Field(
        description="The due date passed and the target is not met: its value not reached by the latest observation "
        "(a value met is not overdue though the measure is not completed), or, without a value, the measure not "
        "completed"
    )
    rating: Literal["A", "B", "N"] = Field(
        description="A: met, or progress from the start (the baseline in the target's direction, else zero) ≥ the "
        "elapsed share of the period since the start (the baseline's date, else 2024-06-21); B: below; "
        "N: no observation, or not ratable"
    )
    rating_reason: str | None
    progress: float | None
    elapsed_share: float | None
    met: bool | None = Field(default=None, description="Whether the latest observation meets the target's value")
    rating_start: date | None = Field(default=None, description="Where progress and elapsed time are counted from")
    milestone_ratings: list[MilestoneRatingOut] = Field(default_factory=list)
    observed: float | None = Field(description="The latest observed value (also in `observation`)")
    observed_as_of: date | None
    observation: ObservationOut | None


class MeasureItemOut(Document):
    measure_id: str
    section: int
    section_title: str
    title: str
    status: StatusName = Field(description="Combined status of the leads' effective reports")
    reported: bool
    on_time: bool
    leads: list[LeadOut]
    event_ids: list[str] = Field(description="Lineage: the events the status came from")
    previous_status: StatusName | None
    movement: Literal["worse", "better", "same"] | None
    latest_status: StatusName = Field(description="Combined status in the latest quarter any lead reported on")
    latest_quarter: str | None
    targets: list[TargetOut]
    overdue_targets: int
    agency_status: StatusName | None = Field(
        default=None, description="The filtered agency's own status (null when the list is not filtered by agency)"
    )


class MeasureListOut(Document):
    items: list[MeasureItemOut]
    total: int
    limit: int
    offset: int


class HistoryItemOut(Document):
    fiscal_year: int
    quarter: int
    label: str
    period_start: date
    period_end: date
    status: StatusName
    reported: bool
    on_time: bool
    leads: list[LeadOut]
    event_ids: list[str]
    movement: Literal["worse", "better", "same"] | None


class MeasureOut(Document):
    id: str
    section: int
    section_title: str
    title: str
    description: list[str]
    lead_agencies: list[str]
    targets: list[TargetOut]


class HistoryOut(Document):
    measure_id: str
    section: int
    section_title: str
    title: str
    lead_agencies: list[str]
    latest_status: StatusName
    latest_quarter: str | None
    targets: list[TargetOut]
    overdue_targets: int
    measure: MeasureOut = Field(description="The measure as the catalog states it, with its targets' standing")
    items: list[HistoryItemOut]
    total: int
