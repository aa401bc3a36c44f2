"""The secretariat reviews from the dashboard's measure page, in Chromium, on a running stack (real NATS, ingest,
reporting, as `shinchoku up` starts them).

The agency mof reports on the open quarter; the secretariat signs in (the link `shinchoku up` prints), returns
the report with a comment from the measure page; the review goes on `review.mof.{measure}` from reporting with
the secretariat's own token, ingest admits it as the secretariat's (its `sub` recorded), and mof, signed in,
sees the report `returned` with the comment and no review form; a review posted from mof's session is refused
(403) and nothing is published for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from contracts.agencies import Agency
from contracts.events import Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import STATUS_STREAM
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_client.publisher import AgencyPublisher
from shinchoku_runtime.natsclient import connect
from tests.browser.conftest import run_async
from tests.faults.stack import RunningStack, running_stack, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COMMENT = "KPIの時点が異なります。同じ時点の値で再提出してください。"
REVIEWER = "sato-secretariat"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("review-ui") / "var") as running:
        yield running


def token(stack: RunningStack, principal: str, subject: str) -> str:
    return EmbeddedIssuer.load(stack.data_dir).mint(principal_named(principal, subject), ttl=timedelta(hours=1))


def sign_in(browser: Any, stack: RunningStack, principal: str, subject: str) -> tuple[Any, Page]:
    base = stack.url("reporting")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"/dashboard/signin#token={token(stack, principal, subject)}", wait_until="commit")
    page.wait_for_url(lambda url: "/signin" not in url, wait_until="load")
    return context, page


def status_messages(stack: RunningStack) -> int:
    async def count() -> int:
        nc = await connect(stack.nats_url, name="test-review-ui", user="admin", password=stack.password("admin"))
        try:
            return int((await nc.jetstream().stream_info(STATUS_STREAM.name)).state.messages)
        finally:
            await nc.close()

    return run_async(count())


def report(stack: RunningStack, quarter: FiscalQuarter, measure_id: str) -> StatusEvent:
    event = StatusEvent(
        event_id=uuid.uuid4(), measure_id=measure_id, agency=Agency.mof, fiscal_year=quarter.fiscal_year,
        quarter=quarter.quarter, status=Status.on_track, note="予定どおり", reported_at=datetime.now(TOKYO),
    )  # fmt: skip

    async def send() -> None:
        async with AgencyPublisher(stack.nats_url, agency="mof", password=stack.password("mof")) as publisher:
            await publisher.publish(event)

    run_async(send())
    return event


def lead_of(stack: RunningStack, quarter: FiscalQuarter, measure_id: str) -> dict[str, Any] | None:
    response = httpx.get(
        f"{stack.url('reporting')}/rollups/{quarter.fiscal_year}/{quarter.quarter}/measures",
        params={"agency": "mof", "limit": 1000},
        auth=stack.auth,
        timeout=10,
    )
    if response.status_code != 200:
        return None
    item = next((i for i in response.json()["items"] if i["measure_id"] == measure_id), None)
    return next((x for x in item["leads"] if x["agency"] == "mof"), None) if item else None


def test_the_secretariat_returns_a_report_from_the_measure_page(
    stack: RunningStack, browser: Any, screenshot: Any, tmp_path: Path
) -> None:
    quarter = FiscalQuarter.of_moment(datetime.now(UTC))
    measures = httpx.get(f"{stack.url('catalog')}/measures", params={"agency": "mof", "limit": 1000}, timeout=10)
    measure_id = str(measures.json()["items"][0]["id"])
    event = report(stack, quarter, measure_id)
    wait_until(
        lambda: (lead_of(stack, quarter, measure_id) or {}).get("event_id") == str(event.event_id),
        60,
        "mof's report admitted and applied",
    )
    page_path = f"/dashboard/measures/{measure_id}?fy={quarter.fiscal_year}&q={quarter.quarter}"

    # The secretariat: a review form on mof's report; a return without a comment is refused with the reason.
    context, page = sign_in(browser, stack, "secretariat", REVIEWER)
    try:
        page.goto(page_path)
        form = page.locator(f'[data-testid="review-form"][data-event-id="{event.event_id}"]')
        expect(form).to_have_count(1)
        expect(page.locator('article[data-agency="mof"] [data-testid="review"]')).to_have_attribute(
            "data-review", "pending"
        )
        form.get_by_test_id("review-return").click()
        expect(page.locator(".error-message")).to_contain_text("コメント")
        page.goto(page_path)
        form.get_by_test_id("review-comment-input").fill(COMMENT)
        form.get_by_test_id("review-return").click()
        page.wait_for_url(lambda url: f"/dashboard/measures/{measure_id}" in url)
        flash = page.get_by_test_id("review-flash")
        expect(flash).to_have_count(1)
        review_id = flash.get_attribute("data-review-id")
        assert review_id is not None
        for _ in range(100):  # "sent" when ingest and reporting took longer than the route waited: reload
            if page.locator('article[data-agency="mof"] [data-review="returned"]').count():
                break
            page.wait_for_timeout(300)
            page.reload()
        expect(page.locator('article[data-agency="mof"] [data-testid="review"]')).to_have_attribute(
            "data-review", "returned"
        )
        screenshot(page, "review-returned-secretariat")
    finally:
        context.close()

    # Ingest admitted the review as the signed-in secretariat (its token's sub), the same event as the CLI's.
    decided = httpx.get(
        f"{stack.url('ingest')}/events/{review_id}", params={"agency": "secretariat"}, auth=stack.auth, timeout=10
    ).json()
    assert decided["outcome"] == "admitted", decided
    assert decided["subject"] == f"review.mof.{measure_id}"
    assert REVIEWER in str(decided.get("principal")), decided
    lead = lead_of(stack, quarter, measure_id)
    assert lead is not None
    assert lead["review"] == "returned"

    # The agency: its report returned with the comment, no review form, and a forged review refused.
    context, page = sign_in(browser, stack, "mof", "tanaka")
    try:
        page.goto(page_path)
        article = page.locator('article[data-agency="mof"]')
        expect(article.get_by_test_id("review")).to_have_attribute("data-review", "returned")
        expect(article.get_by_test_id("review-comment")).to_have_text(COMMENT)
        expect(page.get_by_test_id("review-form")).to_have_count(0)
        screenshot(page, "review-returned-agency")
        csrf = page.locator('form.signout input[name="csrf"]').get_attribute("value")
        assert csrf
        before = status_messages(stack)
        forged = context.request.post(
            "/dashboard/review",
            form={
                "csrf": csrf, "ticket": "x", "event_id": str(event.event_id), "agency": "mof",
                "measure_id": measure_id, "decision": "accepted",
            },
            max_redirects=0,
        )  # fmt: skip
        assert forged.status == 403, forged.text()
        assert status_messages(stack) == before, "nothing published for a refused review"
    finally:
        context.close()
    lead = lead_of(stack, quarter, measure_id)
    assert lead is not None
    assert lead["review"] == "returned"
