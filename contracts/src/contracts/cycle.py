"""The reporting cycle's contracts (binding, DESIGN.md "The reporting cycle"): review, close, publication, restatement.

- The secretariat's commands, published on STATUS like reports and decided by ingest: `ReviewEvent` on
  `review.{agency}.{measure_id}` and `CloseEvent` on `close.{fy}.{q}` (a backfill is a v1 `StatusEvent` on
  `backfill.{agency}.{measure_id}`).
- What ingest publishes on ACCEPTED when it admits one, in the one order reporting applies every admitted fact
  in: `AdmittedReview` on `reviewed.{agency}.{measure_id}` and `AdmittedClose` on `closed.{fy}.{q}` (an admitted
  backfill is an `AdmittedEvent` on `accepted.{agency}.{measure_id}` marked `backfilled`).
- What reporting publishes on PUBLICATIONS: `Published` on `published.{fy}.{q}` when a quarter is closed, and
  `Restated` on `restated.{fy}.{q}` for every later admitted fact that changes a figure of its rollup. Each
  carries the frozen rollup document (`RollupDocument`) and its SHA-256 over `canonical_json` of it, so that
  any reader can check the figures it holds are the ones published.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from contracts.agencies import Agency
from contracts.events import MeasureId

#: A quarter's status names in a rollup: the six statuses, most severe first, then `unreported`.
RollupStatus = Literal["delayed", "at_risk", "suspended", "not_started", "on_track", "completed", "unreported"]

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
FiscalYear = Annotated[int, Field(ge=1900, le=9998, description="Japanese fiscal year (April start)", examples=[2024])]
Quarter = Annotated[int, Field(ge=1, le=4, description="Quarter of the fiscal year", examples=[3])]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def on_time_rate(on_time: int, measures_total: int) -> float:
    """Timeliness as the API publishes it (a rollup's `on_time_rate`): the measures reported on time over all the
    measures expected in the scope, reported or not (0 when none is expected). Reporting's documents, its
    dashboard and the CLI's tables all use this one rule."""
    return on_time / measures_total if measures_total else 0.0


class ReviewDecision(StrEnum):
    """What the secretariat decided about a report."""

    accepted = "accepted"
    #: 差戻し: sent back to its agency, with a comment saying why.
    returned = "returned"


class ReviewState(StrEnum):
    """A report's review state: its latest admitted review's decision, `pending` while it has none."""

    pending = "pending"
    accepted = "accepted"
    returned = "returned"


# --- The secretariat's commands (published on STATUS, decided by ingest) -------------------------------------------


class ReviewEvent(BaseModel):
    """The secretariat's review of an admitted report, published on `review.{agency}.{measure_id}` (the report's
    agency and measure)."""

    model_config = _FROZEN

    review_id: UUID = Field(
        description="Idempotency key of the review", examples=["5f0c8a1e-2b7d-4c1a-9e3f-7a6b5c4d3e21"]
    )
    event_id: UUID = Field(
        description="The reviewed report's event_id", examples=["0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11"]
    )
    decision: ReviewDecision = Field(description="accepted, or returned (差戻し) to its agency", examples=["returned"])
    comment: str | None = Field(
        default=None,
        max_length=4000,
        description="Why, shown to the report's agency; required when the report is returned",
        examples=["KPIの基準値と実績値の時点が異なります。同じ時点の値で再提出してください。"],
    )
    reviewed_at: AwareDatetime = Field(description="When the secretariat reviewed it (RFC 3339 with offset)")
    reviewer: str = Field(
        min_length=1,
        max_length=200,
        description="Who reviewed, as the sender states it (the verified principal is kept next to it)",
        examples=["重点計画事務局 山田"],
    )

    @model_validator(mode="after")
    def _returned_says_why(self) -> Self:
        if self.decision is ReviewDecision.returned and not (self.comment and self.comment.strip()):
            raise ValueError("a returned report needs a comment saying why (comment is required when returned)")
        return self


class CloseEvent(BaseModel):
    """The secretariat closes a quarter after its on-time deadline, published on `close.{fy}.{q}`."""

    model_config = _FROZEN

    close_id: UUID = Field(
        description="Idempotency key of the close", examples=["9a3e7c55-0d1f-4b2a-8c6e-1f2e3d4c5b6a"]
    )
    fiscal_year: FiscalYear
    quarter: Quarter
    closed_at: AwareDatetime = Field(description="When the secretariat closed it (RFC 3339 with offset)")
    closed_by: str = Field(
        min_length=1,
        max_length=200,
        description="Who closed it, as the sender states it (the verified principal is kept next to it)",
        examples=["重点計画事務局"],
    )
    note: str | None = Field(default=None, max_length=4000, description="Free text published with nothing")


# --- What ingest publishes on ACCEPTED when it admits a command --------------------------------------------------


class ReviewedReport(BaseModel):
    """Where the reviewed report belongs, as ingest found it admitted (so that readers need not look it up)."""

    model_config = _FROZEN

    agency: Agency
    measure_id: MeasureId
    fiscal_year: FiscalYear
    quarter: Quarter


class AdmittedReview(BaseModel):
    """What ingest publishes on `reviewed.{agency}.{measure_id}` when it admits a review."""

    model_config = _FROZEN

    review: ReviewEvent
    report: ReviewedReport = Field(description="The reviewed report's agency, measure and fiscal quarter")
    principal: str = Field(description="The verified sender: the `sub` of the bearer token the command carried")
    admitted_at: AwareDatetime = Field(description="When ingest admitted the review (UTC)")
    received_at: AwareDatetime = Field(description="When the broker received the command (its STATUS timestamp)")
    subject: str = Field(description="The subject the command arrived on", examples=["review.mof.1-25"])


class AdmittedClose(BaseModel):
    """What ingest publishes on `closed.{fy}.{q}` when it admits a close."""

    model_config = _FROZEN

    close: CloseEvent
    principal: str = Field(description="The verified sender: the `sub` of the bearer token the command carried")
    admitted_at: AwareDatetime = Field(description="When ingest admitted the close (UTC); the publication's time")
    received_at: AwareDatetime = Field(description="When the broker received the command (its STATUS timestamp)")
    subject: str = Field(description="The subject the command arrived on", examples=["close.2024.3"])


# --- What reporting publishes on PUBLICATIONS --------------------------------------------------------------------


class RollupTally(BaseModel):
    """Counts of measures in one scope of a quarter (government-wide, a section or an agency)."""

    model_config = _FROZEN

    measures_total: int = Field(ge=0, description="Measures expected to report in the scope", examples=[320])
    reported: int = Field(ge=0, description="Measures with at least one effective report", examples=[250])
    coverage: float = Field(description="reported / measures_total (0 when nothing is expected)", examples=[0.78])
    on_time: int = Field(ge=0, description="Reported measures whose effective reports were all on time")
    on_time_rate: float = Field(description="on_time / measures_total (0 when nothing is expected)")
    by_status: dict[RollupStatus, int] = Field(description="All seven keys, each a count of measures")


class SectionTally(RollupTally):
    title: str = Field(description="The section's title in the plan")


class ReviewCounts(BaseModel):
    """Effective reports of the quarter's leads by review state."""

    model_config = _FROZEN

    pending: int = Field(ge=0)
    accepted: int = Field(ge=0)
    returned: int = Field(ge=0)


class RollupDocument(RollupTally):
    """A quarter's rollup as published: quarter-local figures only (no trend, no targets judged on a day).

    What `GET /rollups/{fy}/{q}` answers carries these fields too (with these values, for a closed quarter);
    `?revision=N` answers revision N's document exactly.
    """

    fiscal_year: FiscalYear
    quarter: Quarter
    label: str = Field(examples=["FY2024Q3"])
    period_start: date
    period_end: date
    on_time_deadline: AwareDatetime = Field(description="Reports received by this instant are on time")
    by_agency: dict[Agency, RollupTally] = Field(description="The measures each agency leads, by its own report")
    by_section: dict[Literal["1", "2", "3", "4", "5", "6"], SectionTally] = Field(
        description="Each measure once, by its combined status"
    )
    review: ReviewCounts
    closed: bool = Field(description="Whether the secretariat has closed the quarter")
    revision: int | None = Field(ge=1, description="The published revision (null while the quarter is open)")
    published_at: AwareDatetime | None = Field(description="When the quarter was closed and first published")
    restated_at: AwareDatetime | None = Field(description="When this revision restated the previous one")


class Published(BaseModel):
    """Published by reporting on `published.{fy}.{q}` when the quarter is closed: revision 1 of its figures."""

    model_config = _FROZEN

    fiscal_year: FiscalYear
    quarter: Quarter
    revision: Literal[1] = 1
    published_at: AwareDatetime = Field(description="The close's admission time")
    sha256: Sha256 = Field(description="SHA-256 of canonical_json(rollup), hexadecimal")
    rollup: RollupDocument


class LeadFigures(BaseModel):
    """What a lead agency's effective report makes of its measure in a quarter (`unreported`: none)."""

    model_config = _FROZEN

    status: RollupStatus
    on_time: bool | None = Field(description="Null when unreported")
    review: ReviewState | None = Field(description="The effective report's review state; null when unreported")


class RollupChange(BaseModel):
    """One lead's figures on one measure, before and after a restatement, and the admitted facts that changed them."""

    model_config = _FROZEN

    measure_id: MeasureId
    agency: Agency
    before: LeadFigures
    after: LeadFigures
    event_ids: list[str] = Field(description="The reports' event_ids and reviews' review_ids that made the change")


class Restated(BaseModel):
    """Published by reporting on `restated.{fy}.{q}` for every admitted fact that changes a closed quarter's figures."""

    model_config = _FROZEN

    fiscal_year: FiscalYear
    quarter: Quarter
    revision: int = Field(ge=2)
    previous_revision: int = Field(ge=1)
    restated_at: AwareDatetime = Field(description="The admission time of the fact that changed the figures")
    sha256: Sha256 = Field(description="SHA-256 of canonical_json(rollup), hexadecimal")
    rollup: RollupDocument
    changes: list[RollupChange]
    by_status_before: dict[RollupStatus, int] = Field(description="Government-wide counts of the previous revision")
    by_status_after: dict[RollupStatus, int] = Field(description="Government-wide counts of this revision")


def canonical_json(value: BaseModel | dict[str, Any]) -> bytes:
    """The bytes a document's digest is taken over: its JSON with sorted keys, no spaces, UTF-8 (Japanese as is)."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def document_sha256(document: RollupDocument) -> str:
    """The `sha256` published with a rollup document."""
    return hashlib.sha256(canonical_json(document)).hexdigest()
