"""Signing in to the dashboard in Chromium, through an OpenID Connect provider the test starts.

`python -m reporting` runs as a deployment would configure it (SHINCHOKU_AUTH_MODE=oidc, the provider's
issuer; the dashboard's client id): its tokens are verified through the provider's discovery and JWKS, the
browser goes through the provider's sign-in page (authorization-code flow with PKCE) and comes back signed
in. The provider is tests/security/oidc_provider.py (authlib's authorization server), on its own port.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from catalog.plan import bundled_plan_text, parse_plan
from contracts.agencies import Agency
from contracts.events import Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter
from shinchoku_runtime.natsserver import NatsServer, free_port
from tests.browser.conftest import Stack, _seed_catalog, admitted, run_async
from tests.security.oidc_provider import CLIENT_ID, REDIRECT_URI, RunningProvider, running_provider

pytestmark = pytest.mark.browser

Q3 = FiscalQuarter(2024, 3)
#: Displays as "…完了済 100%" in a browser that follows the override: the stored text says otherwise.
DISGUISED = "進捗 50%\u202e%001 済了完"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, RunningProvider, str]]:
    directory = tmp_path_factory.mktemp("signin")
    measures = parse_plan(bundled_plan_text())
    measure = next(m for m in measures if m.lead_agencies == [Agency.mof])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    nats = NatsServer.create(directory / "nats")
    nats.start()
    stack = Stack(directory=directory, nats=nats, base_url=base, measures=measures, events=[])
    with running_provider(redirect_uris=(f"{base}/dashboard/auth/callback", REDIRECT_URI)) as idp:
        try:
            run_async(_seed_catalog(nats, measures))
            reported = Q3.end_at + timedelta(days=3)
            event = StatusEvent(
                event_id=uuid.uuid4(),
                measure_id=measure.id,
                agency=Agency.mof,
                fiscal_year=Q3.fiscal_year,
                quarter=Q3.quarter,
                status=Status.on_track,
                note=DISGUISED,
                reporter="田中 花子",
                reported_at=reported.astimezone(TOKYO),
            )
            stack.publish([admitted(event)])
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("SHINCHOKU_")},
                "SHINCHOKU_REPORTING_NATS_URL": nats.plain_url,
                "SHINCHOKU_REPORTING_NATS_USER": "reporting",
                "SHINCHOKU_REPORTING_NATS_PASSWORD": nats.passwords["reporting"],
                "SHINCHOKU_REPORTING_DATA_DIR": str(directory / "data"),
                "SHINCHOKU_REPORTING_PORT": str(port),
                "SHINCHOKU_REPORTING_DASHBOARD_OIDC_CLIENT_ID": CLIENT_ID,
                "SHINCHOKU_REPORTING_DASHBOARD_OIDC_SCOPE": "openid profile shinchoku",
                "SHINCHOKU_AUTH_MODE": "oidc",
                "SHINCHOKU_AUTH_ISSUER": idp.issuer,
                "OTEL_SDK_DISABLED": "true",
            }
            with stack.log_path.open("ab") as log:
                stack.process = subprocess.Popen(
                    [sys.executable, "-m", "reporting"], cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            token = idp.sign_in("sato")["access_token"]
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    answer = httpx.get(
                        f"{base}/rollups/2024/3", headers={"Authorization": f"Bearer {token}"}, timeout=5
                    )
                    if answer.status_code == 200 and answer.json()["reported"] == 1:
                        break
                assert time.monotonic() < deadline, f"reporting never showed the report\n{stack.log_tail()}"
                time.sleep(0.3)
            yield stack, idp, measure.id
        finally:
            if stack.process is not None and stack.process.poll() is None:
                stack.process.terminate()
                stack.process.wait(10)
            nats.stop()


@pytest.fixture
def browser_page(browser: Any, deployment: tuple[Stack, RunningProvider, str]) -> Iterator[Page]:
    stack, _, _ = deployment
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=stack.base_url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


def sign_in_at_the_provider(page: Page, user: str) -> None:
    page.goto(f"/dashboard?fy={Q3.fiscal_year}&q={Q3.quarter}")
    expect(page.get_by_role("alert")).to_be_visible()  # the open quarter is not the public's
    page.get_by_role("link", name="サインイン").last.click()
    page.locator("#signin-provider").click()
    page.wait_for_url(lambda url: "/authorize" in url)  # the provider's own page
    page.select_option("select[name=username]", user)
    page.get_by_role("button", name="Sign in").click()


def test_signing_in_through_the_provider_in_chromium(
    browser_page: Page, deployment: tuple[Stack, RunningProvider, str]
) -> None:
    stack, _, measure_id = deployment
    page = browser_page
    first = page.goto(f"{stack.base_url}/dashboard?fy=2024&q=3")
    assert first is not None
    assert first.status == 401
    assert "script-src 'self'" in first.headers["content-security-policy"]

    sign_in_at_the_provider(page, "sato")
    page.wait_for_url(lambda url: url.startswith(stack.base_url + "/dashboard") and "/auth/" not in url)
    expect(page.locator(".viewer")).to_contain_text("secretariat")
    expect(page.locator(".viewer")).to_contain_text("sato")
    assert page.get_by_test_id("measures-total").inner_text() == "320"

    session = next(c for c in page.context.cookies() if c["name"] == "shinchoku_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["secure"] is False, "served over plain http on loopback here (Secure under TLS)"
    assert not [c for c in page.context.cookies() if c["name"] == "shinchoku_oidc"], "the flow's cookie is gone"
    # The secretariat's access token is kept for its reviews from the measure page: sent back to that form only.
    kept = next(c for c in page.context.cookies() if c["name"] == "shinchoku_review")
    assert (kept["path"], kept["httpOnly"], kept["sameSite"]) == ("/dashboard/review", True, "Strict")

    # The dashboard's CSV links read the API with the session (no token in the browser).
    export = page.request.get(f"{stack.base_url}/rollups/2024/3/measures?format=csv&agency=mof")
    assert export.status == 200
    assert "⟦" not in export.text(), "exports keep the stored text as it is"
    assert "\u202e" in export.text()

    # The note that would display as something else shows its override as a visible mark.
    page.goto(f"/dashboard/measures/{measure_id}?fy=2024&q=3")
    note = page.locator("dd.note").first
    expect(note).to_contain_text("⟦U+202E⟧")
    assert "\u202e" not in note.inner_text()
    expect(page.get_by_text("田中 花子")).to_be_visible()
    expect(page.get_by_test_id("review-form")).to_have_count(1)

    page.get_by_role("button", name="サインアウト").click()
    expect(page.get_by_role("link", name="サインイン").first).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] in ("shinchoku_session", "shinchoku_review")]


def test_an_agency_account_signs_in_as_its_agency_and_an_account_without_a_role_does_not(
    browser_page: Page, deployment: tuple[Stack, RunningProvider, str]
) -> None:
    stack, _, _ = deployment
    page = browser_page
    sign_in_at_the_provider(page, "tanaka")
    page.wait_for_url(lambda url: url.startswith(stack.base_url + "/dashboard") and "/auth/" not in url)
    expect(page.locator(".viewer")).to_contain_text("agency mof")

    page.context.clear_cookies()
    sign_in_at_the_provider(page, "nobody")
    expect(page.get_by_role("alert")).to_contain_text("no Shinchoku role")
    assert not [c for c in page.context.cookies() if c["name"] == "shinchoku_session"]


def test_an_id_token_with_another_nonce_signs_nobody_in(
    browser_page: Page, deployment: tuple[Stack, RunningProvider, str]
) -> None:
    """The ID token must carry the nonce this sign-in sent (OIDC Core 3.1.3.7): one minted for another sign-in
    (replayed, or injected with a stolen code) is refused with a 401 and says why, and no session is set."""
    stack, idp, _ = deployment
    page = browser_page
    idp.provider.id_token_nonce = "a-nonce-of-another-sign-in"
    try:
        with page.expect_response(lambda r: "/dashboard/auth/callback" in r.url) as callback:
            sign_in_at_the_provider(page, "sato")
        assert callback.value.status == 401
        expect(page.get_by_role("alert")).to_contain_text("nonce")
        assert not [c for c in page.context.cookies() if c["name"] == "shinchoku_session"]
    finally:
        idp.provider.id_token_nonce = None
    # The control: the same person with the right nonce signs in.
    page.context.clear_cookies()
    sign_in_at_the_provider(page, "sato")
    page.wait_for_url(lambda url: url.startswith(stack.base_url + "/dashboard") and "/auth/" not in url)
    expect(page.locator(".viewer")).to_contain_text("secretariat")


def test_an_id_token_naming_another_person_signs_nobody_in(
    browser_page: Page, deployment: tuple[Stack, RunningProvider, str]
) -> None:
    """The ID token says who signed in; the access token says what they may do. When they name different people
    (`sub`), neither can stand for the sign-in: a 401 that says why, and no session."""
    stack, idp, _ = deployment
    page = browser_page
    idp.provider.id_token_subject = "someone-else"
    try:
        with page.expect_response(lambda r: "/dashboard/auth/callback" in r.url) as callback:
            sign_in_at_the_provider(page, "sato")
        assert callback.value.status == 401
        expect(page.get_by_role("alert")).to_contain_text("different people")
        assert not [c for c in page.context.cookies() if c["name"] == "shinchoku_session"]
    finally:
        idp.provider.id_token_subject = None
    page.context.clear_cookies()
    sign_in_at_the_provider(page, "sato")
    page.wait_for_url(lambda url: url.startswith(stack.base_url + "/dashboard") and "/auth/" not in url)
    expect(page.locator(".viewer")).to_contain_text("secretariat")
