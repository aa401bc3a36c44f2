"""The reporting API's documents, built as the response models of `reporting.schemas` declare them.

Each builder takes what `reporting.views` computed and returns the route's response model, validated as it is
built: a field the model does not declare, or one it declares that a builder leaves out, fails here and in the
tests rather than reaching a client. `document_json` is the bytes a route answers (and caches).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from contracts.agencies import Agency
from contracts.catalog import SECTION_TITLES, Measure
from contracts.periods import FiscalQuarter
from reporting.domain import LeadStanding, MeasureStanding, QuarterRollup, movement
from reporting.progress import MeasureProgress, TargetStanding, target_standings
from reporting.schemas import (
    Document,
    HistoryItemOut,
    HistoryOut,
    KpiOut,
    LeadOut,
    MeasureItemOut,
    MeasureOut,
    MilestoneRatingOut,
    ObservationOut,
    QuarterRefOut,
    ReviewCountsOut,
    RollupOut,
    ScopeTallyOut,
    SectionTallyOut,
    TargetOut,
    TargetSummaryOut,
    YearOut,
    YearQuarterOut,
)
from reporting.views import MeasureHistory, QuarterView


def document_json(document: Document) -> bytes:
    """A document as a route answers it: compact JSON, UTF-8 (Japanese as it is)."""
    return document.model_dump_json().encode()


def _quarter_fields(quarter: FiscalQuarter) -> dict[str, Any]:
    return {
        "fiscal_year": quarter.fiscal_year,
        "quarter": quarter.quarter,
        "label": quarter.label,
        "period_start": quarter.start,
        "period_end": quarter.end,
    }


def _moment(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# --- GET /rollups/{fy}/{q} and /rollups/{fy} ------------------------------------------------------------------


def rollup_document(view: QuarterView) -> RollupOut:
    rollup = view.rollup
    quarter = rollup.quarter
    previous = view.trend.previous
    targets = view.targets
    return RollupOut(
        **_quarter_fields(quarter),
        on_time_deadline=quarter.on_time_deadline.isoformat(),
        **rollup.overall.fields(),
        by_agency={
            agency.value: ScopeTallyOut(
                **rollup.by_agency[agency.value].fields(),
                overdue_targets=targets.overdue_by_agency.get(agency.value, 0),
            )
            for agency in Agency
        },
        by_section={
            str(n): SectionTallyOut(
                **tally.fields(),
                title=SECTION_TITLES.get(n, ""),
                overdue_targets=targets.overdue_by_section.get(n, 0),
            )
            for n, tally in sorted(rollup.by_section.items())
        },
        previous=QuarterRefOut(**_quarter_fields(previous.quarter), **previous.overall.fields()),
        moved_worse=list(view.trend.moved_worse),
        moved_better=list(view.trend.moved_better),
        overdue_targets=targets.overdue,
        targets=TargetSummaryOut(
            total=targets.total,
            overdue=targets.overdue,
            measures_with_overdue=targets.measures_overdue,
            ratings=dict(targets.ratings),
            reference_date=view.today,
        ),
        as_of=_moment(view.as_of),
        review=ReviewCountsOut(**review_counts(view.rollup)),
        closed=view.publication.closed,
        revision=view.publication.revision,
        published_at=view.publication.published_at,
        restated_at=view.publication.restated_at,
    )


def review_counts(rollup: QuarterRollup) -> dict[str, int]:
    """The leads' effective reports by review state (as `reporting.cycle.documents.build_document` counts them)."""
    counts = dict.fromkeys(("pending", "accepted", "returned"), 0)
    for standing in rollup.measures:
        for lead in standing.leads:
            if lead.report is not None:
                counts[lead.report.review] += 1
    return counts


def year_document(fiscal_year: int, quarters: Sequence[tuple[RollupOut, bool]], as_of: datetime | None) -> YearOut:
    """The four quarters' rollups of a fiscal year, each with whether it had begun (`quarters`: rollup, begun)."""
    return YearOut(
        fiscal_year=fiscal_year,
        period_start=FiscalQuarter(fiscal_year, 1).start,
        period_end=FiscalQuarter(fiscal_year, 4).end,
        as_of=_moment(as_of),
        quarters=[YearQuarterOut(**dict(rollup), has_started=started) for rollup, started in quarters],
    )


# --- GET /rollups/{fy}/{q}/measures -----------------------------------------------------------------------------


def _utc_text(moment: datetime | None) -> str | None:
    """A UTC moment as the contracts' JSON writes it (`…Z`), so it reads the same as on ACCEPTED."""
    if moment is None:
        return None
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _lead(lead: LeadStanding) -> LeadOut:
    report = lead.report
    if report is None:
        return LeadOut(
            agency=lead.agency,
            status=lead.status,
            event_id=None,
            reported_at=None,
            received_at=None,
            on_time=None,
            progress=None,
            kpis=[],
            note=None,
            reporter=None,
            review=None,
            review_comment=None,
            answers=None,
            backfilled=None,
        )
    return LeadOut(
        agency=lead.agency,
        status=report.status,
        event_id=report.event_id,
        reported_at=report.reported_at.isoformat(),
        received_at=_utc_text(report.received_at),
        on_time=report.on_time,
        progress=report.progress,
        kpis=[KpiOut(target=k.target, value=k.value, as_of=k.as_of) for k in report.kpis],
        note=report.note,
        reporter=report.reporter,
        review=report.review,
        review_comment=report.review_comment,
        answers=report.answers,
        backfilled=report.backfilled,
    )


def _standing_fields(standing: MeasureStanding) -> dict[str, Any]:
    return {
        "status": standing.status,
        "reported": standing.reported,
        "on_time": standing.on_time,
        "leads": [_lead(lead) for lead in standing.leads],
        "event_ids": list(standing.event_ids),
    }


def _measure_fields(measure: Measure) -> dict[str, Any]:
    return {
        "measure_id": measure.id,
        "section": measure.section,
        "section_title": measure.section_title,
        "title": measure.title,
    }


def _target(t: TargetStanding) -> TargetOut:
    observation = t.observation
    return TargetOut(
        **dict(t.target),
        overdue=t.overdue,
        rating=t.rating.rating,
        rating_reason=t.rating.reason,
        progress=t.rating.progress,
        elapsed_share=t.rating.elapsed_share,
        met=t.rating.met,
        rating_start=t.rating.start,
        milestone_ratings=[
            MilestoneRatingOut(
                due_date=m.milestone.due_date,
                value=m.milestone.value,
                text=m.milestone.text,
                rating=m.rating.rating,
                rating_reason=m.rating.reason,
                progress=m.rating.progress,
                elapsed_share=m.rating.elapsed_share,
                overdue=m.overdue,
            )
            for m in t.milestones
        ],
        observed=observation.value if observation else None,
        observed_as_of=observation.as_of if observation else None,
        observation=None
        if observation is None
        else ObservationOut(
            value=observation.value,
            as_of=observation.as_of,
            agency=observation.agency,
            event_id=observation.event_id,
            reported_at=observation.reported_at.isoformat(),
        ),
    )


def _progress_fields(measure: Measure, progress: MeasureProgress, today: date) -> dict[str, Any]:
    targets = target_standings(measure, progress, today)
    return {
        "latest_status": progress.latest_status,
        "latest_quarter": progress.latest_quarter.label if progress.latest_quarter else None,
        "targets": [_target(t) for t in targets],
        "overdue_targets": sum(1 for t in targets if t.overdue),
    }


def measure_documents(view: QuarterView) -> list[MeasureItemOut]:
    """Every measure of the quarter in document order (`agency_status` is set by a list filtered by agency)."""
    previous = {s.measure.id: s.status for s in view.trend.previous.measures}
    items = []
    for standing in view.rollup.measures:
        measure = standing.measure
        before = previous.get(measure.id)
        items.append(
            MeasureItemOut(
                **_measure_fields(measure),
                **_standing_fields(standing),
                previous_status=before,
                movement=movement(before, standing.status) if before is not None else None,
                **_progress_fields(measure, view.progress[measure.id], view.today),
                agency_status=None,
            )
        )
    return items


# --- GET /measures/{id}/history ---------------------------------------------------------------------------------


def history_document(history: MeasureHistory) -> HistoryOut:
    measure = history.measure
    progress = _progress_fields(measure, history.progress, history.today)
    items = [
        HistoryItemOut(**_quarter_fields(entry.quarter), **_standing_fields(entry.standing), movement=entry.movement)
        for entry in history.entries
    ]
    return HistoryOut(
        **_measure_fields(measure),
        lead_agencies=[str(a) for a in measure.lead_agencies],
        **progress,
        measure=MeasureOut(
            id=measure.id,
            section=measure.section,
            section_title=measure.section_title,
            title=measure.title,
            description=list(measure.description),
            lead_agencies=[str(a) for a in measure.lead_agencies],
            targets=progress["targets"],
        ),
        items=items,
        total=len(items),
    )
