"""Issue #15, holes 2, 3 and 6 on ingest's side.

- Hole 2: the admitted fact carries the broker's receipt time of the STATUS message (`received_at`), which
  timeliness is judged by, next to the reporter's own `reported_at`; and `backfilled`.
- Hole 3: an event_id is an agency's own: claims are keyed by (agency, event_id), ACCEPTED's `Nats-Msg-Id` is
  agency-qualified, and `/events/{id}` answers per agency.
- Hole 6: ACCEPTED's and REJECTED's duplicate windows cover ingest's whole retry horizon, and ingest refuses to
  run with settings or a live stream that break that.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from pydantic import ValidationError

from contracts.events import AdmittedEvent
from contracts.streams import ACCEPTED_STREAM, REJECTED_STREAM
from ingest.config import IngestSettings
from ingest.settling import retry_delay
from ingest.testing import encode, event_body, stream_messages, wait_for_count, wait_for_event
from shinchoku.client import AgencyPublisher
from shinchoku_runtime.testing import status_sequence

Publishers = Callable[[str], Awaitable[AgencyPublisher]]


@pytest.fixture
def ingest_db_url(database_url: str) -> str:
    """The store-touching tests here run on SQLite and on PostgreSQL."""
    return database_url


# --- hole 2: receipt time ----------------------------------------------------------------------------------------


async def test_the_admitted_fact_carries_the_brokers_receipt_time(
    ingest: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """`received_at` on ACCEPTED is the STATUS message's own timestamp (not the reporter's claim, not ingest's
    clock), the same as `/events/{id}` says; `reported_at` stays as the reporter sent it; not backfilled."""
    mof = await publisher_for("mof")
    body = event_body(reported_at="2024-12-20T17:00:00+09:00")
    ack = await mof.publish_raw("status.mof.1-25", encode(body))
    assert await wait_for_count(admin_nc, "ACCEPTED", 1) == 1
    status = await admin_nc.jetstream().get_msg(
        "STATUS", await status_sequence(admin_nc.jetstream(), "status.mof.1-25", ack)
    )
    (accepted,) = await stream_messages(admin_nc, "ACCEPTED")
    raw = json.loads(accepted.data)
    admitted = AdmittedEvent.model_validate_json(accepted.data)
    assert admitted.received_at is not None
    assert status.time is not None
    assert abs(admitted.received_at - status.time) < timedelta(milliseconds=1)
    assert raw["event"]["reported_at"] == "2024-12-20T17:00:00+09:00"
    assert raw["backfilled"] is False
    found = await wait_for_event(ingest.http, body["event_id"])
    assert found["received_at"] == raw["received_at"]


# --- hole 3: event ids are an agency's own -----------------------------------------------------------------------


async def test_an_agency_cannot_block_anothers_report_by_using_its_event_id_first(
    ingest: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """mof publishes an event_id first (learned from /rejections, say); mhlw's own report with that id is still
    admitted, reaches ACCEPTED (the broker does not take it for mof's copy), and each agency's resend is its
    own duplicate. `/events/{id}` names both agencies until asked for one."""
    mof = await publisher_for("mof")
    mhlw = await publisher_for("mhlw")
    squatted = event_body(agency="mof", measure_id="1-25")
    victim = event_body(agency="mhlw", measure_id="2-3", event_id=squatted["event_id"], status="delayed")
    await mof.publish_raw("status.mof.1-25", encode(squatted))
    assert (await wait_for_event(ingest.http, squatted["event_id"]))["agency"] == "mof"
    await mhlw.publish_raw("status.mhlw.2-3", encode(victim))
    assert await wait_for_count(admin_nc, "ACCEPTED", 2) == 2
    await mhlw.publish_raw("status.mhlw.2-3", encode(victim))
    await mof.publish_raw("status.mof.1-25", encode(squatted))
    await asyncio.sleep(1.0)
    js = admin_nc.jetstream()
    assert (await js.stream_info("REJECTED")).state.messages == 0
    accepted = await stream_messages(admin_nc, "ACCEPTED")
    assert [(m.headers or {})["Nats-Msg-Id"] for m in accepted] == [
        f"mof:{squatted['event_id']}",
        f"mhlw:{squatted['event_id']}",
    ]
    assert [AdmittedEvent.model_validate_json(m.data).event.agency.value for m in accepted] == ["mof", "mhlw"]

    both = await ingest.http.get(f"/events/{squatted['event_id']}")
    assert both.status_code == 409
    assert both.json()["agencies"] == ["mhlw", "mof"]
    for agency, subject in (("mof", "status.mof.1-25"), ("mhlw", "status.mhlw.2-3")):
        one = await ingest.http.get(f"/events/{squatted['event_id']}", params={"agency": agency})
        assert one.status_code == 200, one.text
        found = one.json()
        assert (found["outcome"], found["agency"], found["subject"]) == ("admitted", agency, subject)
        assert [a["outcome"] for a in found["attempts"]] == ["duplicate"]
    nobody = await ingest.http.get(f"/events/{squatted['event_id']}", params={"agency": "env"})
    assert nobody.status_code == 404
    unknown = await ingest.http.get(f"/events/{squatted['event_id']}", params={"agency": "nope"})
    assert unknown.status_code == 400


async def test_a_conflicting_resend_is_still_refused_within_one_agency(
    ingest: Any, publisher_for: Publishers, admin_nc: Client
) -> None:
    """Keying claims by agency changes nothing inside an agency: the same id with other content conflicts."""
    mof = await publisher_for("mof")
    body = event_body()
    await mof.publish_raw("status.mof.1-25", encode(body))
    await wait_for_event(ingest.http, body["event_id"])
    await mof.publish_raw("status.mof.1-25", encode({**body, "status": "delayed"}))
    assert await wait_for_count(admin_nc, "REJECTED", 1) == 1
    (rejected,) = await stream_messages(admin_nc, "REJECTED")
    assert json.loads(rejected.data)["reason"] == "duplicate_conflict"
    single = (await ingest.http.get(f"/events/{body['event_id']}")).json()  # one agency: no need to say which
    assert single["outcome"] == "admitted"


# --- hole 6: the duplicate windows cover the retry horizon -------------------------------------------------------


def consumer_retry_span(settings: IngestSettings) -> float:
    """The longest a STATUS message can keep being retried by the consumer, from first delivery to last publish:
    each gap between deliveries is at most a batch held up to `ack_wait` plus the nak delay of that delivery
    plus a pause of the failing consumer (at most 10 s), and the last delivery's publish may take
    `publish_timeout`."""
    gaps = sum(
        settings.ack_wait + retry_delay(n, settings.retry_delay_max) + 10.0 for n in range(1, settings.max_deliver)
    )
    return gaps + settings.publish_timeout


def test_the_duplicate_windows_cover_the_default_retry_horizon() -> None:
    span = consumer_retry_span(IngestSettings())
    assert ACCEPTED_STREAM.duplicate_window_seconds >= span, (ACCEPTED_STREAM.duplicate_window_seconds, span)
    assert REJECTED_STREAM.duplicate_window_seconds >= span, (REJECTED_STREAM.duplicate_window_seconds, span)


def test_settings_whose_retry_horizon_outlasts_the_window_are_refused() -> None:
    """Refused at start-up, naming both figures: the window of the shared definition and these settings' span."""
    span = consumer_retry_span(IngestSettings.model_construct(**{**IngestSettings().model_dump(), "max_deliver": 500}))
    with pytest.raises(ValidationError) as refused:
        IngestSettings(max_deliver=500)
    text = str(refused.value)
    assert "duplicate window" in text
    assert f"{ACCEPTED_STREAM.duplicate_window_seconds:.0f} s" in text
    assert f"{span:.0f} s" in text


def test_the_retry_horizon_is_the_consumers_retry_span() -> None:
    from ingest.config import retry_horizon

    cases: list[dict[str, Any]] = [{}, {"max_deliver": 3, "retry_delay_max": 1}, {"ack_wait": 5, "publish_timeout": 2}]
    for overrides in cases:
        settings = IngestSettings(**overrides)
        assert retry_horizon(settings) == pytest.approx(consumer_retry_span(settings))


async def test_ingest_refuses_a_live_stream_whose_window_is_shorter_than_its_horizon(admin_nc: Client) -> None:
    from ingest.config import DuplicateWindowTooShort, check_duplicate_windows

    js = admin_nc.jetstream()
    info = await js.stream_info("ACCEPTED")
    short: StreamConfig = info.config
    short.duplicate_window = 120.0
    await js.update_stream(short)
    settings = IngestSettings()
    with pytest.raises(DuplicateWindowTooShort) as refused:
        await check_duplicate_windows(js, settings)
    assert "ACCEPTED" in str(refused.value)
    assert "120 s" in str(refused.value)
    assert f"{retry_horizon_of(settings):.0f} s" in str(refused.value)


def retry_horizon_of(settings: IngestSettings) -> float:
    from ingest.config import retry_horizon

    return retry_horizon(settings)
