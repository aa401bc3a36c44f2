"""Edges the fuzzer found, pinned down: out-of-range numbers in query strings are a 4xx with a message, not a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.stack import RunningStack, log_tail

HUGE = str(2**64)  # beyond a 64-bit SQL integer: SQLite cannot bind it (OverflowError), PostgreSQL's bigint neither


@pytest.mark.parametrize(
    ("service", "path", "params"),
    [
        ("catalog", "/measures", {"offset": HUGE}),
        ("ingest", "/rejections", {"offset": HUGE}),
        ("ingest", "/rejections", {"offset": HUGE, "limit": "5"}),
        ("reporting", "/rollups/2024/3/measures", {"offset": HUGE}),
        ("reporting", f"/rollups/{HUGE}/3", {}),
        ("reporting", f"/measures/1-1/history?x={HUGE}", {}),
        ("ingest", "/rejections", {"limit": HUGE}),
    ],
)
def test_huge_numbers_are_user_errors(
    hostile_stack: RunningStack, service: str, path: str, params: dict[str, str]
) -> None:
    response = httpx.get(f"{hostile_stack.url(service)}{path}", params=params, timeout=10, auth=hostile_stack.auth)
    assert response.status_code < 500, (
        f"{service} {path} {params} → {response.status_code}: {response.text[:300]}\n{log_tail(hostile_stack, service)}"
    )
    if response.status_code >= 400:
        assert response.json().get("detail"), response.text
