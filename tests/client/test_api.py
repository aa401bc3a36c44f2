"""The client's HTTP reads: every request carries the agency's bearer token and its agency, alerts follow
DESIGN's shape page by page, and a reporting service without `/alerts` (an older deployment) says so."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from shinchoku_client import AgencyApi, NotServed

ALERT = {
    "alert_id": "a-1", "kind": "report_due", "state": "raised", "agency": "mof", "measure_id": "1-25",
    "fiscal_year": 2025, "quarter": 1, "target_index": None, "raised_at": "2025-07-17T00:00:00+09:00",
    "resolved_at": None, "message_ja": "報告期限まで14日です", "message_en": "Report due in 14 days", "refs": [],
}  # fmt: skip


def api_with(handler: Any) -> AgencyApi:
    return AgencyApi(agency="mof", token="t0ken", transport=httpx.MockTransport(handler))


def test_alerts_are_read_page_by_page_with_the_agency_and_its_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        offset = int(request.url.params["offset"])
        items = [{**ALERT, "alert_id": f"a-{offset + i}"} for i in range(min(2, 3 - offset))]
        return httpx.Response(200, json={"items": items, "total": 3, "limit": 2, "offset": offset})

    async def read() -> list[str]:
        async with api_with(handler) as api:
            api.urls["reporting"] = "http://reporting"
            return [a.alert_id for a in await api.alerts(state="raised")]

    assert asyncio.run(read()) == ["a-0", "a-1", "a-2"]
    assert {r.headers["Authorization"] for r in seen} == {"Bearer t0ken"}
    assert {(r.url.path, r.url.params["agency"], r.url.params["state"]) for r in seen} == {("/alerts", "mof", "raised")}
    assert "kind" not in seen[0].url.params


def test_a_reporting_service_without_alerts_says_so() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})

    async def read() -> None:
        async with api_with(handler) as api:
            await api.alerts()

    with pytest.raises(NotServed, match=r"does not serve /alerts \(yet\)"):
        asyncio.run(read())


def test_a_decision_is_asked_for_as_the_agency() -> None:
    answers = iter([httpx.Response(404, json={"detail": "no decision yet"})] * 2 + [
        httpx.Response(200, json={"event_id": "e-1", "outcome": "rejected", "reason": "not_lead", "message": "主担当外",
                                  "subject": "status.mof.2-3", "received_at": "2025-01-01T00:00:00Z", "trace_id": "t",
                                  "attempts": [], "admitted_at": None})
    ])  # fmt: skip
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    async def wait() -> Any:
        async with api_with(handler) as api:
            return await api.wait_for_decision("e-1", timeout=5, interval=0.01)

    decision = asyncio.run(wait())
    assert (decision.admitted, decision.reason) == (False, "not_lead")
    assert decision.model_extra == {"admitted_at": None}  # what ingest adds beyond the binding fields is kept
    assert [(r.url.path, r.url.params["agency"]) for r in seen] == [("/events/e-1", "mof")] * 3
    assert json.loads(decision.model_dump_json())["message"] == "主担当外"
