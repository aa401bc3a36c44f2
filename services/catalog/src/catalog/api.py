"""HTTP routes of the catalog (binding paths and shapes, see DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from catalog import access, repository
from catalog.domain import check_section, normalise_measure_id, parse_agency, query_terms
from catalog.subscribers import asyncapi_document
from contracts.agencies import AGENCIES, AGENCY_INFO, Agency
from contracts.catalog import SECTION_TITLES, Measure, Section
from shinchoku_runtime.asyncapi import render
from shinchoku_runtime.http import BadRequest, NotFound, Offset, csv_response
from shinchoku_runtime.service import health_response

if TYPE_CHECKING:
    from catalog.app import CatalogRuntime

DEFAULT_LIMIT = 100

router = APIRouter(dependencies=[Depends(access.PUBLIC)])


def get_session(request: Request) -> Iterator[Session]:
    runtime: CatalogRuntime = request.app.state.runtime
    with Session(runtime.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
OptionalLimit = Annotated[
    int | None,
    Query(ge=1, le=1000, description="Page size (1–1000); 100 for JSON, every match for CSV when omitted"),
]


class ErrorBody(BaseModel):
    detail: str = Field(examples=["no measure 1-999 in the catalog"])


BAD_FILTER: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Unknown agency code or section number"}
}
NO_SUCH_MEASURE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No measure with that id (or not an id at all)"}
}


class MeasurePage(BaseModel):
    items: list[Measure]
    total: int = Field(description="Measures matching the filters, over all pages", examples=[320])


class AgencySummary(BaseModel):
    code: Agency
    name_ja: str = Field(examples=["財務省"])
    name_en: str = Field(examples=["Ministry of Finance"])
    measures_total: int = Field(description="Measures the agency leads (alone or with others)", examples=[12])


CSV_HEADER = (
    "id",
    "section",
    "section_title",
    "title",
    "lead_agencies",
    "lead_agencies_ja",
    "targets",
    "description",
)


def _csv_row(m: Measure) -> list[object]:
    return [
        m.id,
        m.section,
        m.section_title,
        m.title,
        " ".join(a.value for a in m.lead_agencies),
        "、".join(AGENCY_INFO[a].name_ja for a in m.lead_agencies),
        "\n".join(t.text for t in m.targets),
        "\n".join(m.description),
    ]


@router.get("/measures", response_model=MeasurePage, responses=BAD_FILTER, tags=["measures"])
def list_measures(
    session: SessionDep,
    agency: Annotated[str | None, Query(description="Lead agency code, e.g. `mof`", examples=["mof"])] = None,
    section: Annotated[int | None, Query(description="Section number 1–6", examples=[1])] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Words that must all occur in the title, bullets or targets (full/half width and case ignored)",
            examples=["e-Tax"],
        ),
    ] = None,
    limit: OptionalLimit = None,
    offset: Offset = 0,
    format: Annotated[Literal["json", "csv"], Query(description="`csv`: UTF-8 with BOM, one row per measure")] = "json",
) -> MeasurePage | Response:
    """Measures in document order, filtered by lead agency, section and words."""
    try:
        lead = parse_agency(agency) if agency is not None else None
        if section is not None:
            check_section(section)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if format == "csv":
        items, total = repository.list_measures(
            session, agency=lead, section=section, terms=query_terms(q), limit=limit, offset=offset
        )
        response = csv_response(CSV_HEADER, (_csv_row(m) for m in items), filename="measures.csv")
        response.headers["X-Total-Count"] = str(total)
        return response
    items, total = repository.list_measures(
        session, agency=lead, section=section, terms=query_terms(q), limit=limit or DEFAULT_LIMIT, offset=offset
    )
    return MeasurePage(items=items, total=total)


@router.get("/measures/{measure_id}", response_model=Measure, responses=NO_SUCH_MEASURE, tags=["measures"])
def get_measure(session: SessionDep, measure_id: str) -> Measure:
    """One measure by its number, e.g. `1-25`."""
    normalised = normalise_measure_id(measure_id)
    if normalised is None:
        raise NotFound(f"no measure {measure_id!r}: measure ids look like 1-25 (section-number)")
    measure = repository.get_measure(session, measure_id=normalised)
    if measure is None:
        raise NotFound(f"no measure {normalised} in the catalog")
    return measure


@router.get("/agencies", response_model=list[AgencySummary], tags=["registry"])
def list_agencies(session: SessionDep) -> list[AgencySummary]:
    """The 17 lead agencies with how many measures each leads."""
    totals = repository.agency_totals(session)
    return [
        AgencySummary(code=a.code, name_ja=a.name_ja, name_en=a.name_en, measures_total=totals.get(a.code.value, 0))
        for a in AGENCIES
    ]


@router.get("/sections", response_model=list[Section], tags=["registry"])
def list_sections(session: SessionDep) -> list[Section]:
    """The plan's six sections with their measure counts."""
    totals = repository.section_totals(session)
    return [Section(number=n, title=title, measures_total=totals.get(n, 0)) for n, title in SECTION_TITLES.items()]


@router.get("/healthz", tags=["operations"])
async def healthz(request: Request) -> JSONResponse:
    """Ready when the registry is in the database and mirrored on a connected NATS (503 otherwise)."""
    runtime: CatalogRuntime = request.app.state.runtime
    registry = await run_in_threadpool(runtime.registry_status)
    nats = await runtime.nats_ready()
    return health_response(
        {"database": registry is not None, "nats": nats},
        revision=registry.revision if registry is not None else None,
        measures_total=registry.measures_total if registry is not None else None,
    )


@cache
def _asyncapi_body() -> bytes:
    return render(asyncapi_document()).encode()


@router.get(
    "/asyncapi.json",
    tags=["registry"],
    responses={200: {"content": {"application/json": {}}, "description": "An AsyncAPI 3.0 document"}},
)
def asyncapi() -> Response:
    """The platform's message API (NATS subjects and payloads) as an AsyncAPI 3.0 document; public."""
    return Response(_asyncapi_body(), media_type="application/json")
