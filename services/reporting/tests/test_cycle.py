"""The reporting cycle on a real nats-server and both databases: reviews, a close and its publication, a
restatement, `?revision=N`, `/revisions`, and a rebuild that reproduces all of it (ingest stood in for: its
admitted facts are published on ACCEPTED as it publishes them)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts.cycle import Published, Restated, canonical_json
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import PUBLICATIONS_STREAM
from reporting.cycle.documents import document_of_rollup
from reporting.cycle.testing import admitted_close, admitted_review, publish_close, publish_review
from reporting.rebuild import rebuild_store
from reporting.testing import (
    Admission,
    publish_admissions,
    put_catalog,
    reporting_settings,
    running_reporting,
    status_event,
    synthetic_measures,
    wait_caught_up,
)
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.natsserver import NatsServer

Q = FiscalQuarter(2024, 3)
SCHEMAS = Path(__file__).resolve().parents[3] / "contracts" / "schemas"
T0 = datetime(2025, 1, 5, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


async def publications(nc: Client, *, count: int, timeout: float = 30.0) -> list[tuple[str, dict[str, Any], str]]:
    """The PUBLICATIONS stream's messages (subject, body, Nats-Msg-Id), once it holds `count` of them."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while (await js.stream_info(PUBLICATIONS_STREAM.name)).state.messages < count:
        assert time.monotonic() < deadline, f"fewer than {count} publications after {timeout}s"
        await asyncio.sleep(0.05)
    sub = await js.subscribe(
        ">",
        stream=PUBLICATIONS_STREAM.name,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out = []
    try:
        for _ in range((await js.stream_info(PUBLICATIONS_STREAM.name)).state.messages):
            msg = await sub.next_msg(timeout=5)
            out.append((msg.subject, json.loads(msg.data), (msg.headers or {}).get("Nats-Msg-Id", "")))
    finally:
        await sub.unsubscribe()
    return out


def validate(name: str, body: dict[str, Any]) -> None:
    jsonschema.validate(body, json.loads((SCHEMAS / f"{name}.v1.schema.json").read_text("utf-8")))


async def get(http: httpx.AsyncClient, path: str) -> Any:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def lead(item: dict[str, Any], agency: str) -> dict[str, Any]:
    found: dict[str, Any] = next(x for x in item["leads"] if x["agency"] == agency)
    return found


async def test_reviews_close_publication_restatement_and_rebuild(
    nats_server: NatsServer, admin_nc: Client, reporting_nc: Client, database_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(12)
    await put_catalog(admin_nc, measures)
    solo = [m for m in measures if len(m.lead_agencies) == 1]
    a, b, c = solo[0], solo[1], solo[2]

    def report(m: Any, status: str, hours: float) -> dict[str, Any]:
        event: dict[str, Any] = status_event(
            measure_id=m.id,
            agency=str(m.lead_agencies[0]),
            quarter=Q,
            status=status,
            reported_at=at(hours).astimezone(TOKYO),
        )
        return event

    ra, rb, rc = report(a, "on_track", 0), report(b, "delayed", 1), report(c, "at_risk", 2)
    await publish_admissions(admin_nc, [Admission(r, at(i)) for i, r in enumerate((ra, rb, rc))])

    def review(r: dict[str, Any], decision: str, hours: float, comment: str | None = None) -> Any:
        return admitted_review(
            event_id=r["event_id"], agency=r["agency"], measure_id=r["measure_id"], fiscal_year=2024, quarter=3,
            decision=decision, comment=comment, admitted_at=at(hours),
        )  # fmt: skip

    await publish_review(admin_nc, review(ra, "accepted", 10))
    await publish_review(admin_nc, review(rb, "returned", 11, "KPIの時点が異なります"))
    settings = reporting_settings(nats_server.plain_url, nats_server.passwords["reporting"], database_url, tmp_path)
    async with running_reporting(settings) as reporting:
        http = reporting.http
        await wait_caught_up(admin_nc)
        items = {i["measure_id"]: i for i in (await get(http, "/rollups/2024/3/measures"))["items"]}
        assert lead(items[a.id], ra["agency"])["review"] == "accepted"
        returned = lead(items[b.id], rb["agency"])
        assert (returned["review"], returned["review_comment"]) == ("returned", "KPIの時点が異なります")
        assert lead(items[c.id], rc["agency"])["review"] == "pending"
        # The agency answers: its new report starts pending and links to the returned one.
        rb2 = report(b, "at_risk", 12)
        await publish_admissions(admin_nc, [Admission(rb2, at(12))])
        await wait_caught_up(admin_nc)
        items = {i["measure_id"]: i for i in (await get(http, "/rollups/2024/3/measures"))["items"]}
        answer = lead(items[b.id], rb["agency"])
        assert (answer["event_id"], answer["review"], answer["answers"]) == (rb2["event_id"], "pending", rb["event_id"])
        live = await get(http, "/rollups/2024/3")
        assert live["review"] == {"pending": 2, "accepted": 1, "returned": 0}
        assert (live["closed"], live["revision"]) == (False, None)

        # Close: revision 1 is published, and it is the live rollup at that moment.
        await publish_close(admin_nc, admitted_close(fiscal_year=2024, quarter=3, admitted_at=at(30 * 24)))
        [(subject, published, msg_id)] = await publications(admin_nc, count=1)
        assert (subject, msg_id) == ("published.2024.3", "published.2024.3.1")
        validate("published", published)
        document = Published.model_validate(published)
        assert document.sha256 == hashlib.sha256(canonical_json(published["rollup"])).hexdigest()
        live = await get(http, "/rollups/2024/3")
        assert (live["closed"], live["revision"]) == (True, 1)
        assert hashlib.sha256(canonical_json(document_of_rollup(live))).hexdigest() == document.sha256
        assert document.rollup.review.accepted == 1
        assert document.rollup.by_status["at_risk"] == 2

        # A late correction of a closed quarter: exactly one restatement, with what changed and why.
        late = report(a, "delayed", 31 * 24)
        await publish_admissions(admin_nc, [Admission(late, at(31 * 24))])
        await wait_caught_up(admin_nc)
        published_all = await publications(admin_nc, count=2)
        assert [s for s, _, _ in published_all] == ["published.2024.3", "restated.2024.3"]
        _, restated_body, restated_id = published_all[1]
        assert restated_id == "restated.2024.3.2"
        validate("restated", restated_body)
        restated = Restated.model_validate(restated_body)
        assert (restated.revision, restated.previous_revision) == (2, 1)
        [change] = restated.changes
        assert (change.measure_id, change.agency, change.event_ids) == (a.id, ra["agency"], [late["event_id"]])
        assert (change.before.status, change.before.review) == ("on_track", "accepted")
        assert (change.after.status, change.after.review) == ("delayed", "pending")
        assert restated.by_status_before["on_track"] - 1 == restated.by_status_after["on_track"]
        assert restated.by_status_before["delayed"] + 1 == restated.by_status_after["delayed"]
        assert restated.restated_at == at(31 * 24)
        # Revision 1 as it was; revision 2 as restated; the list of both.
        first = (await http.get("/rollups/2024/3?revision=1")).content
        assert hashlib.sha256(first).hexdigest() == document.sha256
        second = (await http.get("/rollups/2024/3?revision=2")).content
        assert hashlib.sha256(second).hexdigest() == restated.sha256
        assert (await http.get("/rollups/2024/3?revision=3")).status_code == 404
        revisions = await get(http, "/rollups/2024/3/revisions")
        assert [(r["revision"], r["sha256"]) for r in revisions["items"]] == [
            (1, document.sha256),
            (2, restated.sha256),
        ]
        live = await get(http, "/rollups/2024/3")
        assert (live["revision"], live["restated_at"] is not None) == (2, True)
        assert hashlib.sha256(canonical_json(document_of_rollup(live))).hexdigest() == restated.sha256

        # The same report again, and a report that changes no figure: no restatement.
        await publish_admissions(admin_nc, [Admission(late, at(31 * 24))], msg_id=False)
        await wait_caught_up(admin_nc)
        await asyncio.sleep(1.5)
        assert len(await publications(admin_nc, count=2)) == 2

        # Rebuild: the same review states and revisions, digest for digest, and nothing published again.
        before_items = (await get(http, "/rollups/2024/3/measures"))["items"]
        engine = make_engine(database_url)
        try:
            await rebuild_store(engine, reporting_nc, progress=False)
        finally:
            engine.dispose()
        assert (await get(http, "/rollups/2024/3/revisions"))["items"] == revisions["items"]
        assert (await get(http, "/rollups/2024/3/measures"))["items"] == before_items
        await asyncio.sleep(1.5)
        assert len(await publications(admin_nc, count=2)) == 2


async def test_two_replicas_apply_facts_in_the_logs_order(
    nats_server: NatsServer, admin_nc: Client, reporting_nc: Client, database_url: str, tmp_path: Path
) -> None:
    """Two replicas share the durable consumer in small batches: what they make of reports, reviews, a close and
    late reports (review states, revisions and their changes) is what the log's order makes of them (a rebuild,
    which replays it in one order)."""
    import random

    rnd = random.Random(5)
    measures = synthetic_measures(30)
    await put_catalog(admin_nc, measures)
    statuses = ["on_track", "delayed", "at_risk", "completed"]
    sent: list[dict[str, Any]] = []

    async def reports(count: int, start: float) -> None:
        batch = []
        for i in range(count):
            m = rnd.choice(measures)
            r = status_event(
                measure_id=m.id,
                agency=str(rnd.choice(m.lead_agencies)),
                quarter=Q,
                status=rnd.choice(statuses),
                reported_at=at(start + i).astimezone(TOKYO),
            )
            batch.append(Admission(r, at(start + i)))
            sent.append(r)
        await publish_admissions(admin_nc, batch)

    async def reviews(count: int, start: float) -> None:
        for i in range(count):
            r = rnd.choice(sent)
            decision = rnd.choice(["accepted", "returned"])
            comment = "再提出してください" if decision == "returned" else None
            await publish_review(
                admin_nc,
                admitted_review(
                    event_id=r["event_id"], agency=r["agency"], measure_id=r["measure_id"], fiscal_year=2024,
                    quarter=3, decision=decision, comment=comment, admitted_at=at(start + i),
                ),
            )  # fmt: skip

    base = {"batch_size": 7, "writer_processes": 0}
    one = reporting_settings(
        nats_server.plain_url, nats_server.passwords["reporting"], database_url, tmp_path / "one", **base
    )
    two = reporting_settings(
        nats_server.plain_url, nats_server.passwords["reporting"], database_url, tmp_path / "two", **base
    )
    async with running_reporting(one) as first, running_reporting(two):
        await reports(60, 0)
        await reviews(15, 100)
        await publish_close(admin_nc, admitted_close(fiscal_year=2024, quarter=3, admitted_at=at(200)))
        await reports(40, 300)
        await reviews(15, 400)
        await reports(20, 500)
        await wait_caught_up(admin_nc, timeout=120)
        http = first.http
        replicas_revisions = (await get(http, "/rollups/2024/3/revisions"))["items"]
        replicas_items = (await get(http, "/rollups/2024/3/measures"))["items"]
        assert len(replicas_revisions) > 5  # late reports and reviews restated the quarter
        engine = make_engine(database_url)
        try:
            await rebuild_store(engine, reporting_nc, progress=False)
        finally:
            engine.dispose()
        assert (await get(http, "/rollups/2024/3/revisions"))["items"] == replicas_revisions
        assert (await get(http, "/rollups/2024/3/measures"))["items"] == replicas_items
