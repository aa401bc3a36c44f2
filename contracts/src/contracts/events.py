"""Status event contract v1 and the records ingest publishes (binding)."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from contracts.agencies import Agency


class Status(StrEnum):
    not_started = "not_started"
    on_track = "on_track"
    at_risk = "at_risk"
    delayed = "delayed"
    completed = "completed"
    suspended = "suspended"


#: Most severe first: a measure's combined status is the most severe of its leads' effective reports.
SEVERITY_ORDER: tuple[Status, ...] = (
    Status.delayed,
    Status.at_risk,
    Status.suspended,
    Status.not_started,
    Status.on_track,
    Status.completed,
)

#: The status of a measure with no effective report in a quarter.
UNREPORTED = "unreported"


class ReasonCode(StrEnum):
    """Why ingest rejected an event. When several rules fail, the first in REASON_PRECEDENCE wins."""

    malformed = "malformed"
    agency_mismatch = "agency_mismatch"
    unknown_measure = "unknown_measure"
    not_lead = "not_lead"
    future_timestamp = "future_timestamp"
    future_period = "future_period"
    duplicate_conflict = "duplicate_conflict"
    #: Additive: a message that could not be processed after the consumer's last delivery attempt.
    undeliverable = "undeliverable"
    # Additive, the secretariat's commands (contracts.commands):
    #: A review naming no admitted report of that agency and measure.
    unknown_event = "unknown_event"
    #: A close before the quarter's on-time deadline (judged on the broker's receipt time).
    period_open = "period_open"
    #: A second close of a quarter: a closed quarter stays closed.
    already_closed = "already_closed"
    #: A principal sending a command it may not send (only the secretariat sends commands, with its bearer token).
    not_permitted = "not_permitted"
    #: Additive: a KPI observation dated (`as_of`) after its report's `reported_at` day (Asia/Tokyo).
    kpi_future = "kpi_future"


REASON_PRECEDENCE: tuple[ReasonCode, ...] = (
    ReasonCode.malformed,
    ReasonCode.agency_mismatch,
    ReasonCode.unknown_measure,
    ReasonCode.not_lead,
    ReasonCode.future_timestamp,
    ReasonCode.future_period,
    ReasonCode.duplicate_conflict,
    # Additive, so last: a report failing an older rule keeps the reason it had.
    ReasonCode.kpi_future,
)

MeasureId = Annotated[str, StringConstraints(pattern=r"^[1-6]-\d{1,3}$")]


class KpiObservation(BaseModel):
    """An observed value of one of the measure's targets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: int = Field(ge=0, description="Index of the measure's target (0-based)", examples=[0])
    value: float = Field(allow_inf_nan=False, description="The observed value, in the target's unit", examples=[62.5])
    as_of: date = Field(description="The date the value was observed", examples=["2025-03-31"])


class StatusEvent(BaseModel):
    """A ministry's status report on one measure for one fiscal quarter (contract v1).

    Published as JSON on `status.{agency}.{measure_id}`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(
        description="Idempotency key: resending the same report reuses it",
        examples=["0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11"],
    )
    schema_version: Literal[1] = Field(default=1, description="Contract version")
    measure_id: MeasureId = Field(description="The plan's measure number, S-N", examples=["1-25"])
    agency: Agency = Field(
        description="The reporting agency; must match the subject and lead the measure", examples=["mof"]
    )
    fiscal_year: int = Field(ge=1900, le=9998, description="Japanese fiscal year (April start)", examples=[2024])
    quarter: int = Field(ge=1, le=4, description="The quarter reported on", examples=[3])
    status: Status = Field(description="Status of the measure in that quarter", examples=["on_track"])
    progress: float | None = Field(
        default=None, ge=0, le=100, allow_inf_nan=False, description="Overall progress in percent", examples=[45]
    )
    kpis: list[KpiObservation] = Field(
        default_factory=list, max_length=100, description="Observed values of the measure's targets"
    )
    note: str | None = Field(
        default=None,
        max_length=4000,
        description="Free text for the follow-up team",
        examples=["申告手続の利用率は前年同期比で上昇"],
    )
    reported_at: AwareDatetime = Field(
        description="When the agency made the report (RFC 3339 with offset)", examples=["2024-12-20T17:00:00+09:00"]
    )
    reporter: str | None = Field(
        default=None, max_length=200, description="Who reported", examples=["財務省 国税庁 企画課"]
    )


class AdmittedEvent(BaseModel):
    """What ingest publishes on `accepted.{agency}.{measure_id}`: the admitted event and when it was admitted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: StatusEvent
    admitted_at: AwareDatetime = Field(description="When ingest admitted the event (UTC)")
    subject: str = Field(description="The STATUS subject it arrived on", examples=["status.mof.1-25"])
    received_at: AwareDatetime | None = Field(
        default=None,
        description=(
            "When the platform received the report: the broker's timestamp of its STATUS message (UTC). Timeliness "
            "is judged by it, never by the reporter's own `reported_at`. Absent on admissions published before it "
            "was carried (readers fall back to `admitted_at`)"
        ),
    )
    backfilled: bool = Field(
        default=False,
        description="A past report migrated by the secretariat (backfill.{agency}.{measure_id}): judged by `reported_at`",
    )


class Rejection(BaseModel):
    """What ingest publishes on `rejected.{agency}`: the original bytes, where they came, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rejection_id: str = Field(description="Stable id of this rejection (also its Nats-Msg-Id)")
    event_id: str | None = Field(default=None, description="The event_id, when the payload carried a readable one")
    agency: str = Field(description="The agency of the subject the message arrived on", examples=["mof"])
    subject: str = Field(examples=["status.mof.1-25"])
    reason: ReasonCode
    message: str = Field(description="What is wrong, in words a ministry clerk can act on")
    payload_b64: str = Field(description="The original message bytes, base64")
    received_at: AwareDatetime


class CatalogChanged(BaseModel):
    """Published on `catalog.changed` when the registry of measures changes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    revision: str = Field(description="Content hash of the registry after the change")
    measures_total: int
    changed_ids: list[str] = Field(default_factory=list)
    at: datetime
