"""Reporting's NATS user may publish reviews (the dashboard's review form), and that right lets it forge none.

Reporting publishes on `review.>` for the signed-in secretariat, with the token that person gave at sign-in
(`reporting.dashboard.review`). Ingest decides a review by the bearer token in the message, never by who
published it: here, on a running stack, reviews published as reporting's NATS user without a token, with an
agency's token, with a secretariat token signed by another key and with an expired one are each rejected
`not_permitted`; the same review with a valid secretariat token is admitted and recorded as that person's. So
reporting can send a review only with a token it was given, in its giver's name.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

from contracts.agencies import Agency
from contracts.cycle import ReviewDecision, ReviewEvent
from contracts.events import Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import STATUS_STREAM, review_subject
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_client.publisher import AgencyPublisher
from shinchoku_runtime.natsclient import connect
from tests.faults.stack import RunningStack, wait_until


def _decision(stack: RunningStack, event_id: str, agency: str) -> dict[str, object] | None:
    response = httpx.get(
        f"{stack.url('ingest')}/events/{event_id}", params={"agency": agency}, auth=stack.auth, timeout=10
    )
    return response.json() if response.status_code == 200 else None


async def _publish_as_reporting(stack: RunningStack, subject: str, data: bytes, token: str | None) -> None:
    nc = await connect(
        stack.nats_url, name="test-reporting-reviews", user="reporting", password=stack.password("reporting")
    )
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        await nc.jetstream().publish(subject, data, stream=STATUS_STREAM.name, headers=headers, timeout=5)
    finally:
        await nc.close()


async def _report(stack: RunningStack, event: StatusEvent) -> None:
    async with AgencyPublisher(stack.nats_url, agency="mof", password=stack.password("mof")) as publisher:
        await publisher.publish(event)


def test_reporting_can_publish_reviews_but_forge_none(security_stack: RunningStack) -> None:
    stack = security_stack
    quarter = FiscalQuarter.of_moment(datetime.now(UTC))
    items = httpx.get(f"{stack.url('catalog')}/measures", params={"agency": "mof", "limit": 1000}, timeout=10)
    measure_id = str(items.json()["items"][0]["id"])
    report = StatusEvent(
        event_id=uuid.uuid4(), measure_id=measure_id, agency=Agency.mof, fiscal_year=quarter.fiscal_year,
        quarter=quarter.quarter, status=Status.on_track, reported_at=datetime.now(TOKYO),
    )  # fmt: skip
    asyncio.run(_report(stack, report))
    wait_until(lambda: _decision(stack, str(report.event_id), "mof") is not None, 60, "mof's report decided")
    assert (_decision(stack, str(report.event_id), "mof") or {}).get("outcome") == "admitted"

    issuer = EmbeddedIssuer.load(stack.data_dir)
    impostor = ECKey.generate_key("P-256", {"kid": issuer.kid}, private=True)
    now = int(time.time())
    forged_claims = {"iss": "urn:shinchoku:embedded", "aud": "shinchoku", "sub": "someone", "iat": now,
                     "exp": now + 1800, "role": "secretariat"}  # fmt: skip
    senders: dict[str, str | None] = {
        "no token": None,
        "an agency's token": issuer.mint(principal_named("mof", "tanaka")),
        "another key's secretariat token": jwt.encode(
            {"alg": "ES256", "kid": issuer.kid}, forged_claims, impostor, ["ES256"]
        ),
        "an expired secretariat token": issuer.mint(
            principal_named("secretariat", "sato"), ttl=timedelta(minutes=5), now=time.time() - 3600
        ),
        "the secretariat's token": issuer.mint(principal_named("secretariat", "sato-dashboard")),
    }
    reviews: dict[str, ReviewEvent] = {}
    for what, token in senders.items():
        review = ReviewEvent(
            review_id=uuid.uuid4(), event_id=report.event_id, decision=ReviewDecision.accepted, comment=None,
            reviewed_at=datetime.now(UTC), reviewer="sato-dashboard",
        )  # fmt: skip
        reviews[what] = review
        asyncio.run(
            _publish_as_reporting(stack, review_subject("mof", measure_id), review.model_dump_json().encode(), token)
        )
    for review in reviews.values():
        wait_until(lambda r=review: _decision(stack, str(r.review_id), "secretariat") is not None, 60, "decided")  # type: ignore[misc]
    outcomes = {what: _decision(stack, str(r.review_id), "secretariat") or {} for what, r in reviews.items()}
    admitted = outcomes.pop("the secretariat's token")
    assert admitted["outcome"] == "admitted", admitted
    assert "sato-dashboard" in str(admitted.get("principal")), admitted
    for what, decided in outcomes.items():
        assert (decided.get("outcome"), decided.get("reason")) == ("rejected", "not_permitted"), (what, decided)
