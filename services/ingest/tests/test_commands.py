"""The secretariat's commands on a real nats-server, SQLite and PostgreSQL: reviews, closes and backfills are
decided like reports, each rejection with its reason and words a clerk can act on, and only a verified
`secretariat` token gets a command admitted (the token itself never stored nor republished).

One module of ~550 lines on purpose: the three commands share its stack, issuer, publisher and decision helpers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.cycle import AdmittedClose, AdmittedReview, ReviewedReport
from contracts.events import AdmittedEvent, Rejection
from contracts.periods import FiscalQuarter
from contracts.streams import INGEST_DURABLE
from ingest import queries
from ingest.records import republished
from ingest.testing import encode, event_body, stream_messages, wait_for_count, wait_for_event
from shinchoku.client import AgencyPublisher, SecretariatPublisher
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_runtime.auth import AuthSettings, TokenVerifier, install_auth
from shinchoku_runtime.db import normalise_url
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import status_sequence

Publishers = Callable[[str], Awaitable[AgencyPublisher]]
# Closed on purpose in the past: its on-time deadline (2025-01-31 JST) has long passed.
Q3 = FiscalQuarter(2024, 3)


@pytest.fixture
def ingest_db_url(database_url: str) -> str:
    return database_url


@pytest.fixture
def issuer(tmp_path: Path) -> EmbeddedIssuer:
    return EmbeddedIssuer.prepare(tmp_path / "issuer")


def auth_of(issuer: EmbeddedIssuer, *, jwks_url: str | None = None) -> AuthSettings:
    return AuthSettings(mode="embedded", jwks_url=jwks_url or issuer.jwks_path.as_uri(), jwks_refresh_interval=0.2)


def token_of(issuer: EmbeddedIssuer, principal: str = "secretariat", sub: str = "yamada", **mint: Any) -> str:
    return issuer.mint(principal_named(principal, sub), **mint)


@pytest.fixture
async def secretariat(nats_server: NatsServer) -> AsyncIterator[SecretariatPublisher]:
    async with SecretariatPublisher(
        nats_server.plain_url, password=nats_server.passwords["secretariat"], timeout=2, retries=1
    ) as publisher:
        yield publisher


@pytest.fixture
async def ingest(start_ingest: Any, catalog_kv: Any, issuer: EmbeddedIssuer) -> Any:
    running = await start_ingest(auth=auth_of(issuer))
    await asyncio.wait_for(running.runtime.mirror.loaded.wait(), 10)
    return running


def review_body(event_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "review_id": str(uuid.uuid4()),
        "event_id": event_id,
        "decision": "returned",
        "comment": "KPIの時点が異なります。同じ時点の値で再提出してください。",
        "reviewed_at": datetime.now(UTC).isoformat(),
        "reviewer": "重点計画事務局 山田",
    }
    body.update(overrides)
    return body


def close_body(quarter: FiscalQuarter = Q3, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "close_id": str(uuid.uuid4()),
        "fiscal_year": quarter.fiscal_year,
        "quarter": quarter.quarter,
        "closed_at": datetime.now(UTC).isoformat(),
        "closed_by": "重点計画事務局",
    }
    body.update(overrides)
    return body


async def send(publisher: SecretariatPublisher, subject: str, body: dict[str, Any], token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    await publisher.publish_raw(subject, encode(body), headers=headers)


async def report_on_status(publisher: AgencyPublisher, subject: str, body: dict[str, Any], admin: Client) -> None:
    """Publish a report and wait until STATUS holds it: STATUS copies it in from the agency's own stream, so a
    command published right after its PubAck could otherwise reach STATUS first (a review names a report the
    secretariat has seen, which is on STATUS by then)."""
    ack = await publisher.publish_raw(subject, encode(body))
    await status_sequence(admin.jetstream(), subject, ack)


async def decided(ingest: Any, command_id: str, *, agency: str | None = None) -> dict[str, Any]:
    return await wait_for_event(ingest.http, command_id, timeout=15, agency=agency)


async def accepted_of(nc: Client, prefix: str) -> list[Any]:
    return [m for m in await stream_messages(nc, "ACCEPTED") if m.subject.startswith(prefix)]


async def rejections(nc: Client) -> dict[str, Rejection]:
    return {(r := Rejection.model_validate_json(m.data)).rejection_id: r for m in await stream_messages(nc, "REJECTED")}


def assert_rejected(body: dict[str, Any], reason: str, words: str) -> None:
    assert body["outcome"] == "rejected", body
    assert body["reason"] == reason, body
    assert words in body["message"], body["message"]


# --- review --------------------------------------------------------------------------------------------------


async def test_a_review_is_admitted_with_the_reviewed_report_and_who_sent_it(
    ingest: Any, publisher_for: Publishers, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    mof = await publisher_for("mof")
    report = event_body()
    await mof.publish_raw("status.mof.1-25", encode(report))
    assert (await decided(ingest, report["event_id"]))["outcome"] == "admitted"

    review = review_body(report["event_id"])
    await send(secretariat, "review.mof.1-25", review, token_of(issuer))
    body = await decided(ingest, review["review_id"])
    assert (body["outcome"], body["kind"], body["principal"], body["agency"]) == (
        "admitted",
        "review",
        "yamada",
        "secretariat",
    )
    assert body["subject"] == "review.mof.1-25"

    await wait_for_count(admin_nc, "ACCEPTED", 2)
    (message,) = await accepted_of(admin_nc, "reviewed.")
    assert message.subject == "reviewed.mof.1-25"
    assert message.headers["Nats-Msg-Id"] == f"review:{review['review_id']}"
    admitted = AdmittedReview.model_validate_json(message.data)
    assert admitted.report == ReviewedReport(agency="mof", measure_id="1-25", fiscal_year=2024, quarter=3)
    assert (admitted.principal, admitted.subject, str(admitted.review.review_id)) == (
        "yamada",
        "review.mof.1-25",
        review["review_id"],
    )
    assert admitted.received_at <= admitted.admitted_at


async def test_reviews_are_rejected_each_with_its_reason(
    ingest: Any, publisher_for: Publishers, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    mof, digital = await publisher_for("mof"), await publisher_for("digital")
    mine, theirs = event_body(), event_body(agency="digital")
    await mof.publish_raw("status.mof.1-25", encode(mine))
    await digital.publish_raw("status.digital.1-25", encode(theirs))
    await decided(ingest, mine["event_id"])
    await decided(ingest, theirs["event_id"])
    token = token_of(issuer)
    expired = token_of(issuer, ttl=timedelta(minutes=1), now=time.time() - 3600)
    cases: list[tuple[str, dict[str, Any], str | None, str, str]] = [
        # A review of digital's event on mof's subject: mof sent no such report.
        (
            "review.mof.1-25",
            review_body(theirs["event_id"]),
            token,
            "unknown_event",
            "no such report of mof was admitted",
        ),
        (
            "review.mof.1-25",
            review_body(str(uuid.uuid4())),
            token,
            "unknown_event",
            "check the report with GET /events/",
        ),
        (
            "review.mof.4-1",
            review_body(mine["event_id"]),
            token,
            "unknown_event",
            "publish the review on review.mof.1-25",
        ),
        # Sent with an agency's token: even the broker's secretariat user cannot lend an agency its rights.
        (
            "review.mof.1-25",
            review_body(mine["event_id"]),
            token_of(issuer, "mof", "tanaka"),
            "not_permitted",
            "its token is agency mof's",
        ),
        ("review.mof.1-25", review_body(mine["event_id"]), None, "not_permitted", "carried no bearer token"),
        ("review.mof.1-25", review_body(mine["event_id"]), expired, "not_permitted", "the token has expired"),
        ("review.mof.1-25", review_body(mine["event_id"]), "not-a-jwt", "not_permitted", "its token is not valid"),
        (
            "review.mof.1-25",
            review_body(mine["event_id"], comment=None),
            token,
            "malformed",
            "a returned report needs a comment",
        ),
    ]
    for subject, body, sent_with, _, _ in cases:
        await send(secretariat, subject, body, sent_with)
    for _, body, _, reason, words in cases:
        outcome = await decided(ingest, body["review_id"])
        assert_rejected(outcome, reason, words)
        assert outcome["agency"] == "secretariat"
    assert not await accepted_of(admin_nc, "reviewed.")
    await wait_for_count(admin_nc, "REJECTED", len(cases))
    published = await rejections(admin_nc)
    assert {r.agency for r in published.values()} == {"secretariat"}
    assert {m.subject for m in await stream_messages(admin_nc, "REJECTED")} == {"rejected.secretariat"}
    listed = (await ingest.http.get("/rejections", params={"agency": "secretariat"})).json()
    assert listed["total"] == len(cases)
    # Who tried is kept (the verified sub), never for a token that did not verify.
    principals = {
        r["event_id"]: (await ingest.http.get(f"/events/{r['event_id']}")).json()["principal"] for r in listed["items"]
    }
    assert principals[cases[3][1]["review_id"]] == "tanaka"
    assert principals[cases[4][1]["review_id"]] is None


async def test_a_review_resent_is_a_duplicate_and_other_content_under_its_id_a_conflict(
    ingest: Any, publisher_for: Publishers, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    mof = await publisher_for("mof")
    report = event_body()
    await report_on_status(mof, "status.mof.1-25", report, admin_nc)
    review = review_body(report["event_id"])
    token = token_of(issuer)
    await send(secretariat, "review.mof.1-25", review, token)
    await decided(ingest, review["review_id"])
    await send(secretariat, "review.mof.1-25", review, token_of(issuer, sub="suzuki"))  # resent, by someone else
    await send(secretariat, "review.mof.1-25", {**review, "decision": "accepted", "comment": None}, token)
    deadline = time.monotonic() + 15
    while len((body := await decided(ingest, review["review_id"]))["attempts"]) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert body["outcome"] == "admitted"
    assert [a["outcome"] for a in body["attempts"]] == ["duplicate", "rejected"]
    conflict = body["attempts"][1]
    assert conflict["reason"] == "duplicate_conflict"
    assert (
        f"review_id {review['review_id']} was already used for a review with different content" in conflict["message"]
    )
    await asyncio.sleep(0.3)
    assert len(await accepted_of(admin_nc, "reviewed.")) == 1


# --- close ---------------------------------------------------------------------------------------------------


async def test_a_quarter_is_closed_once_and_only_after_its_deadline(
    ingest: Any, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    token = token_of(issuer)
    first, second = close_body(), close_body()
    current = FiscalQuarter.of_moment(datetime.now(UTC))
    early = close_body(current)
    await send(secretariat, "close.2024.3", first, token)
    assert (await decided(ingest, first["close_id"]))["outcome"] == "admitted"
    await send(secretariat, "close.2024.3", second, token)
    await send(secretariat, "close.2024.3", first, token)  # the same close resent: a duplicate, not a second close
    await send(secretariat, f"close.{current.fiscal_year}.{current.quarter}", early, token)
    await send(secretariat, "close.2024.3", close_body(quarter=Q3.next()), token)  # published on another quarter
    assert_rejected(
        await decided(ingest, second["close_id"]),
        "already_closed",
        f"FY2024Q3 was closed already (close {first['close_id']})",
    )
    assert_rejected(
        await decided(ingest, early["close_id"]),
        "period_open",
        f"{current.label} cannot be closed before its on-time deadline",
    )
    deadline = time.monotonic() + 15
    while not (body := await decided(ingest, first["close_id"]))["attempts"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert [a["outcome"] for a in body["attempts"]] == ["duplicate"]
    (message,) = await accepted_of(admin_nc, "closed.")
    assert (message.subject, message.headers["Nats-Msg-Id"]) == ("closed.2024.3", f"close:{first['close_id']}")
    closed = AdmittedClose.model_validate_json(message.data)
    assert (closed.principal, closed.close.fiscal_year, closed.close.quarter) == ("yamada", 2024, 3)
    rejected = await queries_rejections(ingest, "malformed")
    assert any("publish it on close.2024.4" in r["message"] for r in rejected)


async def queries_rejections(ingest: Any, reason: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        items: list[dict[str, Any]] = (await ingest.http.get("/rejections", params={"reason": reason})).json()["items"]
        if items or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.1)


# --- backfill ------------------------------------------------------------------------------------------------


async def test_a_backfilled_report_is_admitted_as_the_agencys_and_marked(
    ingest: Any, publisher_for: Publishers, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    token = token_of(issuer)
    past = event_body(fiscal_year=2022, quarter=2, reported_at="2022-10-20T17:00:00+09:00", status="delayed")
    not_lead = event_body(agency="mhlw", fiscal_year=2022, quarter=2, reported_at="2022-10-20T17:00:00+09:00")
    by_agency = event_body(fiscal_year=2022, quarter=1, reported_at="2022-07-20T17:00:00+09:00")
    await send(secretariat, "backfill.mof.1-25", past, token)
    await send(secretariat, "backfill.mhlw.1-25", not_lead, token)
    await send(secretariat, "backfill.mof.1-25", by_agency, token_of(issuer, "mof"))
    admitted = await decided(ingest, past["event_id"], agency="mof")
    assert (admitted["outcome"], admitted["kind"], admitted["agency"], admitted["principal"]) == (
        "admitted",
        "backfill",
        "mof",
        "yamada",
    )
    assert_rejected(await decided(ingest, not_lead["event_id"]), "not_lead", "mhlw does not lead measure 1-25")
    assert_rejected(
        await decided(ingest, by_agency["event_id"]),
        "not_permitted",
        "a backfilled report may be sent only by the secretariat",
    )
    (message,) = await accepted_of(admin_nc, "accepted.")
    assert (message.subject, message.headers["Nats-Msg-Id"]) == ("accepted.mof.1-25", f"mof:{past['event_id']}")
    event = AdmittedEvent.model_validate_json(message.data)
    assert event.backfilled is True
    assert event.subject == "backfill.mof.1-25"
    # The agency's own resend of the same report is the same admission; the agency's report the agency
    # could not send (its backfill was not permitted) is its own to send, its id never claimed by the refusal.
    mof = await publisher_for("mof")
    await mof.publish_raw("status.mof.1-25", encode(past))
    await mof.publish_raw("status.mof.1-25", encode(by_agency))
    deadline = time.monotonic() + 15
    while (body := await decided(ingest, by_agency["event_id"]))[
        "outcome"
    ] != "admitted" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert (body["outcome"], body["kind"]) == ("admitted", "report")
    assert [(a["outcome"], a["reason"]) for a in body["attempts"]] == [("rejected", "not_permitted")]
    assert len(await accepted_of(admin_nc, "accepted.")) == 2


# --- one batch, one order ------------------------------------------------------------------------------------


async def test_commands_in_one_batch_see_the_reports_and_closes_before_them(
    start_ingest: Any,
    catalog_kv: Any,
    publisher_for: Publishers,
    secretariat: SecretariatPublisher,
    issuer: EmbeddedIssuer,
    admin_nc: Client,
) -> None:
    """Published before ingest starts, so that one batch holds them all: a review right after its report is
    admitted, a review right before it is not (stream order is the order), and of two closes the first wins."""
    mof = await publisher_for("mof")
    token = token_of(issuer)
    report, later = event_body(), event_body(quarter=2, reported_at="2024-09-20T17:00:00+09:00")
    after, before = review_body(report["event_id"]), review_body(later["event_id"])
    first, second = close_body(), close_body()
    await send(secretariat, "review.mof.1-25", before, token)
    await report_on_status(mof, "status.mof.1-25", report, admin_nc)
    await send(secretariat, "review.mof.1-25", after, token)
    await report_on_status(mof, "status.mof.1-25", later, admin_nc)
    await send(secretariat, "close.2024.3", first, token)
    await send(secretariat, "close.2024.3", second, token)
    running = await start_ingest(auth=auth_of(issuer), batch_wait=0.5)
    await asyncio.wait_for(running.runtime.mirror.loaded.wait(), 10)
    assert (await decided(running, after["review_id"]))["outcome"] == "admitted"
    assert_rejected(await decided(running, before["review_id"]), "unknown_event", "no such report of mof was admitted")
    assert (await decided(running, first["close_id"]))["outcome"] == "admitted"
    assert_rejected(await decided(running, second["close_id"]), "already_closed", "FY2024Q3 was closed already")
    (message,) = await accepted_of(admin_nc, "reviewed.")
    assert AdmittedReview.model_validate_json(message.data).report.quarter == 3
    subjects = [m.subject.split(".")[0] for m in await stream_messages(admin_nc, "ACCEPTED")]
    assert subjects == ["accepted", "reviewed", "accepted", "closed"]  # the order they arrived in


# --- the token -----------------------------------------------------------------------------------------------


async def test_the_token_is_never_stored_nor_republished(
    ingest: Any, publisher_for: Publishers, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    mof = await publisher_for("mof")
    report = event_body()
    await mof.publish_raw("status.mof.1-25", encode(report))
    await decided(ingest, report["event_id"])
    tokens = [token_of(issuer), token_of(issuer, "mof"), token_of(issuer, sub="suzuki")]
    ids = []
    for i, token in enumerate(tokens):
        review = review_body(report["event_id"])
        await send(secretariat, "review.mof.1-25", review, token)
        close = close_body(Q3 if i == 0 else Q3.previous())
        await send(secretariat, f"close.{close['fiscal_year']}.{close['quarter']}", close, token)
        ids += [review["review_id"], close["close_id"]]
    for command_id in ids:
        await decided(ingest, command_id)
    # The report, two reviews and two closes admitted; the agency's review and close not permitted.
    assert await wait_for_count(admin_nc, "ACCEPTED", 5) == 5
    assert await wait_for_count(admin_nc, "REJECTED", 2) == 2
    secrets = [t.encode() for t in tokens] + [t.split(".")[2].encode() for t in tokens]  # whole, or its signature
    for stream in ("ACCEPTED", "REJECTED"):
        for m in await stream_messages(admin_nc, stream):
            blob = m.data + json.dumps(m.headers or {}).encode()
            assert not any(s in blob for s in secrets), (stream, m.subject)
            assert b"Authorization" not in json.dumps(m.headers or {}).encode()
    stored = store_text(ingest.settings.resolved_database_url())
    assert "yamada" in stored  # the principal is kept …
    assert not any(s.decode() in stored for s in secrets)  # … never the token


def store_text(url: str) -> str:
    """Every value in ingest's store as text (a database-independent dump)."""
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            parts = []
            for table in ("decision", "event_claim", "closed_quarter"):
                for row in conn.execute(sa.text(f"select * from {table}")):
                    parts += [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row]
    finally:
        engine.dispose()
    return "\n".join(parts)


def readable_over_http(running: Any, issuer: EmbeddedIssuer) -> None:
    """The test reads decisions over HTTP with keys it has, while the commands' verifier has none."""
    install_auth(running.app, TokenVerifier.from_settings(auth_of(issuer)))


async def test_unreachable_keys_are_retried_not_rejected(
    start_ingest: Any, catalog_kv: Any, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, tmp_path: Path
) -> None:
    """A command whose sender cannot be verified because the issuer's keys cannot be fetched is a fault of the
    platform: it waits, and is decided once the keys are there, not rejected as `not_permitted`."""
    keys = tmp_path / "later" / "jwks.json"
    running = await start_ingest(auth=auth_of(issuer, jwks_url=keys.as_uri()))
    readable_over_http(running, issuer)
    close = close_body()
    await send(secretariat, "close.2024.3", close, token_of(issuer))
    await asyncio.sleep(1.5)
    assert (await running.http.get(f"/events/{close['close_id']}")).status_code == 404
    keys.parent.mkdir()
    keys.write_text(issuer.jwks_path.read_text())
    body = await wait_for_event(running.http, close["close_id"], timeout=20)
    assert body["outcome"] == "admitted"


async def test_a_command_never_verified_is_dead_lettered_under_its_own_id(
    start_ingest: Any, catalog_kv: Any, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, tmp_path: Path
) -> None:
    running = await start_ingest(
        auth=auth_of(issuer, jwks_url=(tmp_path / "never" / "jwks.json").as_uri()), max_deliver=3, retry_delay_max=0.2
    )
    readable_over_http(running, issuer)
    close = close_body()
    await send(secretariat, "close.2024.3", close, token_of(issuer))
    body = await wait_for_event(running.http, close["close_id"], timeout=30)
    assert_rejected(body, "undeliverable", "It was NOT admitted")
    assert body["agency"] == "secretariat"


# --- the outbox and the consumer -----------------------------------------------------------------------------


async def test_a_stored_command_admission_is_published_again_as_it_was(
    ingest: Any, publisher_for: Publishers, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    mof = await publisher_for("mof")
    report = event_body()
    await report_on_status(mof, "status.mof.1-25", report, admin_nc)
    review, close = review_body(report["event_id"]), close_body()
    await send(secretariat, "review.mof.1-25", review, token_of(issuer))
    await send(secretariat, "close.2024.3", close, token_of(issuer))
    await decided(ingest, review["review_id"])
    await decided(ingest, close["close_id"])
    await wait_for_count(admin_nc, "ACCEPTED", 3)
    published = {m.headers["Nats-Msg-Id"]: m for m in await stream_messages(admin_nc, "ACCEPTED")}
    for command_id in (review["review_id"], close["close_id"]):
        (history,) = queries.event_histories(ingest.runtime.engine, event_id=command_id).values()
        out = republished(history.main, b"")
        assert out is not None
        original = published[out.msg_id]
        assert (out.subject, out.payload, out.stream) == (original.subject, original.data, "ACCEPTED")


async def test_a_consumer_from_before_the_commands_is_widened_to_them(
    start_ingest: Any, catalog_kv: Any, secretariat: SecretariatPublisher, issuer: EmbeddedIssuer, admin_nc: Client
) -> None:
    await admin_nc.jetstream().add_consumer(
        "STATUS",
        ConsumerConfig(
            durable_name=INGEST_DURABLE,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject="status.>",
        ),
    )
    running = await start_ingest(auth=auth_of(issuer))
    info = await admin_nc.jetstream().consumer_info("STATUS", INGEST_DURABLE)
    # Widened to every message of STATUS (its own subjects and those sourced from the agencies' streams): no filter.
    assert not info.config.filter_subject
    assert not info.config.filter_subjects
    close = close_body()
    await send(secretariat, "close.2024.3", close, token_of(issuer))
    assert (await wait_for_event(running.http, close["close_id"], timeout=15))["outcome"] == "admitted"


async def test_a_review_waits_for_its_report_held_by_another_replica(
    start_ingest: Any,
    catalog_kv: Any,
    issuer: EmbeddedIssuer,
    publisher_for: Publishers,
    secretariat: SecretariatPublisher,
    admin_nc: Client,
) -> None:
    """Two ingest replicas share one durable consumer: the report a review names may still be in another replica's
    hands (fetched, not yet decided) when this replica gets the review. The review is retried until every earlier
    STATUS message is settled, never rejected as `unknown_event` for a report that was sent before it."""
    from ingest.config import IngestSettings
    from ingest.subscribers import consumer_config

    settings = IngestSettings(ack_wait=5)
    js = admin_nc.jetstream()
    await js.add_consumer("STATUS", consumer_config(settings))
    mof = await publisher_for("mof")
    report = event_body()
    await report_on_status(mof, "status.mof.1-25", report, admin_nc)
    review = review_body(report["event_id"])
    await send(secretariat, "review.mof.1-25", review, token_of(issuer))

    # "Another replica" takes the report and hangs on to it (it will come back after ack_wait).
    other = await js.pull_subscribe_bind(INGEST_DURABLE, "STATUS")
    (held,) = await other.fetch(1, timeout=5)
    assert held.subject == "status.mof.1-25"

    running = await start_ingest(auth=auth_of(issuer), ack_wait=5)
    await asyncio.wait_for(running.runtime.mirror.loaded.wait(), 10)
    body = await decided(running, review["review_id"])
    if body["outcome"] == "rejected":
        pytest.fail(f"the review was rejected while its report was still undecided: {body['message']}")
    assert body["outcome"] == "admitted"
    assert body["attempts"] == []
    assert (await decided(running, report["event_id"]))["outcome"] == "admitted"
