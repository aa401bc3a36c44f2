"""The secretariat reviews a report from the dashboard's measure page: the same event as `shinchoku review`.

`POST /dashboard/review` (the measure page's accept / return form) publishes a `ReviewEvent` on
`review.{agency}.{measure_id}` (the report's agency and measure, onto STATUS), exactly as the CLI does, and
ingest admits it or rejects it with a reason like any command of the secretariat.

**Who publishes, and why this is safe.** Reporting's NATS user may publish `review.>` (nothing else of the
secretariat's: no close, no backfill), but a subject grants no authority: ingest admits a review only when the
message carries a bearer token that verifies against the issuer's keys and names the `secretariat` role, and it
records that token's `sub` as the sender (`ingest.commands`). Reporting holds no key that can mint such a token
(it only has the issuer's public keys), so it cannot make a review on its own or in another person's name: it
passes on the very token the signed-in secretariat gave it at sign-in, kept encrypted in a cookie that the
browser sends back to this route only (`session.REVIEW_TOKEN_COOKIE`), and only while that token is valid (an
expired one: sign in again). A session without that token, or whose token names another person than the
session, cannot review. What is left to trust reporting with is what it already sees: a token presented to it at
sign-in could be replayed by a compromised reporting until it expires, for reviews only. The alternatives were
worse: reporting vouching for the secretariat with a service identity would let a compromised reporting review
as anyone, for ever; and no publish right at all would leave the secretariat without the dashboard review.

Order of the checks: the gate (401 without a session or token, 403 for any principal but the secretariat), the
form's CSRF token and Origin (403), the form itself (400: no decision, no comment on a return, a bad id), the
report (404 `unknown_event`: reporting has no admitted report of that agency and measure under that id), the
token to send with (401: none kept, expired, or another person's), then the publish (503 when NATS is away).
After it the route waits briefly for the review to be admitted and applied here, and goes back to the measure
page, which says so, or that it was sent and shows once admitted (`shinchoku trace REVIEW_ID` tells a
rejection's reason: the token is never sent to ingest's HTTP address from here, see `_outcome`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from contracts.agencies import Agency
from contracts.commands import SECRETARIAT
from contracts.cycle import ReviewDecision, ReviewEvent
from contracts.periods import FiscalQuarter
from contracts.streams import review_subject
from reporting import access, repository
from reporting.dashboard.i18n import TEXT, Lang
from reporting.dashboard.session import REVIEW_PATH, Sessions, csrf_problem
from reporting.dashboard.signin import read_form
from reporting.dashboard.state import ViewState
from shinchoku_runtime.auth import InvalidToken, KeysUnavailable, NoPrincipal, Principal, Role, TokenVerifier

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

FLASH_COOKIE = "shinchoku_flash"
FLASH_PURPOSE = "review-outcome"
FLASH_SECONDS = 120
TICKET_PURPOSE = "review-form"
#: How long a review form stays valid (a page left open longer is reloaded).
TICKET_SECONDS = 12 * 3600
#: How long the route waits for the review's outcome before going back to the page (s).
WAIT_SECONDS = 4.0

Reviewer = Annotated[Principal, Depends(access.REVIEWERS)]


def _lang(form: dict[str, str], request: Request) -> Lang:
    return "en" if (form.get("lang") or request.query_params.get("lang")) == "en" else "ja"


def _problem(request: Request, status_code: int, message: str, lang: Lang) -> Response:
    from reporting.dashboard.routes import render  # routes imports this module

    context = {"lang": lang, "t": TEXT[lang], "message": message, "status_code": status_code, "lang_toggle": ""}
    return render(request, "error.html", {**context, "state": None}, status_code)


def _admitted_report(engine: sa.Engine, agency: str, event_id: str) -> tuple[str, FiscalQuarter] | None:
    with engine.connect() as conn:
        found = repository.admitted_report(conn, agency=agency, event_id=event_id)
    return (found[0], FiscalQuarter(found[1], found[2])) if found is not None else None


def new_ticket(sessions: Sessions) -> str:
    """The review form's ticket: a fresh review_id and the moment the form was made, sealed with the session key.
    A form sent twice (a double click, a resend after an error) is the same review, byte for byte, which ingest
    takes as a duplicate; the browser chooses neither the id nor the time."""
    value = {"review_id": str(uuid.uuid4()), "at": datetime.now(UTC).isoformat()}
    return sessions.seal(value, purpose=TICKET_PURPOSE, seconds=TICKET_SECONDS)


def read_ticket(sessions: Sessions, sealed: str | None) -> tuple[uuid.UUID, datetime] | None:
    value = sessions.unseal(sealed, purpose=TICKET_PURPOSE)
    if value is None:
        return None
    try:
        return uuid.UUID(str(value["review_id"])), datetime.fromisoformat(str(value["at"]))
    except (KeyError, ValueError):
        return None


def _review_applied(engine: sa.Engine, review_id: str) -> bool:
    with engine.connect() as conn:
        return repository.review_applied(conn, review_id=review_id)


async def _sending_token(request: Request, principal: Principal, sessions: Sessions) -> str:
    """The bearer token the review goes out with: the request's own (an API client), else the one the signed-in
    secretariat gave at sign-in; raises `LookupError` saying why there is none fit to send."""
    header = request.headers.get("authorization", "")
    scheme, _, given = header.strip().partition(" ")
    token = given.strip() if scheme.lower() == "bearer" and given.strip() else sessions.review_token(request)
    if not token:
        raise LookupError("this sign-in keeps no token to send reviews with: sign in again (with a token) to review")
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        # Ingest judges the token at receipt: leave it a margin, so that a review is not sent only to be refused.
        claims = await verifier.claims(token)
        sender = await verifier.verify(token)
    except (InvalidToken, NoPrincipal) as e:
        raise LookupError(f"the token of this sign-in cannot send reviews ({e}): sign in again to review") from None
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp - time.time() < 30:
        raise LookupError("the token of this sign-in expires now: sign in again to review")
    if sender.role is not Role.secretariat or sender.subject != principal.subject:
        raise LookupError("the token kept for reviews is not this session's secretariat: sign in again to review")
    return token


async def _outcome(request: Request, review_id: str) -> str:
    """`admitted` once the review is applied here (within WAIT_SECONDS), else `sent`. Ingest's rejections are not
    asked for: its `ingest_url` is where browsers reach it, and a deployment's may lead anywhere from here, so
    the token is never sent there; a review that does not show was rejected (`shinchoku trace REVIEW_ID`)."""
    engine: sa.Engine = request.app.state.service.engine
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_review_applied, engine, review_id):
            return "admitted"
        await asyncio.sleep(0.2)
    return "sent"


@router.post(REVIEW_PATH)
async def review(request: Request, principal: Reviewer) -> Response:
    """Accept or return (差戻し) one admitted report: publish the review as the signed-in secretariat."""
    form = await read_form(request)
    lang = _lang(form, request)
    problem = csrf_problem(request, form.get("csrf"))
    if problem:
        return _problem(request, 403, problem, lang)
    decision_text = form.get("decision", "")
    if decision_text not in (ReviewDecision.accepted.value, ReviewDecision.returned.value):
        return _problem(request, 400, "say what the review decides: accept or return", lang)
    decision = ReviewDecision(decision_text)
    comment = (form.get("comment") or "").strip() or None
    if decision is ReviewDecision.returned and comment is None:
        return _problem(request, 400, TEXT[lang]["review_comment_required"], lang)
    try:
        event_id = uuid.UUID(form.get("event_id", ""))
    except ValueError:
        return _problem(request, 400, "event_id must be a UUID", lang)
    sessions: Sessions = request.app.state.dashboard_sessions
    ticket = read_ticket(sessions, form.get("ticket"))
    if ticket is None:
        return _problem(request, 400, "this review form is stale or was not made here: reload the page", lang)
    review_id, opened_at = ticket
    agency = form.get("agency", "")
    measure_id = form.get("measure_id", "")
    if agency not in {a.value for a in Agency}:
        return _problem(request, 400, f"unknown agency code: {agency[:40]!r}", lang)
    try:
        event = ReviewEvent(
            review_id=review_id,
            event_id=event_id,
            decision=decision,
            comment=comment,
            reviewed_at=opened_at,
            reviewer=(principal.subject or SECRETARIAT)[:200],
        )
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(str(p) for p in x['loc']) or 'review'}: {x['msg']}" for x in e.errors())
        return _problem(request, 400, f"not a valid review: {detail}", lang)
    engine: sa.Engine = request.app.state.service.engine
    report = await asyncio.to_thread(_admitted_report, engine, agency, str(event_id))
    if report is None or report[0] != measure_id:
        return _problem(
            request,
            404,
            f"unknown_event: no admitted report {event_id} of {agency} on measure {measure_id[:20]!r} is known here",
            lang,
        )
    try:
        token = await _sending_token(request, principal, sessions)
    except LookupError as e:
        return _problem(request, 401, str(e), lang)
    except KeysUnavailable as e:
        return _problem(request, 503, str(e), lang)
    try:
        await request.app.state.service.publish_review(
            review_subject(agency, measure_id), event.model_dump_json().encode(), token
        )
    except Exception as e:  # NATS away, or no ack: resending the form is safe (same ticket: same bytes)
        log.warning("a review from the dashboard was not published: %s: %s", type(e).__name__, e)
        return _problem(request, 503, f"the review could not be published now ({type(e).__name__}): try again", lang)
    outcome = await _outcome(request, str(review_id))
    quarter = report[1]
    target = f"/dashboard/measures/{measure_id}" + ViewState(quarter=quarter, lang=lang).query()
    response = RedirectResponse(target, status_code=303)
    flash = {
        "review_id": str(review_id),
        "decision": decision.value,
        "agency": agency,
        "event_id": str(event_id),
        "outcome": outcome,
    }
    response.set_cookie(
        FLASH_COOKIE,
        sessions.seal(flash, purpose=FLASH_PURPOSE, seconds=FLASH_SECONDS),
        max_age=FLASH_SECONDS,
        path="/dashboard",
        secure=sessions.is_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


def take_flash(request: Request) -> dict[str, str] | None:
    """The outcome of the review just sent from this browser (shown once), or None."""
    sessions: Sessions | None = getattr(request.app.state, "dashboard_sessions", None)
    if sessions is None:
        return None
    value = sessions.unseal(request.cookies.get(FLASH_COOKIE), purpose=FLASH_PURPOSE)
    return {k: str(v) for k, v in value.items()} if value else None


def drop_flash(response: Response, request: Request) -> None:
    if request.cookies.get(FLASH_COOKIE):
        sessions: Sessions = request.app.state.dashboard_sessions
        response.delete_cookie(
            FLASH_COOKIE, path="/dashboard", secure=sessions.is_secure(request), httponly=True, samesite="strict"
        )
