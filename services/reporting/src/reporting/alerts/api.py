"""`GET /alerts` (DESIGN.md "Alerts"): filters agency, kind, state; paging `limit` ≤ 1000 (default 100), `offset`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from contracts.agencies import Agency
from contracts.alerts import AlertEvent, AlertKind
from reporting import access
from reporting.access import AlertReader
from reporting.alerts import store

router = APIRouter(tags=["alerts"])


class AlertListOut(BaseModel):
    items: list[AlertEvent]
    total: int = Field(description="How many alerts match the filters")


def alert_list(
    engine: Engine,
    *,
    agencies: list[str] | None,
    kind: str | None,
    state: str | None,
    limit: int,
    offset: int,
) -> AlertListOut:
    with engine.connect() as conn:
        rows, total = store.list_alerts(conn, agencies=agencies, kind=kind, state=state, limit=limit, offset=offset)
    return AlertListOut(items=[row.event() for row in rows], total=total)


@router.get("/alerts", response_model=AlertListOut)
def get_alerts(
    request: Request,
    principal: AlertReader,
    agency: Agency | None = None,
    kind: AlertKind | None = None,
    state: Literal["raised", "resolved"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AlertListOut:
    """Alerts raised and resolved, the latest change first (an agency's own; the secretariat's: all)."""
    engine: Engine = request.app.state.service.engine
    owner = access.alerts_owner(principal, agency.value if agency is not None else None)
    return alert_list(
        engine,
        agencies=[owner] if owner is not None else None,
        kind=kind.value if kind is not None else None,
        state=state,
        limit=limit,
        offset=offset,
    )
