"""Issue #15 on the running stack (`shinchoku up`'s processes on SQLite): what ingest now carries, and what the
reporting side does with it.

Ingest's side must hold today: the admitted fact carries the broker's receipt time (hole 2), an agency's event
id is its own (hole 3), and copies of an admission on ACCEPTED are harmless to a reader that counts by
(agency, event_id) (hole 6, the log's property). Reporting judges on-time by that receipt time and keeps two
agencies' reports under one event id as two reports.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nats
import pytest
import sqlalchemy as sa
from nats.aio.client import Client

from contracts.events import AdmittedEvent
from contracts.streams import MSG_ID_HEADER, publish_stream
from shinchoku_runtime.testing import status_sequence
from tests.faults.observe import admin_connection, backlog
from tests.faults.stack import RunningStack

#: The quarter of the issue's example: FY2026Q1 (April–June 2026, on-time deadline 2026-07-30), reported now
#: (the broker's clock, December 2026 or later) with `reported_at` three days before the quarter's end.
BACKDATED_AT = "2026-06-27T17:00:00+09:00"


@dataclass(frozen=True)
class Lead:
    agency: str
    measure_id: str


def leads(stack: RunningStack) -> list[Lead]:
    """Every (agency, measure it leads) of the running catalog, in a stable order."""
    items = httpx.get(f"{stack.url('catalog')}/measures", params={"limit": 1000}, timeout=10).json()["items"]
    return sorted({Lead(a, m["id"]) for m in items for a in m["lead_agencies"]}, key=lambda x: (x.measure_id, x.agency))


#: Each fixture call takes leads no other call took, so that its report is that agency's effective report.
_TAKEN: set[Lead] = set()


def fresh_leads(stack: RunningStack, count: int) -> list[Lead]:
    """`count` leads of distinct agencies, from the end of the catalog, not used by this module before."""
    picked: list[Lead] = []
    for lead in reversed(leads(stack)):
        if lead not in _TAKEN and all(lead.agency != p.agency for p in picked):
            picked.append(lead)
            _TAKEN.add(lead)
            if len(picked) == count:
                return picked
    raise AssertionError("the catalog has no more leads to use")


def report(lead: Lead, *, fiscal_year: int, quarter: int, reported_at: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "measure_id": lead.measure_id,
        "agency": lead.agency,
        "fiscal_year": fiscal_year,
        "quarter": quarter,
        "status": "on_track",
        "reported_at": reported_at,
        **extra,
    }


async def publish(stack: RunningStack, lead: Lead, body: dict[str, Any]) -> int:
    """Publish as the agency itself, as a ministry's client would; the STATUS sequence."""
    nc = await nats.connect(
        stack.nats_url, user=lead.agency, password=stack.password(lead.agency), inbox_prefix=f"_INBOX_{lead.agency}"
    )
    try:
        subject = f"status.{lead.agency}.{lead.measure_id}"
        ack = await nc.jetstream().publish(
            subject, json.dumps(body).encode(), stream=publish_stream(subject), timeout=10
        )
        admin = await nats.connect(stack.nats_url, user="admin", password=stack.password("admin"))
        try:
            return await status_sequence(admin.jetstream(), subject, ack)
        finally:
            await admin.close()
    finally:
        await nc.close()


async def accepted_with(admin: Client, event_id: str, count: int, timeout: float = 30.0) -> list[Any]:
    """The ACCEPTED messages of `event_id` once there are `count` of them."""
    js = admin.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await js.stream_info("ACCEPTED")
        found = []
        for seq in range(max(1, info.state.first_seq, info.state.last_seq - 200), info.state.last_seq + 1):
            msg = await js.get_msg("ACCEPTED", seq)
            if json.loads(msg.data or b"{}")["event"]["event_id"] == event_id:
                found.append(msg)
        if len(found) >= count:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{len(found)} of {count} admissions of {event_id}"
        await asyncio.sleep(0.2)


async def reporting_caught_up(admin: Client, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (await backlog(admin))["reporting"] != 0:
        assert asyncio.get_running_loop().time() < deadline, "reporting did not consume ACCEPTED"
        await asyncio.sleep(0.2)


async def lead_item(stack: RunningStack, lead: Lead, fiscal_year: int, quarter: int) -> dict[str, Any]:
    """The lead entry of `lead.agency` in the measure item of `lead.measure_id` (reporting's HTTP)."""
    async with httpx.AsyncClient(base_url=stack.url("reporting"), timeout=10, auth=stack.auth) as http:
        page = (
            await http.get(f"/rollups/{fiscal_year}/{quarter}/measures", params={"agency": lead.agency, "limit": 1000})
        ).json()
    (item,) = [i for i in page["items"] if i["measure_id"] == lead.measure_id]
    (entry,) = [entry for entry in item["leads"] if entry["agency"] == lead.agency]
    return dict(entry)


@pytest.fixture
async def admin(hostile_stack: RunningStack) -> AsyncIterator[Client]:
    nc = await admin_connection(hostile_stack.nats_url, hostile_stack.password("admin"))
    try:
        yield nc
    finally:
        await nc.close()


# --- hole 2: timeliness by receipt time ----------------------------------------------------------------------


@pytest.fixture
async def backdated(hostile_stack: RunningStack, admin: Client) -> tuple[Lead, dict[str, Any], AdmittedEvent]:
    """A FY2026Q1 report published now, backdated to three days before the quarter's end; admitted, and served by
    reporting as that agency's effective report."""
    (lead,) = fresh_leads(hostile_stack, 1)
    body = report(lead, fiscal_year=2026, quarter=1, reported_at=BACKDATED_AT)
    await publish(hostile_stack, lead, body)
    (message,) = await accepted_with(admin, body["event_id"], 1)
    await reporting_caught_up(admin)
    assert (await lead_item(hostile_stack, lead, 2026, 1))["event_id"] == body["event_id"]
    return lead, body, AdmittedEvent.model_validate_json(message.data)


async def test_a_backdated_report_carries_when_the_platform_received_it(
    backdated: tuple[Lead, dict[str, Any], AdmittedEvent],
) -> None:
    _lead, body, admitted = backdated
    assert admitted.received_at is not None
    assert datetime.now(UTC) - admitted.received_at < timedelta(minutes=5)
    assert admitted.event.reported_at.isoformat() == BACKDATED_AT  # the reporter's claim, kept as sent
    assert admitted.received_at > admitted.event.reported_at + timedelta(days=30)
    assert admitted.backfilled is False
    assert str(admitted.event.event_id) == body["event_id"]


async def test_a_backdated_report_is_not_on_time(
    hostile_stack: RunningStack, backdated: tuple[Lead, dict[str, Any], AdmittedEvent]
) -> None:
    lead, _body, admitted = backdated
    entry = await lead_item(hostile_stack, lead, 2026, 1)
    assert entry["on_time"] is False
    assert entry["reported_at"].startswith("2026-06-27")
    assert entry["received_at"] == admitted.model_dump(mode="json")["received_at"]


# --- hole 3: an event id is an agency's own ------------------------------------------------------------------


@pytest.fixture
async def shared_id(hostile_stack: RunningStack, admin: Client) -> tuple[str, Lead, Lead]:
    """Two agencies' reports under one event_id, both admitted by ingest and consumed by reporting."""
    first, second = fresh_leads(hostile_stack, 2)
    event_id = str(uuid.uuid4())
    for lead in (first, second):
        await publish(
            hostile_stack,
            lead,
            report(lead, fiscal_year=2025, quarter=2, reported_at="2025-09-30T12:00:00+09:00") | {"event_id": event_id},
        )
    messages = await accepted_with(admin, event_id, 2)
    assert {(m.headers or {})[MSG_ID_HEADER] for m in messages} == {
        f"{first.agency}:{event_id}",
        f"{second.agency}:{event_id}",
    }
    await reporting_caught_up(admin)
    return event_id, first, second


async def test_ingest_admits_both_agencies_reports_under_one_event_id(
    hostile_stack: RunningStack, shared_id: tuple[str, Lead, Lead]
) -> None:
    event_id, first, second = shared_id
    async with httpx.AsyncClient(base_url=hostile_stack.url("ingest"), timeout=10, auth=hostile_stack.auth) as http:
        both = await http.get(f"/events/{event_id}")
        assert both.status_code == 409
        assert both.json()["agencies"] == sorted([first.agency, second.agency])
        for lead in (first, second):
            one = (await http.get(f"/events/{event_id}", params={"agency": lead.agency})).json()
            assert (one["outcome"], one["measure_id"]) == ("admitted", lead.measure_id)


async def test_reporting_keeps_both_agencies_reports_under_one_event_id(
    hostile_stack: RunningStack, shared_id: tuple[str, Lead, Lead]
) -> None:
    event_id, first, second = shared_id
    engine = sa.create_engine(f"sqlite:///{hostile_stack.data_dir / 'db' / 'reporting.sqlite'}")
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT agency FROM events WHERE event_id = :id"), {"id": event_id}).all()
    finally:
        engine.dispose()
    assert sorted(agency for (agency,) in stored) == sorted([first.agency, second.agency])
    for lead in (first, second):
        assert (await lead_item(hostile_stack, lead, 2025, 2))["event_id"] == event_id


# --- hole 6: copies on the canonical log are harmless ---------------------------------------------------------


async def test_a_copy_of_an_admission_outside_the_duplicate_window_is_counted_once(
    hostile_stack: RunningStack, admin: Client
) -> None:
    """The log's property: every ACCEPTED message carries (agency, event_id) and readers count by it. A copy the
    broker did not drop (published after the duplicate window: here, the same bytes under another Nats-Msg-Id)
    changes nothing reporting serves."""
    (lead,) = fresh_leads(hostile_stack, 1)
    body = report(lead, fiscal_year=2025, quarter=3, reported_at="2025-12-26T12:00:00+09:00")
    await publish(hostile_stack, lead, body)
    (original,) = await accepted_with(admin, body["event_id"], 1)
    await reporting_caught_up(admin)
    async with httpx.AsyncClient(base_url=hostile_stack.url("reporting"), timeout=10, auth=hostile_stack.auth) as http:
        before = (await http.get("/rollups/2025/3")).json()
        entry_before = await lead_item(hostile_stack, lead, 2025, 3)
        await admin.jetstream().publish(
            original.subject, original.data, stream="ACCEPTED", headers={MSG_ID_HEADER: f"copy-{uuid.uuid4()}"}
        )
        assert len(await accepted_with(admin, body["event_id"], 2)) == 2  # the log holds the copy
        await reporting_caught_up(admin)
        after = (await http.get("/rollups/2025/3")).json()
    assert entry_before["event_id"] == body["event_id"]
    assert await lead_item(hostile_stack, lead, 2025, 3) == entry_before
    for key in ("reported", "on_time", "by_status"):
        assert after[key] == before[key], key
