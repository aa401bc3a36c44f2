"""Alerts end to end on a real nats-server with a controllable clock, on SQLite and on PostgreSQL.

Ministries publish reports through ingest (their own NATS users), the secretariat returns a report with its bearer
token, and the clock moves through FY2024Q3's reporting window, its deadline, a target's due date and FY2024Q4's
deadline. Between the steps ingest restarts, reporting restarts (reports arrive while it is down) and the store is
rebuilt. At the end every alert condition has ended, and:

- every kind (the seven of DESIGN.md and kpi_jump) was raised, and each alert was raised exactly once and resolved
  exactly once on the ALERTS stream, each message valid against the committed JSON-schema snapshot;
- mof's NATS user heard its own alerts live, and was refused digital's;
- the webhook (a receiver started here, failing with 503 for a while, then recovering) got each raise and each
  resolve exactly once, in order per alert;
- `GET /alerts` lists them with their final states.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
from nats.aio.client import Client

from contracts.alerts import AlertKind
from contracts.catalog import SECTION_TITLES, Measure, Target
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import ALERTS_STREAM, agency_inbox_prefix, review_subject
from ingest.app import create_app as create_ingest
from ingest.config import IngestSettings
from reporting.rebuild import run_rebuild
from reporting.testing import put_catalog, reporting_settings, running_reporting, wait_caught_up
from shinchoku.client import AgencyPublisher, SecretariatPublisher
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_runtime.auth import AuthSettings
from shinchoku_runtime.natsserver import NatsServer

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "contracts" / "schemas" / "alert_event.v1.schema.json").read_text("utf-8")
)
Q2, Q3, Q4 = FiscalQuarter(2024, 2), FiscalQuarter(2024, 3), FiscalQuarter(2024, 4)
ETAX = Measure(
    id="1-25",
    section=1,
    section_title=SECTION_TITLES[1],
    title="e-Taxの利用促進",
    lead_agencies=["mof", "digital"],
    targets=[Target(index=0, text="e-Tax利用率 80％（2024年度末）", due_date=Q4.end, value=80, unit="％")],
)
VOLUNTEERS = Measure(
    id="4-1", section=4, section_title=SECTION_TITLES[4], title="デジタル推進委員", lead_agencies=["digital", "mic"]
)
CARDS = Measure(
    id="2-3", section=2, section_title=SECTION_TITLES[2], title="オンライン資格確認", lead_agencies=["mhlw"]
)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Receiver:
    """A webhook receiver: answers 503 while `failing`, records what it accepted."""

    failing: bool = True
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: int = 0
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if state.failing:
                state.refused += 1
                self.send_response(503)
            else:
                state.accepted.append((self.headers["Idempotency-Key"], body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()


@dataclass
class Scene:
    nats: NatsServer
    admin: Client
    clock: Clock
    tmp: Path
    issuer: EmbeddedIssuer
    sent: dict[str, str] = field(default_factory=dict)

    def ingest_settings(self) -> IngestSettings:
        return IngestSettings(
            nats_url=self.nats.plain_url,
            nats_user="ingest",
            nats_password=self.nats.passwords["ingest"],
            database_url=f"sqlite:///{self.tmp / 'ingest.sqlite'}",
            data_dir=self.tmp / "ingest",
            batch_wait=0.02,
            catalog_timeout=0.5,
        )

    async def report(
        self, agency: str, measure: Measure, q: FiscalQuarter, status: str, kpi: float | None = None
    ) -> str:
        event_id = str(uuid.uuid4())
        body: dict[str, Any] = {
            "event_id": event_id,
            "measure_id": measure.id,
            "agency": agency,
            "fiscal_year": q.fiscal_year,
            "quarter": q.quarter,
            "status": status,
            "reported_at": datetime.now(UTC).isoformat(),
        }
        if kpi is not None:
            body["kpis"] = [{"target": 0, "value": kpi, "as_of": q.end.isoformat()}]
        async with AgencyPublisher(
            self.nats.plain_url, agency=agency, password=self.nats.passwords[agency], timeout=5, retries=3
        ) as publisher:
            await publisher.publish_raw(f"status.{agency}.{measure.id}", json.dumps(body).encode())
        self.sent[f"{agency} {measure.id} {q.label}"] = event_id
        await asyncio.sleep(0.002)  # reported_at strictly increases: the later report is the effective one
        return event_id

    async def return_report(self, agency: str, measure: Measure, event_id: str) -> None:
        token = self.issuer.mint(principal_named("secretariat", "yamada"))
        review = {
            "review_id": str(uuid.uuid4()),
            "event_id": event_id,
            "decision": "returned",
            "comment": "KPIの値が前期から急変しています。根拠を確認のうえ再提出してください。",
            "reviewed_at": datetime.now(UTC).isoformat(),
            "reviewer": "重点計画事務局 山田",
        }
        async with SecretariatPublisher(
            self.nats.plain_url, password=self.nats.passwords["secretariat"], timeout=5, retries=3
        ) as publisher:
            await publisher.publish_raw(
                review_subject(agency, measure.id),
                json.dumps(review).encode(),
                headers={"Authorization": f"Bearer {token}"},
            )


async def alerts_on_stream(admin: Client) -> list[dict[str, Any]]:
    js = admin.jetstream()
    info = await js.stream_info(ALERTS_STREAM.name)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        msg = await js.get_msg(ALERTS_STREAM.name, seq)
        assert msg.data is not None
        out.append({"subject": msg.subject, **json.loads(msg.data)})
    return out


async def open_alerts(admin: Client) -> set[str]:
    state: dict[str, str] = {}
    for alert in await alerts_on_stream(admin):
        state[alert["alert_id"]] = alert["state"]
    return {alert_id for alert_id, s in state.items() if s == "raised"}


async def until_open(admin: Client, expected: set[str], what: str, timeout: float = 60) -> None:
    """Until exactly `expected` alerts are raised and not resolved on the stream."""
    deadline = time.monotonic() + timeout
    while True:
        found = await open_alerts(admin)
        if found == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: open alerts {sorted(found)}, expected {sorted(expected)}")
        await asyncio.sleep(0.1)


def ids(*parts: tuple[str, str, str, FiscalQuarter | None, int | None]) -> set[str]:
    out = set()
    for kind, agency, measure, q, target in parts:
        fy, n = (q.fiscal_year, q.quarter) if q is not None else ("-", "-")
        out.add(f"{kind}.{agency}.{measure}.{fy}.{n}.{'-' if target is None else target}")
    return out


@pytest.fixture
async def agency_ears(nats_server: NatsServer) -> AsyncIterator[tuple[list[dict[str, Any]], list[str]]]:
    """mof's NATS user listening to its own alerts, and trying to listen to digital's."""
    heard: list[dict[str, Any]] = []
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    async def on_alert(msg: Any) -> None:
        heard.append(json.loads(msg.data))

    nc = await nats.connect(
        nats_server.plain_url,
        user="mof",
        password=nats_server.passwords["mof"],
        inbox_prefix=agency_inbox_prefix("mof"),
        error_cb=on_error,
    )
    await nc.subscribe("alert.mof.>", cb=on_alert)
    await nc.subscribe("alert.digital.>", cb=on_alert)
    await nc.flush()
    try:
        yield heard, errors
    finally:
        await nc.close()


@pytest.mark.timeout(300)
async def test_each_alert_is_raised_once_and_resolved_once(
    nats_server: NatsServer,
    admin_nc: Client,
    database_url: str,
    tmp_path: Path,
    receiver: Receiver,
    agency_ears: tuple[list[dict[str, Any]], list[str]],
) -> None:
    await put_catalog(admin_nc, [ETAX, VOLUNTEERS, CARDS])
    clock = Clock(datetime(2024, 10, 10, 9, tzinfo=TOKYO))
    issuer = EmbeddedIssuer.prepare(tmp_path / "issuer")
    scene = Scene(nats_server, admin_nc, clock, tmp_path, issuer)
    auth = AuthSettings(mode="embedded", jwks_url=issuer.jwks_path.as_uri(), jwks_refresh_interval=0.2)
    settings = reporting_settings(
        nats_server.plain_url,
        nats_server.passwords["reporting"],
        database_url,
        tmp_path / "reporting",
        alert_tick_seconds=0.2,
        alert_min_interval=0.1,
        alerts_since="FY2024Q2",
        alert_webhook_url=receiver.url,
        alert_webhook_first_retry=0.1,
        alert_webhook_max_retry=0.4,
    )
    ingest = create_ingest(scene.ingest_settings(), auth=auth)
    ingest_life = ingest.router.lifespan_context(ingest)
    await ingest_life.__aenter__()
    try:
        async with running_reporting(settings, clock=clock) as reporting:
            # FY2024Q2, everyone on track; Q3 has not ended: nothing to say.
            await scene.report("mof", ETAX, Q2, "on_track", kpi=40)
            for agency, measure in (("digital", ETAX), ("digital", VOLUNTEERS), ("mic", VOLUNTEERS), ("mhlw", CARDS)):
                await scene.report(agency, measure, Q2, "on_track")
            await wait_caught_up(admin_nc)
            await asyncio.sleep(0.6)
            assert await open_alerts(admin_nc) == set()

            # 14 days before FY2024Q3's deadline (2025-01-30): every lead's report is due.
            clock.now = datetime(2025, 1, 17, 0, 0, 1, tzinfo=TOKYO)
            due = ids(
                ("report_due", "mof", "1-25", Q3, None),
                ("report_due", "digital", "1-25", Q3, None),
                ("report_due", "digital", "4-1", Q3, None),
                ("report_due", "mic", "4-1", Q3, None),
                ("report_due", "mhlw", "2-3", Q3, None),
            )
            await until_open(admin_nc, due, "Q3 due")
            # mof reports a KPI jump and a delay; on 4-1 the co-leads disagree and the status worsened.
            jumped = await scene.report("mof", ETAX, Q3, "delayed", kpi=4)
            await scene.report("digital", VOLUNTEERS, Q3, "delayed")
            await scene.report("mic", VOLUNTEERS, Q3, "on_track")
            after_reports = ids(
                ("report_due", "digital", "1-25", Q3, None),
                ("report_due", "mhlw", "2-3", Q3, None),
                ("kpi_jump", "mof", "1-25", Q3, 0),
                ("worsened", "mof", "1-25", Q3, None),
                ("worsened", "digital", "1-25", Q3, None),
                ("worsened", "digital", "4-1", Q3, None),
                ("worsened", "mic", "4-1", Q3, None),
                ("co_lead_disagreement", "digital", "4-1", Q3, None),
                ("co_lead_disagreement", "mic", "4-1", Q3, None),
            )
            await until_open(admin_nc, after_reports, "Q3 reports")

            # Ingest restarts; the secretariat's review waits on STATUS meanwhile and is decided after.
            await ingest_life.__aexit__(None, None, None)
            await scene.return_report("mof", ETAX, jumped)
            ingest = create_ingest(scene.ingest_settings(), auth=auth)
            ingest_life = ingest.router.lifespan_context(ingest)
            await ingest_life.__aenter__()
            returned = ids(("returned", "mof", "1-25", Q3, None))
            await until_open(admin_nc, after_reports | returned, "returned")

            # The deadline passes: due becomes missing.
            clock.now = datetime(2025, 1, 31, 0, 0, 1, tzinfo=TOKYO)
            missing = ids(("report_missing", "digital", "1-25", Q3, None), ("report_missing", "mhlw", "2-3", Q3, None))
            after_deadline = (
                (
                    after_reports
                    - ids(*[("report_due", a, m, Q3, None) for a, m in (("digital", "1-25"), ("mhlw", "2-3"))])
                )
                | returned
                | missing
            )
            await until_open(admin_nc, after_deadline, "Q3 deadline")

        # Reporting is down while mof corrects its returned report and digital reports late.
        await scene.report("mof", ETAX, Q3, "on_track", kpi=60)
        await scene.report("digital", ETAX, Q3, "on_track")
        receiver.failing = False  # the webhook recovers while reporting is down
        async with running_reporting(settings, clock=clock) as reporting:
            corrected = ids(
                ("report_missing", "mhlw", "2-3", Q3, None),
                ("worsened", "digital", "4-1", Q3, None),
                ("worsened", "mic", "4-1", Q3, None),
                ("co_lead_disagreement", "digital", "4-1", Q3, None),
                ("co_lead_disagreement", "mic", "4-1", Q3, None),
            )
            await until_open(admin_nc, corrected, "after the reporting restart")

            # The e-Tax target (80 % by 2025-03-31) is past due at 60 %: overdue for both leads.
            clock.now = datetime(2025, 4, 1, 9, tzinfo=TOKYO)
            overdue = ids(("target_overdue", "mof", "1-25", None, 0), ("target_overdue", "digital", "1-25", None, 0))
            await until_open(admin_nc, corrected | overdue, "target overdue")

            # After FY2024Q4's deadline: nobody reported Q4, and mhlw has gone silent for two quarters.
            clock.now = datetime(2025, 5, 1, 0, 0, 1, tzinfo=TOKYO)
            q4_missing = ids(
                *[
                    ("report_missing", a, m, Q4, None)
                    for a, m in (
                        ("mof", "1-25"),
                        ("digital", "1-25"),
                        ("digital", "4-1"),
                        ("mic", "4-1"),
                        ("mhlw", "2-3"),
                    )
                ]
            )
            stale = ids(("stale", "mhlw", "2-3", None, None))
            await until_open(admin_nc, corrected | overdue | q4_missing | stale, "Q4 deadline")

            # Everyone reports; the target is met; mhlw also sends its late Q3 report.
            await scene.report("mof", ETAX, Q4, "on_track", kpi=80)
            for agency, measure in (("digital", ETAX), ("digital", VOLUNTEERS), ("mic", VOLUNTEERS), ("mhlw", CARDS)):
                await scene.report(agency, measure, Q4, "on_track")
            await scene.report("mhlw", CARDS, Q3, "on_track")
            await until_open(admin_nc, set(), "all reported")

            # A rebuild of the store changes nothing.
            before = len(await alerts_on_stream(admin_nc))
            result = await run_rebuild(settings, progress=False)
            assert result is not None
            reporting.service.alerts.notify()
            await asyncio.sleep(1.0)
            await wait_caught_up(admin_nc)
            assert len(await alerts_on_stream(admin_nc)) == before

            listed = (await reporting.http.get("/alerts", params={"limit": 1000})).json()
            await _check_everything(admin_nc, receiver, agency_ears, listed)
    finally:
        await ingest_life.__aexit__(None, None, None)


async def _check_everything(
    admin: Client, receiver: Receiver, ears: tuple[list[dict[str, Any]], list[str]], listed: dict[str, Any]
) -> None:
    on_stream = await alerts_on_stream(admin)
    for alert in on_stream:
        subject = alert.pop("subject")
        assert subject == f"alert.{alert['agency']}.{alert['kind']}"
        jsonschema.validate(alert, SCHEMA)
    changes = Counter((a["alert_id"], a["state"]) for a in on_stream)
    alert_ids = {a["alert_id"] for a in on_stream}
    assert all(changes[(i, "raised")] == 1 and changes[(i, "resolved")] == 1 for i in alert_ids), changes
    assert {a["kind"] for a in on_stream} == {k.value for k in AlertKind}
    print(  # noqa: T201 - the figure in the test's output
        f"\n{len(alert_ids)} alerts, each raised once and resolved once: {Counter(a['kind'] for a in on_stream if a['state'] == 'raised')}"
    )

    # mof heard its own alerts live, and nothing of digital's: its subscription to them was refused.
    heard, errors = ears
    mine = [a for a in on_stream if a["agency"] == "mof"]
    deadline = time.monotonic() + 10
    while len(heard) < len(mine) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert sorted((a["alert_id"], a["state"]) for a in heard) == sorted((a["alert_id"], a["state"]) for a in mine)
    assert any('permissions violation for subscription to "alert.digital.>"' in e.lower() for e in errors), errors

    # The webhook: refused for a while, then each change exactly once, a raise before its resolve.
    deadline = time.monotonic() + 30
    while len(receiver.accepted) < len(on_stream) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    keys = [key for key, _ in receiver.accepted]
    assert receiver.refused > 0
    assert sorted(keys) == sorted(f"{a['alert_id']}:{a['state']}:1" for a in on_stream)
    assert all(keys.index(f"{i}:raised:1") < keys.index(f"{i}:resolved:1") for i in alert_ids)
    assert all(isinstance(body["text"], str) and body["text"] for _, body in receiver.accepted)

    # GET /alerts as the service answers it: every alert, resolved.
    assert listed["total"] == len(alert_ids)
    assert {a["state"] for a in listed["items"]} == {"resolved"}
