"""Ingest end to end on a real nats-server: agencies publish with their own credentials, ingest decides.

The catalog is stood in for only by Measure JSON in the real CATALOG bucket (and, where said, by an
answerer on `catalog.measure.get`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.events import AdmittedEvent, ReasonCode, Rejection, StatusEvent
from contracts.periods import FiscalQuarter
from contracts.streams import CATALOG_MEASURE_GET
from ingest.testing import (
    SAMPLE_MEASURES,
    encode,
    event_body,
    put_measures,
    stream_messages,
    wait_for_count,
    wait_for_event,
)
from shinchoku.client import AgencyPublisher, PermissionDenied
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import status_sequence

Publishers = Callable[[str], Awaitable[AgencyPublisher]]


def now_iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


async def rejections(nc: Client) -> dict[str, tuple[Rejection, dict[str, str]]]:
    """REJECTED by rejection_id: the Rejection and its headers."""
    out = {}
    for m in await stream_messages(nc, "REJECTED"):
        rejection = Rejection.model_validate_json(m.data)
        out[rejection.rejection_id] = (rejection, m.headers or {})
    return out


async def test_every_reason_code_end_to_end(
    ingest: Any, catalog_answerer: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    mof = await publisher_for("mof")
    mhlw = await publisher_for("mhlw")
    this_quarter = FiscalQuarter.of_moment(datetime.now(UTC))
    admitted = event_body()
    cases: dict[ReasonCode, tuple[AgencyPublisher, str, bytes]] = {
        ReasonCode.malformed: (mof, "status.mof.1-25", b'{"event_id": "oops", "status": '),
        ReasonCode.agency_mismatch: (mof, "status.mof.1-25", encode(event_body(agency="digital"))),
        ReasonCode.unknown_measure: (mof, "status.mof.6-99", encode(event_body(measure_id="6-99"))),
        ReasonCode.not_lead: (mhlw, "status.mhlw.1-25", encode(event_body(agency="mhlw"))),
        ReasonCode.future_timestamp: (
            mof,
            "status.mof.1-25",
            encode(event_body(reported_at=now_iso(timedelta(hours=1)), **_quarter(this_quarter))),
        ),
        ReasonCode.future_period: (
            mof,
            "status.mof.1-25",
            encode(event_body(reported_at=now_iso(), **_quarter(this_quarter.next()))),
        ),
        ReasonCode.duplicate_conflict: (mof, "status.mof.1-25", encode({**admitted, "status": "delayed"})),
    }
    await mof.publish_raw("status.mof.1-25", encode(admitted))
    await wait_for_event(ingest.http, admitted["event_id"])
    sent: dict[ReasonCode, int] = {}
    for reason, (publisher, subject, data) in cases.items():
        sent[reason] = await status_sequence(admin_nc.jetstream(), subject, await publisher.publish_raw(subject, data))
    assert await wait_for_count(admin_nc, "REJECTED", len(cases)) == len(cases)
    assert await wait_for_count(admin_nc, "ACCEPTED", 1) == 1

    on_stream = await rejections(admin_nc)
    for reason, (_publisher, subject, data) in cases.items():
        rejection, headers = on_stream[f"STATUS-{sent[reason]}"]
        assert rejection.reason is reason
        assert rejection.subject == subject
        assert rejection.agency == subject.split(".")[1]
        assert base64.b64decode(rejection.payload_b64) == data
        assert headers["Nats-Msg-Id"] == rejection.rejection_id
        assert headers["traceparent"].startswith("00-")
        if reason is not ReasonCode.malformed:
            body = await wait_for_event(ingest.http, json.loads(data)["event_id"])
            if reason is ReasonCode.duplicate_conflict:
                # Recorded as an attempt of the original, admitted id.
                assert body["outcome"] == "admitted"
                assert [(a["outcome"], a["reason"]) for a in body["attempts"]] == [("rejected", "duplicate_conflict")]
            else:
                assert (body["outcome"], body["reason"]) == ("rejected", reason.value)
                assert body["message"] == rejection.message

    page = (await ingest.http.get("/rejections")).json()
    assert page["total"] == len(cases)
    assert {item["reason"] for item in page["items"]} == {r.value for r in cases}
    assert [i["stream_seq"] for i in page["items"]] == sorted(sent.values(), reverse=True)
    only = (await ingest.http.get("/rejections", params={"reason": "not_lead"})).json()
    assert only["total"] == 1
    assert only["items"][0]["agency"] == "mhlw"
    assert base64.b64decode(only["items"][0]["payload_b64"]) == cases[ReasonCode.not_lead][2]
    by_agency = (await ingest.http.get("/rejections", params={"agency": "mof", "limit": 2, "offset": 2})).json()
    assert by_agency["total"] == len(cases) - 1
    assert len(by_agency["items"]) == 2


def _quarter(q: FiscalQuarter) -> dict[str, int]:
    return {"fiscal_year": q.fiscal_year, "quarter": q.quarter}


async def test_identical_duplicates_are_admitted_once(ingest: Any, publisher_for: Publishers, admin_nc: Client) -> None:
    mof = await publisher_for("mof")
    body = event_body()
    respelled = json.dumps(dict(reversed(body.items())), indent=2).encode()
    for data in (encode(body), encode(body), respelled):  # likely one batch: decided against each other
        await mof.publish_raw("status.mof.1-25", data)
    await wait_for_count(admin_nc, "STATUS", 3)
    first = await wait_for_event(ingest.http, body["event_id"])
    await asyncio.sleep(0.3)
    await mof.publish_raw("status.mof.1-25", encode(body))  # a later batch: decided against the store
    deadline = time.monotonic() + 10
    while len(first["attempts"]) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        first = await wait_for_event(ingest.http, body["event_id"])
    assert first["outcome"] == "admitted"
    assert [a["outcome"] for a in first["attempts"]] == ["duplicate"] * 3
    await asyncio.sleep(0.3)
    assert (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages == 1
    assert (await admin_nc.jetstream().stream_info("REJECTED")).state.messages == 0
    metrics = (await ingest.http.get("/metrics")).text
    assert 'shinchoku_ingest_admitted_total{agency="mof"} 1.0' in metrics
    assert 'shinchoku_ingest_duplicates_total{agency="mof"} 3.0' in metrics
    accepted = await stream_messages(admin_nc, "ACCEPTED")
    event = AdmittedEvent.model_validate_json(accepted[0].data)
    assert event.event == StatusEvent.model_validate(body)
    assert accepted[0].headers["Nats-Msg-Id"] == f"mof:{body['event_id']}"  # an event id is an agency's own


async def test_a_resend_after_the_catalog_changed_is_still_a_duplicate(
    ingest: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """An admitted event resent as is stays idempotent, even where the catalog now says it would be malformed."""
    mof = await publisher_for("mof")
    body = event_body(kpis=[{"target": 1, "value": 55, "as_of": "2024-06-30"}])
    await mof.publish_raw("status.mof.1-25", encode(body))
    assert (await wait_for_event(ingest.http, body["event_id"]))["outcome"] == "admitted"
    fewer = SAMPLE_MEASURES[0].model_copy(update={"targets": SAMPLE_MEASURES[0].targets[:1]})
    await put_measures(admin_nc, [fewer])
    # Once a new event on the dropped target is malformed, ingest's mirror has the new catalog.
    probe = event_body(kpis=[{"target": 1, "value": 60, "as_of": "2024-06-30"}])
    deadline = time.monotonic() + 10
    while True:
        probe["event_id"] = str(uuid.uuid4())
        await mof.publish_raw("status.mof.1-25", encode(probe))
        decided = await wait_for_event(ingest.http, probe["event_id"])
        if decided["outcome"] == "rejected" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert decided["reason"] == ReasonCode.malformed
    await mof.publish_raw("status.mof.1-25", encode(body))
    deadline = time.monotonic() + 10
    while True:
        first = await wait_for_event(ingest.http, body["event_id"])
        if first["attempts"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert first["outcome"] == "admitted"
    assert [a["outcome"] for a in first["attempts"]] == ["duplicate"]


async def test_an_agency_cannot_publish_as_another(
    ingest: Any, publisher_for: Publishers, admin_nc: Client, nats_server: NatsServer
) -> None:
    mof = await publisher_for("mof")
    started = time.monotonic()
    with pytest.raises(PermissionDenied, match=r"status\.digital\.1-25"):
        await mof.publish_raw("status.digital.1-25", encode(event_body(agency="digital")))
    assert time.monotonic() - started < 1.5, "refusal is reported at once, not after the publish timeout"
    with pytest.raises(ValueError, match="reports as mof"):
        await mof.publish(StatusEvent.model_validate(event_body(agency="digital")))
    assert (await admin_nc.jetstream().stream_info("STATUS")).state.messages == 0

    # Publishing on its own subject with another agency in the payload is caught by ingest.
    forged = event_body(agency="digital")
    await mof.publish_raw("status.mof.1-25", encode(forged))
    body = await wait_for_event(ingest.http, forged["event_id"])
    assert (body["outcome"], body["reason"]) == ("rejected", "agency_mismatch")
    # The forged report did not take the id: the real agency's report with it is admitted.
    digital = await publisher_for("digital")
    await digital.publish(StatusEvent.model_validate(forged))
    deadline = time.monotonic() + 10
    while body["outcome"] != "admitted" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        body = await wait_for_event(ingest.http, forged["event_id"], agency="digital")
    assert body["outcome"] == "admitted", body
    assert body["subject"] == "status.digital.1-25"


async def test_a_malformed_message_does_not_delay_the_ones_behind_it(
    ingest: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    mof = await publisher_for("mof")
    good = [event_body() for _ in range(30)]
    started = time.monotonic()
    for i, body in enumerate(good):
        await mof.publish_raw("status.mof.1-25", encode(body))
        if i % 5 == 2:
            await mof.publish_raw("status.mof.1-25", b'{"event_id": ' + b"[" * 5000)
    assert await wait_for_count(admin_nc, "ACCEPTED", 30, timeout=10) == 30
    elapsed = time.monotonic() - started
    assert await wait_for_count(admin_nc, "REJECTED", 6) == 6
    assert elapsed < 5, f"30 good reports behind 6 poison ones took {elapsed:.1f}s"
    # The acks follow the PubAcks of the batch: give them a moment to arrive.
    deadline = time.monotonic() + 2
    info = await admin_nc.jetstream().consumer_info("STATUS", "ingest")
    while info.num_ack_pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        info = await admin_nc.jetstream().consumer_info("STATUS", "ingest")
    assert info.num_redelivered == 0
    assert info.num_ack_pending == 0


async def test_one_report_is_one_trace(
    ingest: Any, nats_server: NatsServer, admin_nc: Client, spans: InMemorySpanExporter
) -> None:
    client_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(client_spans))
    body = event_body()
    async with AgencyPublisher(
        nats_server.plain_url, agency="mof", password=nats_server.passwords["mof"], tracer_provider=provider
    ) as mof:
        await mof.publish(StatusEvent.model_validate(body))
    decided = await wait_for_event(ingest.http, body["event_id"])
    (publish,) = client_spans.get_finished_spans()
    trace_id = format(publish.context.trace_id, "032x")
    assert decided["trace_id"] == trace_id

    await asyncio.sleep(0.2)
    mine = [s for s in spans.get_finished_spans() if s.context.trace_id == publish.context.trace_id]
    (process,) = [s for s in mine if s.name == "status.mof.1-25 process"]
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.attributes is not None
    assert process.attributes["shinchoku.event_id"] == body["event_id"]
    assert process.attributes["shinchoku.outcome"] == "admitted"
    assert process.attributes["messaging.system"] == "nats"
    children = {s.name: s for s in mine if s.parent is not None and s.parent.span_id == process.context.span_id}
    assert {"catalog lookup", "ingest store write", "ACCEPTED publish"} <= set(children)

    (accepted,) = await stream_messages(admin_nc, "ACCEPTED")
    traceparent = accepted.headers["traceparent"]
    assert traceparent.split("-")[1] == trace_id
    assert traceparent.split("-")[2] == format(children["ACCEPTED publish"].context.span_id, "016x")


async def test_measures_missing_from_the_mirror_are_asked_of_the_catalog(
    ingest: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    asked: list[str] = []
    traceparents: dict[str, str] = {}
    extra = SAMPLE_MEASURES[0].model_copy(update={"id": "5-5"})

    async def answer(msg: Msg) -> None:
        measure_id = msg.data.decode()
        asked.append(measure_id)
        traceparents[measure_id] = (msg.headers or {}).get("traceparent", "")
        if measure_id == "5-5":
            await msg.respond(extra.model_dump_json().encode())
        else:
            await msg.respond(json.dumps({"error": "not_found", "message": f"no measure {measure_id}"}).encode())

    await admin_nc.subscribe(CATALOG_MEASURE_GET, cb=answer)
    mof = await publisher_for("mof")
    known, unknown = event_body(measure_id="5-5"), event_body(measure_id="5-6")
    await mof.publish_raw("status.mof.5-5", encode(known))
    await mof.publish_raw("status.mof.5-6", encode(unknown))
    admitted = await wait_for_event(ingest.http, known["event_id"])
    assert admitted["outcome"] == "admitted"
    decided = await wait_for_event(ingest.http, unknown["event_id"])
    assert (decided["outcome"], decided["reason"]) == ("rejected", "unknown_measure")
    assert sorted(asked) == ["5-5", "5-6"]
    # Each request carried its report's trace, so the catalog's span joins it.
    assert traceparents["5-5"].split("-")[1] == admitted["trace_id"]
    assert traceparents["5-6"].split("-")[1] == decided["trace_id"]


async def test_an_unreachable_catalog_delays_a_report_but_never_rejects_it(
    ingest: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    mof = await publisher_for("mof")
    body = event_body(measure_id="5-7")
    await mof.publish_raw("status.mof.5-7", encode(body))
    await asyncio.sleep(1.5)  # nobody answers catalog.measure.get: the report waits
    assert (await ingest.http.get(f"/events/{body['event_id']}")).status_code == 404
    assert (await admin_nc.jetstream().stream_info("REJECTED")).state.messages == 0
    # The catalog comes back (the measure appears in the bucket): the report is admitted.
    kv = await admin_nc.jetstream().key_value("CATALOG")
    await kv.put("5-7", SAMPLE_MEASURES[0].model_copy(update={"id": "5-7"}).model_dump_json().encode())
    decided = await wait_for_event(ingest.http, body["event_id"], timeout=15)
    assert decided["outcome"] == "admitted"
    assert 'shinchoku_ingest_transient_faults_total{fault="catalog"}' in (await ingest.http.get("/metrics")).text


async def test_the_last_delivery_dead_letters_as_undeliverable(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    running = await start_ingest(max_deliver=3, retry_delay_max=0.1)
    mof = await publisher_for("mof")
    body = event_body(measure_id="5-8")  # no such key, nobody answers: never decidable
    ack = await mof.publish_raw("status.mof.5-8", encode(body))
    assert await wait_for_count(admin_nc, "REJECTED", 1, timeout=20) == 1
    (rejection, headers), *_ = (await rejections(admin_nc)).values()
    assert rejection.reason is ReasonCode.undeliverable
    assert rejection.rejection_id == f"STATUS-{await status_sequence(admin_nc.jetstream(), 'status.mof.5-8', ack)}"
    assert rejection.event_id == body["event_id"]
    assert "catalog" in rejection.message
    assert headers["Nats-Msg-Id"] == rejection.rejection_id
    decided = await wait_for_event(running.http, body["event_id"])
    assert (decided["outcome"], decided["reason"]) == ("rejected", "undeliverable")
    info = await admin_nc.jetstream().consumer_info("STATUS", "ingest")
    assert info.num_ack_pending == 0


async def test_http_answers_user_errors_with_4xx(ingest: Any) -> None:
    http = ingest.http
    response = await http.get("/events/not-a-uuid")
    assert response.status_code == 422
    assert "event_id" in response.json()["detail"]
    unknown = uuid.uuid4()
    response = await http.get(f"/events/{unknown}")
    assert response.status_code == 404
    assert str(unknown) in response.json()["detail"]
    for params in ({"reason": "bogus"}, {"agency": "treasury"}):
        response = await http.get("/rejections", params=params)
        assert response.status_code == 400
        assert "use one of" in response.json()["detail"]
    assert (await http.get("/rejections", params={"limit": 1001})).status_code == 422
    assert (await http.get("/rejections", params={"offset": -1})).status_code == 422
    health = await http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["checks"] == {"nats": True, "database": True, "jetstream": True}
    assert (await http.get("/docs")).status_code == 200
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/events/{event_id}", "/rejections", "/healthz"} <= set(paths)


async def test_health_says_503_while_nats_is_away_and_recovers(ingest: Any, nats_server: NatsServer) -> None:
    nats_server.stop()
    deadline = time.monotonic() + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        response = await ingest.http.get("/healthz")
        status = response.status_code
    assert status == 503
    assert response.json()["checks"]["nats"] is False
    nats_server.start()
    while status != 200 and time.monotonic() < deadline + 10:
        await asyncio.sleep(0.1)
        status = (await ingest.http.get("/healthz")).status_code
    assert status == 200
