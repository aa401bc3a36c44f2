"""HTTP routes of the reporting service (:8003). JSON by default, `?format=csv` (UTF-8 with BOM) or `?format=xlsx`
for tables.

The routes validate what the request says (400 with a reason) and answer the documents `RollupQueries` builds
as the response models declare (`reporting.documents`), serialised once: the rollup's bytes come from a cache.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from contracts.agencies import AGENCY_INFO, Agency
from contracts.periods import FiscalQuarter
from reporting import access
from reporting.access import Reader
from reporting.documents import document_json
from reporting.domain import ROLLUP_STATUSES, SECTIONS
from reporting.queries import RollupQueries
from reporting.schemas import (
    STATUS_NAMES,
    HistoryOut,
    LeadOut,
    MeasureListOut,
    RevisionsOut,
    RollupOut,
    TallyOut,
    YearOut,
)
from shinchoku_runtime.http import BadRequest, table_response

router = APIRouter()

# Every fiscal year the v1 contract admits can be served: an admitted report must never be unviewable.
MIN_FISCAL_YEAR = 1900
MAX_FISCAL_YEAR = 9998


def get_queries(request: Request) -> RollupQueries:
    queries: RollupQueries = request.app.state.queries
    return queries


Queries = Annotated[RollupQueries, Depends(get_queries)]
Format = Annotated[
    Literal["json", "csv", "xlsx"],
    Query(alias="format", description="json (default), csv (UTF-8 with BOM) or xlsx (an Excel workbook)"),
]
AsOf = Annotated[
    str | None,
    Query(
        description="RFC 3339 timestamp with offset: answer from the events admitted by that moment "
        "(the quarter as it stood then)",
        examples=["2025-01-31T00:00:00+09:00"],
    ),
]

_OFFSET_AS_SPACE = re.compile(r" (\d{2}(?::?\d{2})?)$")


def check_fiscal_year(fiscal_year: int) -> int:
    if not MIN_FISCAL_YEAR <= fiscal_year <= MAX_FISCAL_YEAR:
        raise BadRequest(f"fiscal year must be between {MIN_FISCAL_YEAR} and {MAX_FISCAL_YEAR}, not {fiscal_year}")
    return fiscal_year


def fiscal_quarter(fiscal_year: int, quarter: int) -> FiscalQuarter:
    """The quarter a path names, or a 400 that says what is wrong."""
    check_fiscal_year(fiscal_year)
    if not 1 <= quarter <= 4:
        raise BadRequest(f"quarter must be 1, 2, 3 or 4, not {quarter}")
    return FiscalQuarter(fiscal_year, quarter)


def check_agency(agency: str) -> str:
    try:
        return Agency(agency).value
    except ValueError:
        raise BadRequest(f"unknown agency {agency!r}; agencies are {', '.join(a.value for a in Agency)}") from None


def check_section(section: int) -> int:
    if section not in SECTIONS:
        raise BadRequest(f"section must be 1–6, not {section}")
    return section


def check_status(status: str) -> str:
    if status not in ROLLUP_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(ROLLUP_STATUSES)}, not {status!r}")
    return status


def parse_as_of(raw: str | None) -> datetime | None:
    """An aware moment from RFC 3339 text, or a 400 saying what is expected."""
    if raw is None:
        return None
    text = raw.strip()
    # An unencoded '+' in a query string arrives as a space.
    text = _OFFSET_AS_SPACE.sub(r"+\1", text)
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"as_of must be an RFC 3339 timestamp with offset, like 2025-01-31T00:00:00+09:00; got {raw!r}"
        ) from None
    if moment.tzinfo is None:
        raise BadRequest(f"as_of needs a UTC offset (like +09:00 or Z); got {raw!r}")
    return moment


def _json(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


_TALLY_HEADER = ["measures_total", "reported", "coverage", "on_time", "on_time_rate", *STATUS_NAMES]


def _tally_row(tally: TallyOut) -> list[Any]:
    return [
        tally.measures_total,
        tally.reported,
        tally.coverage,
        tally.on_time,
        tally.on_time_rate,
        *(tally.by_status[s] for s in STATUS_NAMES),
    ]


def _rollup_rows(doc: RollupOut) -> Iterable[list[Any]]:
    """One row per scope: government-wide, each section, each agency."""
    period = [doc.period_start, doc.period_end]
    yield [doc.label, "government", "all", "全体", *_tally_row(doc), *period]
    for number, section in doc.by_section.items():
        yield [doc.label, "section", number, section.title, *_tally_row(section), *period]
    for code, tally in doc.by_agency.items():
        yield [doc.label, "agency", code, AGENCY_INFO[Agency(code)].name_ja, *_tally_row(tally), *period]


_ROLLUP_HEADER = ["quarter", "scope", "key", "name", *_TALLY_HEADER, "period_start", "period_end"]


def _leads_text(leads: Sequence[LeadOut]) -> str:
    return " ".join(f"{lead.agency}:{lead.status}" for lead in leads)


def _own_report(leads: Sequence[LeadOut], agency: str | None) -> list[Any]:
    """The filtered agency's own effective report (status, progress, when, note), empty cells without a filter."""
    lead = next((lead for lead in leads if lead.agency == agency), None)
    if lead is None:
        return [None, None, None, None]
    at = datetime.fromisoformat(lead.reported_at) if lead.reported_at else None
    return [lead.status, lead.progress, at, lead.note]


@router.get("/rollups/{fiscal_year}/{quarter}", response_model=RollupOut, tags=["rollups"])
def get_rollup(
    fiscal_year: int,
    quarter: int,
    queries: Queries,
    principal: Reader,
    as_of: AsOf = None,
    format_: Format = "json",
    revision: Annotated[
        int | None,
        Query(ge=1, description="A closed quarter's published revision N, exactly as it was published"),
    ] = None,
) -> Response:
    """A quarter's rollup: government-wide, per agency and per section, with the previous quarter's trend.

    With `revision`, the published document of that revision (the `rollup` of its `published`/`restated` event)."""
    q = fiscal_quarter(fiscal_year, quarter)
    moment = parse_as_of(as_of)
    access.ensure_quarter(principal, queries, q, as_of=moment)
    if revision is not None:  # only a closed quarter has published revisions: what the public may read
        return _json(queries.revision_json(q, revision))
    if format_ != "json":
        doc = queries.rollup(q, as_of=moment, public=access.public_view(principal))
        return table_response(format_, _ROLLUP_HEADER, _rollup_rows(doc), name=f"rollup-{q.label}")
    return _json(queries.rollup_json(q, as_of=moment, public=access.public_view(principal)))


@router.get("/rollups/{fiscal_year}/{quarter}/revisions", response_model=RevisionsOut, tags=["rollups"])
def get_revisions(fiscal_year: int, quarter: int, queries: Queries, principal: Reader) -> Response:
    """Every published revision of a closed quarter: when, its digest, and what changed since the one before."""
    q = fiscal_quarter(fiscal_year, quarter)
    access.ensure_quarter(principal, queries, q)
    return _json(document_json(queries.revisions(q)))


@router.get("/rollups/{fiscal_year}/{quarter}/measures", response_model=MeasureListOut, tags=["rollups"])
def get_rollup_measures(
    fiscal_year: int,
    quarter: int,
    queries: Queries,
    principal: Reader,
    agency: Annotated[str | None, Query(description="Only measures this agency leads (agency code)")] = None,
    section: Annotated[int | None, Query(description="Only measures of this section (1–6)")] = None,
    status: Annotated[
        str | None,
        Query(description="Only measures with this combined status (the agency's own status when agency is given)"),
    ] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000, description="Page size (1–1000; JSON default 100)")] = None,
    offset: Annotated[int, Query(ge=0, description="Items to skip")] = 0,
    as_of: AsOf = None,
    format_: Format = "json",
) -> Response:
    """Each measure's status in a quarter with its leads' effective reports, lineage and targets."""
    q = fiscal_quarter(fiscal_year, quarter)
    moment = parse_as_of(as_of)
    access.ensure_quarter(principal, queries, q, as_of=moment)
    items = queries.measures(
        q,
        agency=check_agency(agency) if agency is not None else None,
        section=check_section(section) if section is not None else None,
        status=check_status(status) if status is not None else None,
        as_of=moment,
        public=access.public_view(principal),
    )
    items = access.measure_items(principal, items)
    total = len(items)
    if format_ != "json":
        page = items[offset : offset + limit] if limit is not None else items[offset:]
        header = ["measure_id", "section", "title", "status", "reported", "on_time", "previous_status", "movement"]
        header += ["leads", "event_ids", "latest_status", "overdue_targets"]
        header += ["agency_status", "agency_progress", "agency_reported_at", "agency_note"]
        rows = [
            [
                i.measure_id,
                i.section,
                i.title,
                i.status,
                i.reported,
                i.on_time,
                i.previous_status,
                i.movement,
                _leads_text(i.leads),
                " ".join(i.event_ids),
                i.latest_status,
                i.overdue_targets,
                *_own_report(i.leads, agency),
            ]
            for i in page
        ]
        return table_response(format_, header, rows, name=f"measures-{q.label}")
    size = limit if limit is not None else 100
    page_out = MeasureListOut(items=items[offset : offset + size], total=total, limit=size, offset=offset)
    return _json(document_json(page_out))


@router.get("/rollups/{fiscal_year}", response_model=YearOut, tags=["rollups"])
def get_year(
    fiscal_year: int, queries: Queries, principal: Reader, as_of: AsOf = None, format_: Format = "json"
) -> Response:
    """A fiscal year at a glance: the rollups of its four quarters (the closed ones for the public)."""
    moment = parse_as_of(as_of)
    doc = queries.year(check_fiscal_year(fiscal_year), as_of=moment, public=access.public_view(principal))
    doc = access.year(principal, queries, doc, as_of=moment)
    if format_ != "json":
        rows = [row for quarter in doc.quarters for row in _rollup_rows(quarter)]
        return table_response(format_, _ROLLUP_HEADER, rows, name=f"rollups-FY{fiscal_year}")
    return _json(document_json(doc))


@router.get("/measures/{measure_id}/history", response_model=HistoryOut, tags=["measures"])
def get_history(measure_id: str, queries: Queries, principal: Reader, format_: Format = "json") -> Response:
    """A measure quarter by quarter: every quarter any lead reported on, oldest first (closed ones for the public)."""
    doc = access.history(principal, queries, queries.history(measure_id, public=access.public_view(principal)))
    if format_ != "json":
        header = ["quarter", "fiscal_year", "q", "status", "reported", "on_time", "movement", "leads", "event_ids"]
        header += ["period_start", "period_end"]
        rows = [
            [
                i.label,
                i.fiscal_year,
                i.quarter,
                i.status,
                i.reported,
                i.on_time,
                i.movement,
                _leads_text(i.leads),
                " ".join(i.event_ids),
                i.period_start,
                i.period_end,
            ]
            for i in doc.items
        ]
        return table_response(format_, header, rows, name=f"history-{measure_id}")
    return _json(document_json(doc))
