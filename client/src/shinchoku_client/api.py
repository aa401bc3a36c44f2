"""Reading from the platform over HTTP as one agency, with its bearer token: ingest's decision on each report,
the agency's alerts, and what a report template needs (its measures, last quarter's standing).

    async with AgencyApi(agency="mof", token=token, ingest_url=..., reporting_url=..., catalog_url=...) as api:
        decision = await api.wait_for_decision(event_id)
        if not decision.admitted:
            print(decision.reason, decision.message)
        for alert in await api.alerts(state="raised"):
            print(alert.message_ja)

Every request carries `Authorization: Bearer <token>` (DESIGN "Principals and access": an agency reads its
own events and alerts only). A token comes from the platform's identity provider, or in the embedded
default from `shinchoku token AGENCY`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict

from contracts.agencies import Agency
from contracts.catalog import Measure

DEFAULT_CATALOG_URL = "http://127.0.0.1:8001"
DEFAULT_INGEST_URL = "http://127.0.0.1:8002"
DEFAULT_REPORTING_URL = "http://127.0.0.1:8003"
#: Page size for lists (the services' maximum).
PAGE = 1000


class ApiError(Exception):
    """The platform answered with an error (the message says what it said), or did not answer."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class NotServed(ApiError):
    """The service does not serve this route (yet): an older deployment."""


class Decision(BaseModel):
    """Ingest's decision on one report (`GET /events/{id}`): the binding fields, and whatever else it says."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: str
    outcome: Literal["admitted", "rejected"]
    reason: str | None = None
    message: str | None = None
    subject: str | None = None
    received_at: str | None = None
    trace_id: str | None = None
    attempts: list[dict[str, Any]] = []

    @property
    def admitted(self) -> bool:
        return self.outcome == "admitted"


class Alert(BaseModel):
    """An alert on reporting's `GET /alerts` (DESIGN "Alerts"): nulls where a field does not apply."""

    model_config = ConfigDict(extra="allow", frozen=True)

    alert_id: str
    kind: str
    state: str
    agency: str | None = None
    measure_id: str | None = None
    fiscal_year: int | None = None
    quarter: int | None = None
    target_index: int | None = None
    raised_at: str | None = None
    resolved_at: str | None = None
    message_ja: str | None = None
    message_en: str | None = None
    refs: list[Any] = []


def detail(response: httpx.Response) -> str:
    """The `{"detail": …}` of an error answer, or its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return response.text.strip()


class AgencyApi:
    """The platform's HTTP API as one agency (an async context manager, or call `aclose()`)."""

    def __init__(
        self,
        *,
        agency: Agency | str,
        token: str | None,
        catalog_url: str = DEFAULT_CATALOG_URL,
        ingest_url: str = DEFAULT_INGEST_URL,
        reporting_url: str = DEFAULT_REPORTING_URL,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.agency = Agency(agency)
        self.urls = {
            "catalog": catalog_url.rstrip("/"),
            "ingest": ingest_url.rstrip("/"),
            "reporting": reporting_url.rstrip("/"),
        }
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, service: str, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """GET a service's path with the token; ApiError when nothing answers there."""
        url = self.urls[service] + path
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            return await self._http.get(url, params=query)
        except httpx.TransportError as e:
            raise ApiError(f"the {service} service does not answer at {url} ({e})") from None

    async def _json(self, service: str, path: str, params: dict[str, Any] | None = None) -> Any:
        response = await self.get(service, path, params)
        if response.status_code != 200:
            raise ApiError(
                f"{service} answered {response.status_code} for {path}: {detail(response)}", response.status_code
            )
        return response.json()

    # --- decisions ---

    async def decision(self, event_id: object) -> Decision | None:
        """Ingest's decision on one of this agency's reports, or None while it has none."""
        response = await self.get("ingest", f"/events/{event_id}", {"agency": self.agency.value})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiError(
                f"ingest answered {response.status_code} for event {event_id}: {detail(response)}", response.status_code
            )
        return Decision.model_validate(response.json())

    async def wait_for_decision(self, event_id: object, *, timeout: float = 30.0, interval: float = 0.2) -> Decision:
        """Ingest's decision on a report just published; ApiError when none comes within `timeout` seconds."""
        decided = await self.wait_for_decisions([event_id], timeout=timeout, interval=interval)
        return decided[str(event_id)]

    async def wait_for_decisions(
        self, event_ids: Iterable[object], *, timeout: float = 60.0, interval: float = 0.2, concurrency: int = 16
    ) -> dict[str, Decision]:
        """Ingest's decision on each report (by event id); ApiError naming how many are still undecided after
        `timeout` seconds."""
        pending = list(dict.fromkeys(str(e) for e in event_ids))
        decided: dict[str, Decision] = {}
        gate = asyncio.Semaphore(concurrency)
        deadline = time.monotonic() + timeout

        async def ask(event_id: str) -> None:
            async with gate:
                decision = await self.decision(event_id)
            if decision is not None:
                decided[event_id] = decision

        while True:
            await asyncio.gather(*(ask(e) for e in pending))
            pending = [e for e in pending if e not in decided]
            if not pending:
                return decided
            if time.monotonic() >= deadline:
                raise ApiError(
                    f"no decision from ingest within {timeout:.0f} s for {len(pending)} report(s) "
                    f"(first: {pending[0]}); ask again later: GET /events/{{id}}"
                )
            await asyncio.sleep(interval)

    # --- alerts ---

    async def alerts(
        self, *, kind: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[Alert]:
        """This agency's alerts (`GET /alerts?agency=`), newest as reporting orders them; NotServed when the
        reporting service does not serve alerts yet."""
        items: list[Alert] = []
        offset = 0
        while True:
            size = PAGE if limit is None else min(PAGE, limit - len(items))
            params = {"agency": self.agency.value, "kind": kind, "state": state, "limit": size, "offset": offset}
            response = await self.get("reporting", "/alerts", params)
            if response.status_code == 404:
                raise NotServed(
                    f"the reporting service at {self.urls['reporting']} does not serve /alerts (yet): "
                    f"{detail(response)}",
                    404,
                )
            if response.status_code != 200:
                raise ApiError(
                    f"reporting answered {response.status_code} for /alerts: {detail(response)}", response.status_code
                )
            body = response.json()
            page = body["items"] if isinstance(body, dict) else body
            items += [Alert.model_validate(a) for a in page]
            offset += len(page)
            total = body.get("total") if isinstance(body, dict) else None
            if not page or total is None or offset >= total or (limit is not None and len(items) >= limit):
                return items

    # --- what a template needs ---

    async def measures(self) -> list[Measure]:
        """The measures this agency leads, as the catalog states them, in the plan's order."""
        out: list[Measure] = []
        while True:
            params = {"agency": self.agency.value, "limit": PAGE, "offset": len(out)}
            body = await self._json("catalog", "/measures", params)
            out += [Measure.model_validate(m) for m in body["items"]]
            if not body["items"] or len(out) >= body["total"]:
                return out

    async def measure(self, measure_id: str) -> Measure | None:
        """One measure from the catalog, or None when it has no such measure."""
        response = await self.get("catalog", f"/measures/{measure_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiError(
                f"catalog answered {response.status_code} for {measure_id}: {detail(response)}", response.status_code
            )
        return Measure.model_validate(response.json())

    async def catalog_measures(self, ids: Sequence[str]) -> dict[str, Measure | None]:
        """Each measure of `ids` from the catalog (None for one it does not have)."""
        unique = sorted(set(ids))
        found = await asyncio.gather(*(self.measure(m) for m in unique))
        return dict(zip(unique, found, strict=True))

    async def own_standing(self, fiscal_year: int, quarter: int) -> dict[str, dict[str, Any]]:
        """This agency's own effective report per measure in a quarter (reporting's measure list, filtered by
        agency): measure id → the lead entry (`status`, `progress`, `reported_at`, …); measures it did not
        report on are absent."""
        out: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            params = {"agency": self.agency.value, "limit": PAGE, "offset": offset}
            body = await self._json("reporting", f"/rollups/{fiscal_year}/{quarter}/measures", params)
            for item in body["items"]:
                for lead in item.get("leads", []):
                    if lead.get("agency") == self.agency.value and lead.get("event_id"):
                        out[item["measure_id"]] = lead
            offset += len(body["items"])
            if not body["items"] or offset >= body["total"]:
                return out
