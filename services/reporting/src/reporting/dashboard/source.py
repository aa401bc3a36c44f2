"""Where the dashboard's numbers come from: the reporting service's own rollup API, called in-process.

The dashboard is a client of the binding HTTP shapes (DESIGN.md), not of the store: what a page shows is
what the API answers, so the CSV a page links to matches it by construction, and the dashboard survives any
change to the store that keeps the API.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from starlette.types import ASGIApp, Message

from contracts.periods import FiscalQuarter
from reporting import access
from reporting.dashboard.models import MeasureHistory, MeasureInfo, MeasureRow, Revision, Rollup, items_of
from shinchoku_runtime.auth import PRINCIPAL_SCOPE_KEY, Principal


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

    async def revisions(self, quarter: FiscalQuarter) -> list[Revision]: ...

    async def published(self, quarter: FiscalQuarter, revision: int) -> Rollup: ...

    async def year(self, fiscal_year: int) -> list[Rollup]: ...

    async def last_admitted(self) -> str | None:
        """When the latest report was admitted (any quarter): the cheap mark the live refresh watches."""
        ...


def _params(as_of: datetime | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(extra or {})
    if as_of is not None:
        out["as_of"] = as_of.isoformat()
    return out


async def asgi_get(
    app: ASGIApp, path: str, params: dict[str, str], principal: Principal | None = None
) -> tuple[int, bytes]:
    """One GET through an ASGI app in this process: the app's own routes, middleware and error handlers, as
    `principal` (the public when None)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(params).encode(),
        "headers": [(b"host", b"reporting.local"), (b"accept", b"application/json")],
        "client": ("127.0.0.1", 0),
        "server": ("reporting.local", 80),
        PRINCIPAL_SCOPE_KEY: principal or Principal.public(),
    }
    status = 500
    body = bytearray()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, bytes(body)


class ApiSource:
    """Reads the rollup API of an ASGI app (the reporting app itself) without a network hop, as `principal`."""

    def __init__(self, app: ASGIApp, principal: Principal | None = None) -> None:
        self._app = app
        self.principal = principal or Principal.public()

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        status, body = await asgi_get(self._app, path, params, self.principal)
        try:
            document = json.loads(body) if body else None
        except ValueError:
            document = None
        if status >= 400:
            detail = document.get("detail") if isinstance(document, dict) else None
            raise SourceError(status, str(detail) if detail else body.decode("utf-8", "replace")[:500])
        return document

    async def rollup(self, quarter: FiscalQuarter, *, as_of: datetime | None) -> Rollup:
        body = await self._get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}", _params(as_of))
        return Rollup.model_validate(body)

    async def measures(
        self, quarter: FiscalQuarter, *, as_of: datetime | None, filters: dict[str, str]
    ) -> list[MeasureRow]:
        params = _params(as_of, {**filters, "limit": "1000"})
        body = await self._get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}/measures", params)
        return [MeasureRow.model_validate(item) for item in items_of(body)]

    async def revisions(self, quarter: FiscalQuarter) -> list[Revision]:
        body = await self._get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}/revisions", {})
        return [Revision.model_validate(item) for item in items_of(body)]

    async def published(self, quarter: FiscalQuarter, revision: int) -> Rollup:
        """A closed quarter's published revision: the document itself, not the live rollup."""
        body = await self._get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}", {"revision": str(revision)})
        return Rollup.model_validate(body)

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
        if access.public_view(self.principal):
            # The public reads closed quarters only: an admission (most likely to an open quarter) is none of
            # its business; a restatement of a closed quarter shows in that quarter's rollup.
            return None
        # /healthz answers 503 with the same body when a dependency is down; the mark is still good.
        _status, body = await asgi_get(self._app, "/healthz", {}, self.principal)
        try:
            document = json.loads(body)
        except ValueError:
            return None
        value = document.get("last_admitted_at") if isinstance(document, dict) else None
        return str(value) if value is not None else None
