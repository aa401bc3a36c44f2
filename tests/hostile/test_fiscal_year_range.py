"""Every fiscal year the v1 contract admits (1900–9998) can be served by reporting.

A ministry's report on FY1999 (a past quarter, otherwise valid) is admitted by ingest and stored by reporting,
so `GET /rollups/1999/{q}` must answer it; reporting's range (reporting.queries.MIN_FISCAL_YEAR /
MAX_FISCAL_YEAR) follows the contract's.
"""

from __future__ import annotations

import httpx

from contracts.events import StatusEvent
from tests.faults.stack import RunningStack


def contract_range() -> tuple[int, int]:
    field = StatusEvent.model_fields["fiscal_year"]
    low = next(m.ge for m in field.metadata if getattr(m, "ge", None) is not None)
    high = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    return int(low), int(high)


def test_every_admissible_fiscal_year_can_be_served(hostile_stack: RunningStack) -> None:
    low, high = contract_range()
    current = 2024
    for fiscal_year in (low, 1999, current, 2101, high):
        response = httpx.get(
            f"{hostile_stack.url('reporting')}/rollups/{fiscal_year}/1", timeout=10, auth=hostile_stack.auth
        )
        assert response.status_code == 200, f"FY{fiscal_year}: {response.status_code} {response.text[:200]}"
