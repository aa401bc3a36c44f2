"""A running reporting service with demo-like data, and Debian's Chromium driven headless by Playwright.

The stack: a real nats-server, the 320 parsed measures in the CATALOG bucket, the demo's reports for
FY2024Q1–Q3 published onto ACCEPTED as ingest would (AdmittedEvent, Nats-Msg-Id = event id), and
`python -m reporting` as a subprocess consuming them. Browser tests skip, saying why, without Chromium.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from nats.aio.client import Client
from playwright.sync_api import sync_playwright

from catalog.plan import bundled_plan_text, parse_plan
from contracts.catalog import Measure
from contracts.events import SEVERITY_ORDER, UNREPORTED, AdmittedEvent, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import CATALOG_BUCKET, MSG_ID_HEADER, accepted_subject
from reporting.cycle.testing import admitted_close, admitted_review, publish_close, publish_review
from reporting.testing import wait_caught_up
from shinchoku.demo_plan import ADMITTED, plan_reports
from shinchoku.issuer import EmbeddedIssuer, StackAuth, principal_named
from shinchoku_runtime.natsclient import connect, ensure_streams
from shinchoku_runtime.natsserver import NatsServer, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"

#: The demo as it stood on this day: FY2024Q1–Q3 have ended, Q3's reporting deadline (2025-03-02) has passed.
DEMO_NOW = datetime(2025, 3, 20, 12, tzinfo=TOKYO)
DEMO_SEED = 20240401
QUARTER = FiscalQuarter(2024, 3)

T = TypeVar("T")

# --- What the dashboard must show, computed independently from the admitted events (DESIGN.md) ---

STATUSES = (*(s.value for s in SEVERITY_ORDER), UNREPORTED)
_RANK = {s.value: i for i, s in enumerate(SEVERITY_ORDER)}


@dataclass
class Tally:
    measures_total: int = 0
    reported: int = 0
    on_time: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))

    def add(self, status: str, reports: Sequence[StatusEvent], quarter: FiscalQuarter) -> None:
        self.measures_total += 1
        self.by_status[status] += 1
        if reports:
            self.reported += 1
            if all(quarter.is_on_time(r.reported_at) for r in reports):
                self.on_time += 1


def effective_reports(
    admitted: Iterable[AdmittedEvent], quarter: FiscalQuarter, as_of: datetime | None = None
) -> dict[tuple[str, str], StatusEvent]:
    """Per (measure, agency): the report with the greatest reported_at, ties to the greater event_id."""
    best: dict[tuple[str, str], StatusEvent] = {}
    for a in admitted:
        e = a.event
        if (e.fiscal_year, e.quarter) != (quarter.fiscal_year, quarter.quarter):
            continue
        if as_of is not None and a.admitted_at > as_of:
            continue
        key = (e.measure_id, e.agency.value)
        current = best.get(key)
        if current is None or (e.reported_at, str(e.event_id)) > (current.reported_at, str(current.event_id)):
            best[key] = e
    return best


def combined(statuses: Iterable[str]) -> str:
    ranked = sorted(statuses, key=_RANK.__getitem__)
    return ranked[0] if ranked else UNREPORTED


@dataclass
class Expected:
    whole: Tally
    by_agency: dict[str, Tally]
    by_section: dict[int, Tally]
    status_of: dict[str, str]
    agency_status_of: dict[tuple[str, str], str]
    by_agency_section: dict[tuple[str, int], Tally]


def expected(
    measures: Sequence[Measure],
    admitted: Iterable[AdmittedEvent],
    quarter: FiscalQuarter,
    as_of: datetime | None = None,
) -> Expected:
    eff = effective_reports(admitted, quarter, as_of)
    whole = Tally()
    by_agency: dict[str, Tally] = {}
    by_section: dict[int, Tally] = {}
    by_agency_section: dict[tuple[str, int], Tally] = {}
    status_of: dict[str, str] = {}
    agency_status_of: dict[tuple[str, str], str] = {}
    for m in measures:
        reports = [eff[(m.id, a.value)] for a in m.lead_agencies if (m.id, a.value) in eff]
        status = combined(r.status.value for r in reports)
        status_of[m.id] = status
        whole.add(status, reports, quarter)
        by_section.setdefault(m.section, Tally()).add(status, reports, quarter)
        for a in m.lead_agencies:
            own = eff.get((m.id, a.value))
            own_status = own.status.value if own else UNREPORTED
            agency_status_of[(m.id, a.value)] = own_status
            by_agency.setdefault(a.value, Tally()).add(own_status, [own] if own else [], quarter)
            by_agency_section.setdefault((a.value, m.section), Tally()).add(own_status, [own] if own else [], quarter)
    return Expected(whole, by_agency, by_section, status_of, agency_status_of, by_agency_section)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason=f"{CHROMIUM} is absent: install Debian's chromium (see .ci/run) to run browser tests"
    )
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh loop in a thread (Playwright's sync API owns this thread's loop)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def admitted(event: StatusEvent, admitted_at: datetime | None = None) -> AdmittedEvent:
    """The event as ingest would admit it: a minute after it was reported unless told otherwise."""
    return AdmittedEvent(
        event=event,
        admitted_at=admitted_at or event.reported_at + timedelta(minutes=1),
        subject=f"status.{event.agency.value}.{event.measure_id}",
    )


@dataclass
class Stack:
    directory: Path
    nats: NatsServer
    base_url: str
    measures: list[Measure]
    events: list[AdmittedEvent]
    process: subprocess.Popen[bytes] | None = None
    #: Where the dashboard must link event ids (ingest is not running here: only the links are checked).
    ingest_url: str = "http://ingest.example.test:8002"
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "reporting.log"
        # The service verifies tokens of this issuer (its data directory's, as under `shinchoku up`).
        self.issuer = EmbeddedIssuer.prepare(self.directory / "data")
        self.auth = StackAuth(self.issuer)

    def token(self, principal: str = "secretariat") -> str:
        return self.issuer.mint(principal_named(principal, "browser-test"), ttl=timedelta(hours=1))

    def publish(self, events: list[AdmittedEvent]) -> None:
        """Publish admitted events onto ACCEPTED as ingest does, and remember them for the expectations."""
        run_async(_publish(self.nats, events))
        self.events.extend(events)

    def review(self, event: StatusEvent, decision: str, comment: str | None = None) -> None:
        """The secretariat's review of a report, admitted (published on ACCEPTED as ingest does)."""
        review = admitted_review(
            event_id=str(event.event_id), agency=event.agency.value, measure_id=event.measure_id,
            fiscal_year=event.fiscal_year, quarter=event.quarter, decision=decision, comment=comment,
            admitted_at=datetime.now(UTC),
        )  # fmt: skip
        run_async(_with_admin(self.nats, lambda nc: publish_review(nc, review)))

    def close(self, quarter: FiscalQuarter) -> None:
        close = admitted_close(fiscal_year=quarter.fiscal_year, quarter=quarter.quarter, admitted_at=datetime.now(UTC))
        run_async(_with_admin(self.nats, lambda nc: publish_close(nc, close)))

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not so after {timeout}s\n{self.log_tail()}")
            time.sleep(0.2)

    def expected(self, quarter: FiscalQuarter, as_of: datetime | None = None) -> Expected:
        return expected(self.measures, self.events, quarter, as_of)

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(self.base_url + path, params=params, timeout=10, auth=self.auth)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text("utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def wait_for_reported(self, quarter: FiscalQuarter, reported: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                r = self.get(f"/rollups/{quarter.fiscal_year}/{quarter.quarter}")
                last = r.json().get("reported") if r.status_code == 200 else r.text
                if last == reported:
                    return
            except httpx.HTTPError as e:
                last = e
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(
            f"reporting never showed {reported} reported in {quarter} (last: {last})\n{self.log_tail()}"
        )


async def _publish(nats: NatsServer, events: list[AdmittedEvent]) -> None:
    nc = await connect(nats.plain_url, name="browser-test", user="admin", password=nats.passwords["admin"])
    try:
        js = nc.jetstream()
        for i in range(0, len(events), 200):
            chunk = events[i : i + 200]
            await asyncio.gather(
                *(
                    js.publish(
                        accepted_subject(a.event.agency, a.event.measure_id),
                        a.model_dump_json().encode(),
                        headers={MSG_ID_HEADER: str(a.event.event_id)},
                    )
                    for a in chunk
                )
            )
    finally:
        await nc.close()


async def _with_admin(nats: NatsServer, act: Callable[[Client], Awaitable[None]]) -> None:
    nc = await connect(nats.plain_url, name="browser-test-cycle", user="admin", password=nats.passwords["admin"])
    try:
        await act(nc)
    finally:
        await nc.close()


async def _seed_catalog(nats: NatsServer, measures: list[Measure]) -> None:
    nc = await connect(nats.plain_url, name="browser-test-seed", user="admin", password=nats.passwords["admin"])
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        kv = await js.create_key_value(bucket=CATALOG_BUCKET, history=1)
        for m in measures:
            await kv.put(m.id, m.model_dump_json().encode())
    finally:
        await nc.close()


def demo_events(measures: list[Measure]) -> list[AdmittedEvent]:
    """The demo's reports and corrections up to DEMO_NOW, admitted a minute after each was made."""
    out = []
    for message in plan_reports(measures, seed=DEMO_SEED, now=DEMO_NOW):
        if message.expect != ADMITTED:
            continue
        out.append(admitted(StatusEvent.model_validate_json(message.payload)))
    return out


# Module scope, not session: Playwright's sync API holds this thread's event loop while it runs, and the
# async tests that come after the browser tests need it back.
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """nats-server, the catalog bucket, the demo's admitted reports and `python -m reporting`, ready to browse."""
    directory = tmp_path_factory.mktemp("browser-stack")
    measures = parse_plan(bundled_plan_text())
    nats = NatsServer.create(directory / "nats")
    nats.start()
    port = free_port()
    stack = Stack(directory=directory, nats=nats, base_url=f"http://127.0.0.1:{port}", measures=measures, events=[])
    try:
        run_async(_seed_catalog(nats, measures))
        stack.publish(demo_events(measures))
        env = {
            **os.environ,
            "SHINCHOKU_REPORTING_NATS_URL": nats.plain_url,
            "SHINCHOKU_REPORTING_NATS_USER": "reporting",
            "SHINCHOKU_REPORTING_NATS_PASSWORD": nats.passwords["reporting"],
            "SHINCHOKU_REPORTING_DATA_DIR": str(directory / "data"),
            "SHINCHOKU_REPORTING_HOST": "127.0.0.1",
            "SHINCHOKU_REPORTING_PORT": str(port),
            "SHINCHOKU_REPORTING_INGEST_URL": stack.ingest_url,
            # The alerts as they stood on the demo's day, not today (the demo's quarters are long past).
            "SHINCHOKU_REPORTING_ALERT_CLOCK": DEMO_NOW.isoformat(),
        }
        env.pop("SHINCHOKU_REPORTING_DATABASE_URL", None)
        with stack.log_path.open("ab") as log:
            stack.process = subprocess.Popen(
                [sys.executable, "-m", "reporting"],
                cwd=directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.wait_for_reported(QUARTER, stack.expected(QUARTER).whole.reported, timeout=60)
        # Every admitted event applied (not only Q3's count reached): a page must not change under a test.
        run_async(_with_admin(nats, lambda nc: wait_caught_up(nc, timeout=120)))
        yield stack
    finally:
        if stack.process is not None and stack.process.poll() is None:
            stack.process.terminate()
            try:
                stack.process.wait(10)
            except subprocess.TimeoutExpired:
                stack.process.kill()
                stack.process.wait(5)
        nats.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, accept_downloads=True, base_url=stack.base_url
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    # Signed in as the secretariat, who reads the open quarters the demo is about, with the link `shinchoku up`
    # prints (its token in the fragment; the page's script posts it): test_signin_browser.py signs in otherwise.
    page.goto(f"/dashboard/signin#token={stack.token()}", wait_until="commit")
    page.wait_for_url(lambda url: "/signin" not in url, wait_until="load")
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshot() -> Any:
    """Save a full-page screenshot under artifacts/screenshots/ (gitignored) and return its path."""

    def save(page: Any, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save
