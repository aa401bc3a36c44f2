"""Alerts as events (binding, DESIGN.md "Alerts"): what needs doing, raised once and resolved once.

Reporting raises an alert on `alert.{agency}.{kind}` when its condition starts (`state: raised`) and publishes it
again when the condition ends (`state: resolved`). The `alert_id` is derived from the condition alone (kind,
agency, measure, quarter, target), so every replica, every restart and every rebuild names one condition
with one id; the ALERTS stream's `Nats-Msg-Id` (`alert_msg_id`) lets the broker drop a second publication of
the same raise or resolve.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.agencies import Agency
from contracts.events import MeasureId


class AlertKind(StrEnum):
    """What an alert is about (DESIGN.md's seven kinds, then the additive ones)."""

    #: A measure the agency leads is unreported N days (14 by default) before the quarter's on-time deadline.
    report_due = "report_due"
    #: Still unreported at the deadline.
    report_missing = "report_missing"
    #: The secretariat returned (差戻し) the agency's effective report.
    returned = "returned"
    #: A target's due date passed and the target is not met.
    target_overdue = "target_overdue"
    #: No report from the agency on the measure for two quarters running.
    stale = "stale"
    #: The co-leads' statuses for a quarter are two or more severity steps apart.
    co_lead_disagreement = "co_lead_disagreement"
    #: The measure's combined status got more severe than the quarter before.
    worsened = "worsened"
    #: Additive: a KPI observation jumped implausibly against the previous one for the same target (admitted; a
    #: validation rule for the secretariat to check, never silent).
    kpi_jump = "kpi_jump"


class AlertState(StrEnum):
    raised = "raised"
    resolved = "resolved"


_FROZEN = ConfigDict(frozen=True, extra="forbid")


class AlertEvent(BaseModel):
    """An alert as reporting publishes it on `alert.{agency}.{kind}` and serves it on `GET /alerts`."""

    model_config = _FROZEN

    alert_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="Derived from the condition (alert_key): one condition, one id, across restarts and replicas",
        examples=["report_due.mof.1-25.2024.3.-"],
    )
    kind: AlertKind
    state: AlertState
    agency: Agency = Field(description="The agency the alert is for (the lead that needs to act)")
    measure_id: MeasureId | None = Field(default=None, examples=["1-25"])
    fiscal_year: int | None = Field(default=None, examples=[2024])
    quarter: int | None = Field(default=None, ge=1, le=4, examples=[3])
    target_index: int | None = Field(default=None, ge=0, description="The measure's target (0-based)")
    raised_at: AwareDatetime = Field(description="When the condition was first seen")
    resolved_at: AwareDatetime | None = Field(default=None, description="When it ended; null while raised")
    message_ja: str = Field(max_length=2000, description="What to do, by when, in Japanese")
    message_en: str = Field(max_length=2000, description="What to do, by when, in English")
    refs: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="The events behind the alert (report event ids, review ids)",
    )


def alert_key(
    kind: AlertKind | str,
    agency: Agency | str,
    *,
    measure_id: str | None = None,
    fiscal_year: int | None = None,
    quarter: int | None = None,
    target_index: int | None = None,
) -> str:
    """The `alert_id` of a condition: its parts joined by dots, `-` where a part does not apply."""
    parts = (kind, agency, measure_id, fiscal_year, quarter, target_index)
    return ".".join("-" if part is None else str(part) for part in parts)


def alert_subject(agency: Agency | str, kind: AlertKind | str) -> str:
    return f"alert.{agency}.{kind}"


def alert_msg_id(alert_id: str, state: AlertState | str, occurrence: int = 1) -> str:
    """The ALERTS `Nats-Msg-Id` of one raise or resolve: a condition that ends and starts again is a new
    occurrence (published again), a second publication of the same one is dropped by the broker."""
    return f"{alert_id}:{state}:{occurrence}"
