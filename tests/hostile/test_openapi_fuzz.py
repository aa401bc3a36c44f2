"""schemathesis against each service's OpenAPI document, over real HTTP on the running stack: never a 5xx.

For every operation of catalog, ingest and reporting, schemathesis generates requests that fit the document
(positive) and requests that break it (negative: wrong types, out-of-range values, unknown enum members, …). A
bounded number of examples per service keeps this quick. Every answer must be below 500, and every 4xx must say
what is wrong (`detail`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok

from tests.faults.stack import RunningStack

EXAMPLES_PER_SERVICE = 100


@pytest.mark.parametrize("service", ["catalog", "ingest", "reporting"])
def test_no_5xx_for_generated_requests(
    hostile_stack: RunningStack, service: str, hostile_report: Callable[[str], None]
) -> None:
    base_url = hostile_stack.url(service)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"{service}'s OpenAPI document has an invalid operation: {result}"
        operations.append(result.ok())
    assert operations, f"{service} documents no operation"
    strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode])
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES_PER_SERVICE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def call(case: Case[Any]) -> None:
        response = case.call(base_url=base_url, timeout=30)
        outcomes[f"{response.status_code}"] += 1
        where = f"{case.method} {case.formatted_path} query={case.query!r}"
        if response.status_code >= 500:
            failures.append(f"{where} → {response.status_code}: {response.text[:300]}")
        elif response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = None
            if not detail:
                failures.append(f"{where} → {response.status_code} without a detail: {response.text[:200]}")

    call()
    hostile_report(
        f"schemathesis {service}: {sum(outcomes.values())} requests on {len(operations)} operations → "
        + ", ".join(f"HTTP {k} ×{v}" for k, v in sorted(outcomes.items()))
    )
    assert not failures, "\n".join(sorted(set(failures))[:20])
