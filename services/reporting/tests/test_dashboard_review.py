"""The measure page's review form, in process: who may post it, the form's checks, and the token it is sent with.

The reporting app is built as `python -m reporting` builds it, its store created but its lifespan not run (no
NATS): every answer checked here comes before the publish. The publish itself, ingest's admission and the
agency's view of a returned report are driven in Chromium on a running stack in
tests/browser/test_review_browser.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from contracts.cycle import ReviewEvent
from reporting import repository
from reporting.app import create_app
from reporting.config import ReportingSettings
from reporting.dashboard.review import FLASH_COOKIE, FLASH_PURPOSE, new_ticket
from reporting.dashboard.session import CSRF_COOKIE, REVIEW_PATH, REVIEW_TOKEN_COOKIE, SESSION_COOKIE
from shinchoku.issuer import EmbeddedIssuer, principal_named

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def issuer(tmp_path: Path) -> EmbeddedIssuer:
    return EmbeddedIssuer.prepare(tmp_path)


@pytest.fixture
async def app(tmp_path: Path, issuer: EmbeddedIssuer) -> FastAPI:
    settings = ReportingSettings(
        _env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}", nats_url="nats://x:1"
    )
    app: FastAPI = create_app(settings)
    repository.create_store(app.state.service.engine)
    return app


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://dashboard.test") as client:
        yield client


async def sign_in(browser: httpx.AsyncClient, token: str) -> httpx.Response:
    page = await browser.get("/dashboard/signin")
    found = CSRF_FIELD.search(page.text)
    assert found is not None
    answer = await browser.post("/dashboard/signin", data={"csrf": found.group(1), "token": token})
    assert answer.status_code == 303, answer.text
    return answer


def form(browser: httpx.AsyncClient, app: FastAPI | None = None, **changes: str) -> dict[str, str]:
    values = {
        "csrf": browser.cookies.get(CSRF_COOKIE) or "",
        "ticket": new_ticket(app.state.dashboard_sessions) if app is not None else "",
        "event_id": str(uuid.uuid4()),
        "agency": "mof",
        "measure_id": "1-25",
        "decision": "returned",
        "comment": "KPIの時点が異なります",
    }
    return {**values, **changes}


async def test_the_secretariat_keeps_its_token_for_reviews_only(
    browser: httpx.AsyncClient, issuer: EmbeddedIssuer
) -> None:
    token = issuer.mint(principal_named("secretariat", "sato"))
    answer = await sign_in(browser, token)
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(REVIEW_TOKEN_COOKIE + "="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", f"path={REVIEW_PATH}"} <= flags
    assert token not in cookie, "kept encrypted, not as it was given"
    assert token.split(".")[1] not in cookie, "not even its claims"
    # Sent back to the review route only: no page of the dashboard receives it.
    assert [c.path for c in browser.cookies.jar if c.name == REVIEW_TOKEN_COOKIE] == [REVIEW_PATH]


async def test_an_agency_keeps_no_token(browser: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    await sign_in(browser, issuer.mint(principal_named("mof", "tanaka")))
    assert browser.cookies.get(SESSION_COOKIE)
    assert REVIEW_TOKEN_COOKIE not in {c.name for c in browser.cookies.jar}


async def test_only_the_secretariat_may_post_a_review(browser: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    public = await browser.post(REVIEW_PATH, data=form(browser))
    assert public.status_code == 401
    await sign_in(browser, issuer.mint(principal_named("mof", "tanaka")))
    forged = await browser.post(REVIEW_PATH, data=form(browser, agency="digital"))
    assert forged.status_code == 403, forged.text
    page = await browser.get("/dashboard/signin")
    assert page.status_code == 200
    operator = issuer.mint(principal_named("operator", "ops"))
    as_operator = await browser.post(REVIEW_PATH, data=form(browser), headers={"Authorization": f"Bearer {operator}"})
    assert as_operator.status_code == 403


async def test_a_review_form_without_its_csrf_token_is_refused(
    browser: httpx.AsyncClient, issuer: EmbeddedIssuer
) -> None:
    await sign_in(browser, issuer.mint(principal_named("secretariat", "sato")))
    missing = await browser.post(REVIEW_PATH, data=form(browser, csrf=""))
    assert missing.status_code == 403
    elsewhere = await browser.post(REVIEW_PATH, data=form(browser), headers={"Origin": "https://evil.example"})
    assert elsewhere.status_code == 403
    assert "another site" in elsewhere.text


async def test_bad_reviews_are_refused_with_the_reason(
    browser: httpx.AsyncClient, app: FastAPI, issuer: EmbeddedIssuer
) -> None:
    await sign_in(browser, issuer.mint(principal_named("secretariat", "sato")))
    no_comment = await browser.post(REVIEW_PATH, data=form(browser, app, comment="  "))
    assert no_comment.status_code == 400
    assert "コメント" in no_comment.text
    no_decision = await browser.post(REVIEW_PATH, data=form(browser, app, decision="maybe"))
    assert no_decision.status_code == 400
    not_an_id = await browser.post(REVIEW_PATH, data=form(browser, app, event_id="42"))
    assert not_an_id.status_code == 400
    no_ticket = await browser.post(REVIEW_PATH, data=form(browser))
    assert no_ticket.status_code == 400
    assert "reload the page" in no_ticket.text
    forged = form(browser, app)
    forged["ticket"] = forged["ticket"][:-4] + "AAAA"
    assert (await browser.post(REVIEW_PATH, data=forged)).status_code == 400
    too_long = await browser.post(REVIEW_PATH, data=form(browser, app, comment="長" * 4001))
    assert too_long.status_code == 400
    unknown = await browser.post(REVIEW_PATH, data=form(browser, app))
    assert unknown.status_code == 404
    assert "unknown_event" in unknown.text


async def test_an_expired_token_asks_to_sign_in_again(
    browser: httpx.AsyncClient, app: FastAPI, issuer: EmbeddedIssuer
) -> None:
    """A session whose kept token has run out cannot send a review that ingest would refuse anyway."""
    short = issuer.mint(principal_named("secretariat", "sato"), ttl=timedelta(seconds=25))
    await sign_in(browser, short)
    event_id = uuid.uuid4()
    with app.state.service.engine.begin() as conn:
        events = repository.LIVE.events
        conn.execute(
            events.insert().values(
                event_id=str(event_id), measure_id="1-25", agency="mof", fiscal_year=2024, quarter=3,
                status="on_track", reported_at_us=0, reported_at="2024-12-01T00:00:00+09:00", on_time=True,
                admitted_at_us=0, subject="status.mof.1-25",
            )
        )  # fmt: skip
    answer = await browser.post(REVIEW_PATH, data=form(browser, app, event_id=str(event_id)))
    assert answer.status_code == 401, answer.text
    assert "sign in again" in answer.text


def admit_report(app: FastAPI) -> uuid.UUID:
    """An admitted report of mof on 1-25 in the store, as the consumer would have applied it."""
    event_id = uuid.uuid4()
    with app.state.service.engine.begin() as conn:
        conn.execute(
            repository.LIVE.events.insert().values(
                event_id=str(event_id), measure_id="1-25", agency="mof", fiscal_year=2024, quarter=3,
                status="on_track", reported_at_us=0, reported_at="2024-12-01T00:00:00+09:00", on_time=True,
                admitted_at_us=0, subject="status.mof.1-25",
            )
        )  # fmt: skip
    return event_id


async def test_a_review_goes_out_with_the_secretariats_own_token_and_a_resent_form_is_the_same_review(
    browser: httpx.AsyncClient, app: FastAPI, issuer: EmbeddedIssuer
) -> None:
    """The publish is replaced by a recorder (the NATS side is tests/browser/test_review_browser.py): the review
    goes on mof's review subject with the token the secretariat signed in with, and the same form sent twice (a
    double click) is the same bytes, which ingest takes as one review."""
    sent: list[tuple[str, bytes, str]] = []

    async def record(subject: str, data: bytes, token: str) -> None:
        sent.append((subject, data, token))

    app.state.service.publish_review = record
    token = issuer.mint(principal_named("secretariat", "sato"))
    await sign_in(browser, token)
    event_id = admit_report(app)
    values = form(browser, app, event_id=str(event_id))
    first = await browser.post(REVIEW_PATH, data=values)
    second = await browser.post(REVIEW_PATH, data=values)
    assert first.status_code == second.status_code == 303, first.text
    assert first.headers["location"] == "/dashboard/measures/1-25?fy=2024&q=3"
    assert len(sent) == 2
    assert sent[0] == sent[1]
    subject, data, used = sent[0]
    assert (subject, used) == ("review.mof.1-25", token)
    review = ReviewEvent.model_validate_json(data)
    assert (review.event_id, review.decision.value, review.reviewer) == (event_id, "returned", "sato")
    assert review.comment == "KPIの時点が異なります"
    # What became of it, for the page to say (sealed; nothing applied it here, so: sent).
    flash = app.state.dashboard_sessions.unseal(browser.cookies.get(FLASH_COOKIE), purpose=FLASH_PURPOSE)
    assert flash is not None
    assert (flash["review_id"], flash["outcome"]) == (str(review.review_id), "sent")
