"""A closed quarter's published documents: built from a revision's frozen figures and the catalog.

`build_document` tallies the figures exactly as `reporting.domain.rollup_quarter` tallies effective reports (each
measure once by its leads' combined status; each agency by its own report), so that the document published at a
close equals the live rollup at that moment, digest for digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from contracts.agencies import Agency
from contracts.catalog import SECTION_TITLES, Measure
from contracts.cycle import RollupDocument
from contracts.periods import FiscalQuarter
from reporting.cycle.figures import FigureMap
from reporting.domain import SECTIONS, Tally, combined_status

REVIEW_STATES = ("pending", "accepted", "returned")


def build_document(
    quarter: FiscalQuarter,
    measures: Sequence[Measure],
    figures: FigureMap,
    *,
    revision: int | None,
    published_at: datetime | None,
    restated_at: datetime | None,
) -> RollupDocument:
    overall = Tally()
    by_agency = {agency.value: Tally() for agency in Agency}
    by_section = {section: Tally() for section in SECTIONS}
    review = dict.fromkeys(REVIEW_STATES, 0)
    for measure in measures:
        leads = [(str(agency), figures.get((measure.id, str(agency)))) for agency in measure.lead_agencies]
        reported = [f for _, f in leads if f is not None]
        status = combined_status(f.status for f in reported)
        on_time = bool(reported) and all(f.on_time for f in reported)
        overall.add(status, on_time=on_time)
        section = by_section.get(measure.section)
        if section is None:
            section = by_section[measure.section] = Tally()
        section.add(status, on_time=on_time)
        for agency, f in leads:
            tally = by_agency.get(agency)
            if tally is None:
                tally = by_agency[agency] = Tally()
            tally.add(f.status if f is not None else "unreported", on_time=bool(f is not None and f.on_time))
            if f is not None:
                review[f.review] += 1
    return RollupDocument.model_validate(
        {
            "fiscal_year": quarter.fiscal_year,
            "quarter": quarter.quarter,
            "label": quarter.label,
            "period_start": quarter.start,
            "period_end": quarter.end,
            "on_time_deadline": quarter.on_time_deadline,
            **overall.fields(),
            "by_agency": {agency.value: by_agency[agency.value].fields() for agency in Agency},
            "by_section": {
                str(n): {**t.fields(), "title": SECTION_TITLES.get(n, "")} for n, t in sorted(by_section.items())
            },
            "review": review,
            "closed": revision is not None,
            "revision": revision,
            "published_at": published_at,
            "restated_at": restated_at,
        }
    )


def document_of_rollup(rollup: dict[str, object]) -> RollupDocument:
    """The published-document part of a `GET /rollups/{fy}/{q}` answer (its other fields left out): what a reader
    compares with a publication's digest."""
    fields = set(RollupDocument.model_fields)
    tally_fields = {"measures_total", "reported", "coverage", "on_time", "on_time_rate", "by_status"}
    doc = {k: v for k, v in rollup.items() if k in fields}
    doc["by_agency"] = {
        code: {k: v for k, v in tally.items() if k in tally_fields}
        for code, tally in dict(rollup["by_agency"]).items()  # type: ignore[call-overload]
    }
    doc["by_section"] = {
        n: {k: v for k, v in tally.items() if k in tally_fields | {"title"}}
        for n, tally in dict(rollup["by_section"]).items()  # type: ignore[call-overload]
    }
    return RollupDocument.model_validate(doc)
