"""Where the dashboard's numbers come from: the reporting service's own rollup API, called in-process.

The dashboard is a client of the binding HTTP shapes (DESIGN.md), not of the store: what a page shows is
what the API answers, so the CSV a page links to matches it by construction, and the dashboard survives any
change to the store that keeps the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import httpx
from starlette.types import ASGIApp

from contracts.periods import FiscalQuarter
from reporting.dashboard.models import MeasureHistory, MeasureInfo, MeasureRow, Rollup, items_of


class SourceError(Exception):
    """The rollup API answered with an error; carries its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RollupSource(Protocol):
    async def rollup(self, quarter: FiscalQuarter, *, as_of: datetime | None) -> Rollup: ...

    async def measures(
        self, quarter: FiscalQuarter, *, as_of: datetime | None, filters: dict[str, str]
    ) -> list[MeasureRow]: ...

    async def history(self, measure_id: str) -> MeasureHistory: ...

    async def year(self, fiscal_year: int) -> list[Rollup]: ...

    async def last_admitted(self) -> str | None:
        """When the latest report was admitted (any quarter): the cheap mark the live refresh watches."""
        ...


def _params(as_of: datetime | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(extra or {})
    if as_of is not None:
        out["as_of"] = as_of.isoformat()
    return out


class ApiSource:
    """Reads the rollup API of an ASGI app (the reporting app itself) without a network hop."""

    def __init__(self, app: ASGIApp) -> None:
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reporting.local")

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        response = await self._client.get(path, params=params)
        if response.status_code >= 400:
            try:
                message = str(response.json().get("detail", response.text))
            except ValueError:
                message = response.text
            raise SourceError(response.status_code, message)
        return response.json()

    async def rollup(self, quarter: FiscalQuarter, *, as_of: datetime | None) -> Rollup:
        body = await self._get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}", _params(as_of))
        return Rollup.model_validate(body)

    async def measures(
        self, quarter: FiscalQuarter, *, as_of: datetime | None, filters: dict[str, str]
    ) -> list[MeasureRow]:
        params = _params(as_of, {**filters, "limit": "1000"})
        body = await self._get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}/measures", params)
        return [MeasureRow.model_validate(item) for item in items_of(body)]

    async def history(self, measure_id: str) -> MeasureHistory:
        body = await self._get(f"/measures/{measure_id}/history", {})
        if isinstance(body, list):
            return MeasureHistory.model_validate({"quarters": body})
        if isinstance(body, dict) and "items" in body and "quarters" not in body:
            return MeasureHistory.model_validate({**body, "quarters": body["items"]})
        return MeasureHistory.model_validate(body)

    async def measure(self, measure_id: str) -> MeasureInfo | None:
        return (await self.history(measure_id)).measure

    async def year(self, fiscal_year: int) -> list[Rollup]:
        body = await self._get(f"/rollups/{fiscal_year}", {})
        quarters = body.get("quarters", []) if isinstance(body, dict) else body
        return [Rollup.model_validate(q) for q in quarters if isinstance(q, dict)]

    async def last_admitted(self) -> str | None:
        # /healthz answers 503 with the same body when a dependency is down; the mark is still good.
        response = await self._client.get("/healthz")
        try:
            body = response.json()
        except ValueError:
            return None
        value = body.get("last_admitted_at") if isinstance(body, dict) else None
        return str(value) if value is not None else None

    async def aclose(self) -> None:
        await self._client.aclose()
