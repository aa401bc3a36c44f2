"""Test and benchmark support: a synthetic catalog, admitted events as ingest publishes them, fast loading.

Nothing here runs in the service; tests and `bench/reporting.py` use it to stand in for the catalog
(the CATALOG bucket) and for ingest (AdmittedEvent JSON on ACCEPTED, as the admin user).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType

from contracts.agencies import Agency
from contracts.catalog import SECTION_TITLES, Measure, Target
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import ACCEPTED_STREAM, CATALOG_BUCKET, MSG_ID_HEADER, REPORTING_DURABLE, accepted_subject
from reporting.alerts.service import Clock, system_clock
from reporting.app import ReportingService, create_app
from reporting.config import ReportingSettings

STATUSES = ("not_started", "on_track", "at_risk", "delayed", "completed", "suspended")

#: Measures per section in the plan (320 in all).
SECTION_SIZES = {1: 156, 2: 80, 3: 25, 4: 20, 5: 22, 6: 17}


def synthetic_measures(count: int = 320, *, seed: int = 1) -> list[Measure]:
    """Measures shaped like the plan's: sections in proportion, one to three leads, zero to three targets."""
    rnd = random.Random(seed)
    agencies = list(Agency)
    weights = [30, 12, 10, 8, 7, 7, 6, 3, 6, 3, 3, 3, 2, 3, 2, 1, 1]
    total = sum(SECTION_SIZES.values())
    out: list[Measure] = []
    for section, size in SECTION_SIZES.items():
        for n in range(1, max(1, round(size * count / total)) + 1):
            if len(out) >= count:
                break
            leads: list[Agency] = []
            while len(leads) < rnd.choice((1, 1, 1, 2, 2, 3)):
                pick = rnd.choices(agencies, weights)[0]
                if pick not in leads:
                    leads.append(pick)
            targets = [
                Target(
                    index=i,
                    text=f"指標{i + 1}（{rnd.choice((50, 80, 100))}％ {rnd.choice((2024, 2025, 2026, 2030))}年度）",
                    due_date=rnd.choice((date(2025, 3, 31), date(2026, 3, 31), date(2027, 3, 31), date(2031, 3, 31))),
                    value=float(rnd.choice((50, 80, 100))),
                    unit="％",
                )
                for i in range(rnd.choice((0, 1, 1, 2, 3)))
            ]
            out.append(
                Measure(
                    id=f"{section}-{n}",
                    section=section,
                    section_title=SECTION_TITLES[section],
                    title=f"施策 {section}-{n}",
                    lead_agencies=leads,
                    targets=targets,
                )
            )
    return out


async def put_catalog(nc: Client, measures: Iterable[Measure]) -> None:
    """Stand in for the catalog: create the CATALOG bucket (if needed) and put Measure JSON in it."""
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=CATALOG_BUCKET, history=1, storage=StorageType.FILE))
    for m in measures:
        await kv.put(m.id, m.model_dump_json().encode())


@dataclass(frozen=True)
class Admission:
    """One AdmittedEvent as ingest would publish it (`event` is the StatusEvent JSON object)."""

    event: dict[str, Any]
    admitted_at: datetime
    #: When the broker received the report (`AdmittedEvent.received_at`); None as from an ingest before that field.
    received_at: datetime | None = None

    @property
    def judged_at(self) -> datetime:
        """What on-time is judged by (DESIGN.md "Rollup semantics"): receipt, else (older ingest) admission."""
        return self.received_at or self.admitted_at

    @property
    def event_id(self) -> str:
        value: str = self.event["event_id"]
        return value

    @property
    def subject(self) -> str:
        return accepted_subject(self.event["agency"], self.event["measure_id"])

    def body(self) -> bytes:
        doc = {
            "event": self.event,
            "admitted_at": self.admitted_at.astimezone(UTC).isoformat(),
            "subject": f"status.{self.event['agency']}.{self.event['measure_id']}",
        }
        if self.received_at is not None:
            doc["received_at"] = self.received_at.astimezone(UTC).isoformat()
        return json.dumps(doc, ensure_ascii=False).encode()


def status_event(
    *,
    measure_id: str,
    agency: str,
    quarter: FiscalQuarter,
    status: str,
    reported_at: datetime,
    event_id: str | None = None,
    progress: float | None = None,
    kpis: Sequence[dict[str, Any]] = (),
    note: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "schema_version": 1,
        "measure_id": measure_id,
        "agency": agency,
        "fiscal_year": quarter.fiscal_year,
        "quarter": quarter.quarter,
        "status": status,
        "reported_at": reported_at.isoformat(),
    }
    if progress is not None:
        event["progress"] = progress
    if kpis:
        event["kpis"] = list(kpis)
    if note is not None:
        event["note"] = note
    return event


def random_admissions(
    measures: Sequence[Measure],
    quarters: Sequence[FiscalQuarter],
    count: int,
    *,
    seed: int = 7,
    admitted_from: datetime | None = None,
) -> list[Admission]:
    """`count` admitted reports by the measures' leads on the quarters, with corrections and late reports."""
    rnd = random.Random(seed)
    start = admitted_from or datetime(2025, 1, 1, tzinfo=UTC)
    out = []
    for i in range(count):
        m = measures[rnd.randrange(len(measures))]
        q = quarters[rnd.randrange(len(quarters))]
        reported = q.end_at + timedelta(days=rnd.uniform(-20, 45), seconds=rnd.randrange(86400))
        kpis = []
        if m.targets and rnd.random() < 0.3:
            t = rnd.randrange(len(m.targets))
            kpis.append({"target": t, "value": round(rnd.uniform(0, 100), 1), "as_of": q.end.isoformat()})
        event = status_event(
            measure_id=m.id,
            agency=str(rnd.choice(m.lead_agencies)),
            quarter=q,
            status=rnd.choice(STATUSES),
            reported_at=reported.astimezone(TOKYO),
            event_id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            progress=round(rnd.uniform(0, 100), 1),
            kpis=kpis,
            note="進捗は概ね計画どおり" if rnd.random() < 0.2 else None,
        )
        # Received a little after the reporter says it reported (seconds to two days): some late, most not.
        received = reported + timedelta(seconds=rnd.randrange(2 * 86400))
        out.append(Admission(event, start + timedelta(milliseconds=i), received.astimezone(UTC)))
    return out


async def publish_admissions(
    nc: Client, admissions: Iterable[Admission], *, window: int = 20_000, msg_id: bool = True
) -> int:
    """Publish onto ACCEPTED as ingest does (Nats-Msg-Id = event id), many in flight; returns the count acked."""
    js = nc.jetstream(publish_async_max_pending=window)
    sent = 0
    for a in admissions:
        headers = {MSG_ID_HEADER: a.event_id} if msg_id else None
        await js.publish_async(a.subject, a.body(), headers=headers, stream=ACCEPTED_STREAM.name)
        sent += 1
    await js.publish_async_completed()
    return sent


async def bulk_publish(
    nc: Client, messages: Iterable[tuple[str, bytes, dict[str, str]]], *, window: int = 50_000, timeout: float = 600
) -> int:
    """Publish a great many messages to ACCEPTED fast: plain publishes with one reply inbox, acks counted.

    Returns how many were published, once the stream has acknowledged every one; raises if any was refused
    or the acknowledgements do not all arrive within `timeout` seconds of the last publish.
    """
    inbox = nc.new_inbox()
    acked = 0
    errors: list[str] = []
    room = asyncio.Semaphore(window)

    async def on_ack(msg: Msg) -> None:
        nonlocal acked
        if b'"error"' in msg.data:
            errors.append(msg.data.decode())
        acked += 1
        room.release()

    sub = await nc.subscribe(inbox + ".*", cb=on_ack)
    sent = 0
    try:
        for subject, body, headers in messages:
            await room.acquire()
            await nc.publish(subject, body, reply=f"{inbox}.{sent}", headers=headers)
            sent += 1
        deadline = time.monotonic() + timeout
        while acked < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await sub.unsubscribe()
    if errors:
        raise RuntimeError(f"{len(errors)} publishes refused, e.g. {errors[0]}")
    if acked < sent:
        raise TimeoutError(f"only {acked:,} of {sent:,} publishes acknowledged after {timeout}s")
    return sent


async def wait_caught_up(nc: Client, *, durable: str = REPORTING_DURABLE, timeout: float = 60.0) -> None:
    """Until the durable consumer has every message of ACCEPTED delivered and acknowledged."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await js.consumer_info(ACCEPTED_STREAM.name, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
        except Exception:  # the consumer may not exist yet
            info = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer {durable} not caught up after {timeout}s: {info}")
        await asyncio.sleep(0.05)


@dataclass
class RunningReporting:
    app: FastAPI
    service: ReportingService
    http: httpx.AsyncClient
    settings: ReportingSettings


def reporting_settings(
    nats_url: str, password: str, database_url: str, data_dir: Path, **overrides: Any
) -> ReportingSettings:
    """Settings for a reporting service on a test or benchmark nats-server (as the `reporting` user)."""
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "nats_user": "reporting",
        "nats_password": password,
        "database_url": database_url,
        "data_dir": data_dir,
        "retry_delay": 0.5,
    }
    values.update(overrides)
    return ReportingSettings(**values)


@asynccontextmanager
async def running_reporting(
    settings: ReportingSettings, *, ready: bool = True, clock: Clock = system_clock
) -> AsyncIterator[RunningReporting]:
    """The reporting app in this process (lifespan entered) with an in-process HTTP client; `clock` tells the
    alerts the time.

    With `ready`, waits until /healthz answers 200 (database, NATS, catalog and consumer up). The client reads
    as the secretariat (open quarters, notes, names; `/metrics` as the operator), with tokens of an embedded
    issuer prepared in the data directory, as `shinchoku up` does.
    """
    # The stack's issuer, as tests and benchmarks use it (the service itself only verifies).
    from shinchoku.issuer import EmbeddedIssuer, StackAuth

    auth = StackAuth(EmbeddedIssuer.prepare(settings.data_dir))
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reporting", auth=auth) as http:
            if ready:
                await wait_healthy(http)
            yield RunningReporting(app, app.state.service, http, settings)


async def wait_healthy(http: httpx.AsyncClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = await http.get("/healthz")
            if response.status_code == 200:
                return
            detail = response.text
        except httpx.HTTPError as e:
            detail = str(e)
        if time.monotonic() > deadline:
            raise TimeoutError(f"reporting not healthy after {timeout}s: {detail}")
        await asyncio.sleep(0.05)
