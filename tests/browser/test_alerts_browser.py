"""The alert panel and a rating from a baseline, in Debian's Chromium, against the demo's reports (DEMO_NOW).

What the pages must show is computed here from the admitted events and the plan, not read back from the service:
the reports each agency still owes (report_missing after FY2024Q1–Q3's deadlines), and 3-14's rating counted
from its baseline (35.4 % at the end of FY2021 → 45.4 % by FY2025).
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from contracts.periods import FiscalQuarter

pytestmark = pytest.mark.browser

QUARTERS = (FiscalQuarter(2024, 1), FiscalQuarter(2024, 2), FiscalQuarter(2024, 3))


def expected_missing(stack: Any) -> dict[str, set[str]]:
    """Per agency, the alert ids of the reports it owes: a lead with no admitted report for a quarter whose
    deadline had passed on the demo's day."""
    reported = {(a.event.measure_id, a.event.agency.value, a.event.fiscal_year, a.event.quarter) for a in stack.events}
    out: dict[str, set[str]] = {}
    for m in stack.measures:
        for agency in m.lead_agencies:
            for q in QUARTERS:
                if (m.id, agency.value, q.fiscal_year, q.quarter) not in reported:
                    out.setdefault(agency.value, set()).add(
                        f"report_missing.{agency.value}.{m.id}.{q.fiscal_year}.{q.quarter}.-"
                    )
    return out


def raised(stack: Any, **params: str) -> dict[str, Any]:
    body: dict[str, Any] = stack.get("/alerts", state="raised", limit="1000", **params).json()
    return body


def test_the_alert_panel_shows_what_each_agency_needs_to_do(page: Page, stack: Any, screenshot: Any) -> None:
    missing = expected_missing(stack)
    agency = max(missing, key=lambda a: len(missing[a]))
    deadline = time.monotonic() + 60
    while True:  # the service evaluates once it has caught up with the demo's reports
        listed = {a["alert_id"] for a in raised(stack, agency=agency, kind="report_missing")["items"]}
        if listed == missing[agency] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert listed == missing[agency]

    kinds = {
        kind: raised(stack, kind=kind)["total"]
        for kind in (
            "report_due",
            "report_missing",
            "returned",
            "target_overdue",
            "stale",
            "co_lead_disagreement",
            "worsened",
            "kpi_jump",
        )
    }
    print(f"\ndemo alerts raised on {agency=}: {len(missing[agency])} missing; all agencies by kind: {kinds}")  # noqa: T201
    assert sum(1 for n in kinds.values() if n) >= 6, kinds  # not returned (no reviews), not due (Q4 open)

    page.goto("/dashboard")
    page.get_by_test_id("alerts-link").click()
    page.wait_for_url("**/dashboard/alerts")
    page.select_option("#agency", agency)
    page.get_by_role("button", name="表示").click()  # (the other button is the header's sign-out)
    page.wait_for_url(f"**/dashboard/alerts?agency={agency}")
    rows = page.locator('[data-testid="open-alerts"] tbody tr[data-kind="report_missing"]')
    shown = {str(r.get_attribute("data-alert-id")) for r in rows.all()}
    assert shown == missing[agency]
    total = raised(stack, agency=agency)["total"]
    assert page.get_by_test_id("open-total").inner_text() == str(total)
    first = rows.first
    expect(first).to_contain_text("至急報告してください")
    screenshot(page, "alerts-panel")

    page.get_by_role("link", name="English").click()
    expect(page.locator('[data-testid="open-alerts"] tbody tr[data-kind="report_missing"]').first).to_contain_text(
        "Send it now"
    )


def test_a_rating_counts_from_the_baseline(page: Page, stack: Any, screenshot: Any) -> None:
    observed = [
        (k.as_of, a.event.reported_at, k.value)
        for a in stack.events
        if a.event.measure_id == "3-14" and (a.event.fiscal_year, a.event.quarter) <= (2024, 3)
        for k in a.event.kpis
        if k.target == 0
    ]
    assert observed, "the demo reports no KPI for 3-14"
    as_of, _, value = max(observed)
    start, due, base, goal = date(2022, 3, 31), date(2026, 3, 31), 35.4, 45.4
    progress = (value - base) / (goal - base)
    elapsed = (as_of - start).days / (due - start).days
    rating = "A" if value >= goal or progress >= elapsed else "B"

    page.goto("/dashboard/measures/3-14?fy=2024&q=3")
    row = page.locator('table.targets tr[data-index="0"]')
    expect(row.get_by_test_id("baseline")).to_contain_text("35.4")
    expect(row.get_by_test_id("baseline")).to_contain_text("2022-03-31")
    expect(row.locator(f".badge.rating-{rating}")).to_have_count(1)
    expect(row).to_contain_text(f"達成度 {round(progress * 100)}%")
    screenshot(page, "rating-from-baseline")
