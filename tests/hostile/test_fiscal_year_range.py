"""Known inconsistency, pinned as a strict xfail: the contract admits fiscal years 1900–9998, reporting serves 2000–2100.

A ministry's report on FY1999 (a past quarter, otherwise valid) is admitted by ingest and stored by reporting,
but `GET /rollups/1999/{q}` answers 400, so the report can never be seen. Either the contract's range or
reporting's (reporting.queries.MIN_FISCAL_YEAR / MAX_FISCAL_YEAR) should change; when they agree this test
passes and its xfail marker must go.
"""

from __future__ import annotations

import httpx
import pytest

from contracts.events import StatusEvent
from tests.faults.stack import RunningStack


def contract_range() -> tuple[int, int]:
    field = StatusEvent.model_fields["fiscal_year"]
    low = next(m.ge for m in field.metadata if getattr(m, "ge", None) is not None)
    high = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    return int(low), int(high)


@pytest.mark.xfail(strict=True, reason="reporting serves FY2000–2100 while the v1 contract admits FY1900–9998")
def test_every_admissible_fiscal_year_can_be_served(hostile_stack: RunningStack) -> None:
    low, high = contract_range()
    current = 2024
    for fiscal_year in (low, 1999, current, 2101, high):
        response = httpx.get(f"{hostile_stack.url('reporting')}/rollups/{fiscal_year}/1", timeout=10)
        assert response.status_code == 200, f"FY{fiscal_year}: {response.status_code} {response.text[:200]}"
