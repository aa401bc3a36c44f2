"""One embedded stack (started as `shinchoku up` starts it) for the ministry-client tests that report through it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from shinchoku.cli import app
from shinchoku.issuer import local_token
from tests.faults.stack import RunningStack, running_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("client-stack") / "var") as running:
        wait_for_catalog(running)
        yield running


def wait_for_catalog(stack: RunningStack, timeout: float = 60.0) -> None:
    """The catalog seeds itself from the plan at start: wait until it lists mof's measures."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(stack.url("catalog") + "/measures", params={"agency": "mof", "limit": 1}, timeout=5).json()
        if body["items"]:
            return
        assert time.monotonic() < deadline, "the catalog was not seeded in time"
        time.sleep(0.5)


def token(stack: RunningStack, principal: str) -> str:
    minted = local_token(stack.data_dir, principal)
    assert minted is not None
    return minted


def bearer(stack: RunningStack, principal: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(stack, principal)}"}


def get(stack: RunningStack, service: str, path: str, principal: str = "mof", **params: Any) -> httpx.Response:
    return httpx.get(stack.url(service) + path, params=params, headers=bearer(stack, principal), timeout=10)


def cli(stack: RunningStack, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(stack.data_dir)])


def mof_measures(stack: RunningStack) -> list[dict[str, Any]]:
    body = get(stack, "catalog", "/measures", agency="mof", limit=1000).json()
    items: list[dict[str, Any]] = body["items"]
    return items


def measure_not_led_by(stack: RunningStack, agency: str) -> str:
    body = get(stack, "catalog", "/measures", limit=1000).json()
    return str(next(m["id"] for m in body["items"] if agency not in m["lead_agencies"]))


def own_leads(stack: RunningStack, fiscal_year: int, quarter: int, agency: str = "mof") -> dict[str, dict[str, Any]]:
    """measure id → the agency's lead entry in reporting's measure list (its effective report)."""
    body = get(stack, "reporting", f"/rollups/{fiscal_year}/{quarter}/measures", agency=agency, limit=1000).json()
    return {
        item["measure_id"]: lead
        for item in body["items"]
        for lead in item["leads"]
        if lead["agency"] == agency and lead["event_id"]
    }


def wait_for_leads(
    stack: RunningStack, fiscal_year: int, quarter: int, expected: dict[str, str], timeout: float = 30.0
) -> dict[str, dict[str, Any]]:
    """Wait until reporting shows mof's status per measure as `expected` (measure id → status); the leads."""
    deadline = time.monotonic() + timeout
    while True:
        leads = own_leads(stack, fiscal_year, quarter)
        if {m: leads[m]["status"] for m in expected if m in leads} == expected:
            return leads
        assert time.monotonic() < deadline, f"reporting shows {leads} for FY{fiscal_year}Q{quarter}, not {expected}"
        time.sleep(0.3)
