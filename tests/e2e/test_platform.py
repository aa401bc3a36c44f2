"""The whole platform under `shinchoku up`: reports survive SIGKILL of ingest and reporting, counted exactly once.

Black box: `up` runs as a subprocess on a temporary data directory and free ports; reports go in through
the ministry client with each agency's own credentials; what comes out is read over HTTP (the rollup and
its measures) and from the ACCEPTED stream.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import httpx
import pytest

from contracts.catalog import Measure
from contracts.events import SEVERITY_ORDER, UNREPORTED, Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter, last_completed_quarter
from contracts.streams import (
    ACCEPTED_STREAM,
    INGEST_DURABLE,
    PUBLICATIONS_STREAM,
    REJECTED_STREAM,
    REPORTING_DURABLE,
    STATUS_STREAM,
)
from shinchoku.demo_cycle import plan_cycle
from shinchoku.demo_plan import ADMITTED, DEFAULT_SEED, expected_outcomes, plan_demo
from shinchoku.stack import Stack
from shinchoku_client.publisher import AgencyPublisher
from shinchoku_runtime.natsclient import connect

from .conftest import SHINCHOKU, Up, pid_alive, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(f"{s}.__main__") is None for s in ("catalog", "ingest", "reporting")),
        reason="needs `python -m catalog`, `python -m ingest` and `python -m reporting`",
    ),
]

QUARTER = FiscalQuarter(2025, 1)
STATUSES = list(Status)


def plan_reports(measures: list[Measure]) -> list[StatusEvent]:
    """One report per lead of every measure in FY2025Q1, then a later correction for every fifth one."""
    reports = []
    base = QUARTER.end_at + timedelta(days=5)
    for i, measure in enumerate(measures):
        for j, agency in enumerate(measure.lead_agencies):
            reports.append(_event(measure.id, agency.value, STATUSES[(i + j) % 6], base + timedelta(minutes=i), "a"))
    corrections = [
        _event(r.measure_id, r.agency.value, STATUSES[(STATUSES.index(r.status) + 1) % 6], r.reported_at, "b", days=40)
        for r in reports[::5]
    ]
    return reports + corrections


def _event(measure_id: str, agency: str, status: Status, at: datetime, tag: str, days: int = 0) -> StatusEvent:
    return StatusEvent(
        event_id=uuid5(NAMESPACE_URL, f"e2e:{measure_id}:{agency}:{tag}"),
        measure_id=measure_id,
        agency=agency,
        fiscal_year=QUARTER.fiscal_year,
        quarter=QUARTER.quarter,
        status=status,
        reported_at=at.astimezone(TOKYO) + timedelta(days=days),
    )


def expected_rollup(
    measures: list[Measure], reports: list[StatusEvent], received: datetime
) -> tuple[Counter[str], int, dict[str, str]]:
    """by_status, on_time and the effective event per (measure, agency), by the binding rules: on time by when the
    platform received a report (`received`: when the test published them all), never by its `reported_at`."""
    effective: dict[tuple[str, str], StatusEvent] = {}
    for r in reports:
        key = (r.measure_id, r.agency.value)
        if key not in effective or (r.reported_at, str(r.event_id)) > (
            effective[key].reported_at,
            str(effective[key].event_id),
        ):
            effective[key] = r
    by_status: Counter[str] = Counter()
    on_time = 0
    for m in measures:
        leads = [effective[(m.id, a.value)] for a in m.lead_agencies if (m.id, a.value) in effective]
        if not leads:
            by_status[UNREPORTED] += 1
            continue
        by_status[min((r.status for r in leads), key=SEVERITY_ORDER.index).value] += 1
        on_time += all(QUARTER.is_on_time(received) for _ in leads)
    return by_status, on_time, {f"{k[0]}/{k[1]}": str(v.event_id) for k, v in effective.items()}


async def publish_with_kills(up: Up, stack: Stack, reports: list[StatusEvent]) -> list[str]:
    """Publish everything, SIGKILL reporting after a third and ingest after two thirds; the acknowledged ids."""
    acked: list[str] = []
    publishers: dict[str, AgencyPublisher] = {}
    for agency in sorted({r.agency.value for r in reports}):
        publishers[agency] = AgencyPublisher(stack.nats_plain_url, agency=agency, password=stack.password(agency))
        await publishers[agency].connect()
    kills = {len(reports) // 3: "reporting", 2 * len(reports) // 3: "ingest"}
    try:
        for start in range(0, len(reports), 25):
            for victim in (v for k, v in kills.items() if start <= k < start + 25):
                os.kill(up.pids()[victim], signal.SIGKILL)
            chunk = reports[start : start + 25]
            acks = await asyncio.gather(*(publishers[r.agency.value].publish(r) for r in chunk))
            acked += [str(r.event_id) for r, _ in zip(chunk, acks, strict=True)]
            await asyncio.sleep(0.05)  # spread the publishing over the kills and restarts
    finally:
        for publisher in publishers.values():
            await publisher.close()
    return acked


async def stream_state(stack: Stack) -> dict[str, int]:
    nc = await connect(stack.nats_plain_url, name="e2e", user="admin", password=stack.password("admin"))
    try:
        js = nc.jetstream()
        accepted = await js.stream_info(ACCEPTED_STREAM.name)
        out = {"accepted": int(accepted.state.messages)}
        for name, spec in (
            ("status", STATUS_STREAM),
            ("rejected", REJECTED_STREAM),
            ("published", PUBLICATIONS_STREAM),
        ):
            out[name] = int((await js.stream_info(spec.name)).state.messages)
        for name, stream, durable in (
            ("ingest", STATUS_STREAM.name, INGEST_DURABLE),
            ("reporting", ACCEPTED_STREAM.name, REPORTING_DURABLE),
        ):
            info = await js.consumer_info(stream, durable)
            out[name] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return out
    finally:
        await nc.close()


def rollup(up: Up) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{up.url('reporting')}/rollups/{QUARTER.fiscal_year}/{QUARTER.quarter}", auth=up.auth
    ).json()
    return body


def assert_the_banner_link_signs_in(up: Up) -> None:
    """The dashboard link of `up`'s banner signs the local user in, as the page's script does with it: the
    token from the fragment posted with the form's CSRF field."""
    found = re.search(r"(http://\S+/dashboard/signin)#token=(\S+)", up.text())
    assert found, up.text()
    page_url, token = found.groups()
    with httpx.Client(timeout=10) as browser:
        page = browser.get(page_url)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf, page.text
        answer = browser.post(page_url, data={"csrf": csrf.group(1), "token": token})
        assert answer.status_code == 303, answer.text
        assert "secretariat" in browser.get(page_url.replace("/signin", "")).text


def test_reports_survive_sigkill_of_reporting_and_ingest_counted_once(make_up: Callable[..., Up]) -> None:
    up = make_up(fake=False)
    # Messages a killed consumer held come back after ack_wait: short here, so the test is quick.
    up.env |= {"SHINCHOKU_INGEST_ACK_WAIT": "5", "SHINCHOKU_REPORTING_ACK_WAIT": "5"}
    up.start()
    first_start = up.wait_ready(90)
    assert "ready in" in up.text()
    assert_the_banner_link_signs_in(up)
    stack = Stack.load(up.data_dir)
    measures = [
        Measure.model_validate(m) for m in httpx.get(f"{up.url('catalog')}/measures?limit=1000").json()["items"]
    ]
    assert len(measures) == 320
    reports = plan_reports(measures)
    before = up.pids()

    acked = asyncio.run(publish_with_kills(up, stack, reports))
    assert len(acked) == len(set(acked)) == len(reports)

    # The supervisor noticed both deaths and restarted both services.
    for name in ("reporting", "ingest"):
        death = f"{name} (pid {before[name]}) exited with signal SIGKILL"
        wait_for(lambda d=death: d in up.log, 10, f"the supervisor to notice {name}'s death")  # type: ignore[misc]
        wait_for(lambda n=name: up.pids().get(n) not in (None, before[n]) and up.healthy(n), 30, f"{name} back")  # type: ignore[misc]
    assert up.pids()["catalog"] == before["catalog"]

    # Every acknowledged report admitted exactly once, and the rollup is exactly what the rules give.
    by_status, on_time, effective = expected_rollup(measures, reports, received=datetime.now(UTC))

    def caught_up() -> bool:
        state = asyncio.run(stream_state(stack))
        return state["ingest"] == 0 and state["reporting"] == 0 and state["accepted"] >= len(reports)

    wait_for(caught_up, 60, "ingest and reporting caught up", interval=0.5)
    assert asyncio.run(stream_state(stack))["accepted"] == len(reports), "each report admitted once"

    def rollup_matches() -> bool:
        body = rollup(up)
        return dict(body["by_status"]) == {s: by_status.get(s, 0) for s in body["by_status"]}

    wait_for(rollup_matches, 30, "rollup to match what was acknowledged", interval=0.5)
    body = rollup(up)
    assert body["reported"] == 320 - by_status[UNREPORTED]
    assert body["on_time"] == on_time
    items = httpx.get(
        f"{up.url('reporting')}/rollups/{QUARTER.fiscal_year}/{QUARTER.quarter}/measures",
        params={"limit": 1000},
        auth=up.auth,
    ).json()["items"]
    seen = {f"{i['measure_id']}/{lead['agency']}": lead["event_id"] for i in items for lead in i["leads"]}
    assert {k: v for k, v in seen.items() if v is not None} == effective

    # One `up` per data directory.
    second = up.run_again()
    assert second.returncode != 0
    assert "already running" in second.stderr + second.stdout

    # SIGTERM: everything stops, in order, and no pid file stays.
    running = up.pids()
    assert up.stop(signal.SIGTERM) == 0
    assert not any(pid_alive(p) for p in running.values())
    assert list((up.data_dir / "run").glob("*.pid")) == []

    # And the data is still there after a restart.
    t0 = time.monotonic()
    up.start()
    second_start = up.wait_ready(90)
    assert rollup(up)["by_status"] == body["by_status"]
    assert Stack.load(up.data_dir).nats_port == stack.nats_port

    # `shinchoku demo` on top: its reports and, by default, the reporting cycle (backfill, reviews, answers, closes,
    # restatements, the open quarter's first reports) admitted once; a second run sends nothing at all (nothing more
    # on STATUS, REJECTED, ACCEPTED or PUBLICATIONS: no second close, review or restatement, no resent rejection).
    now = datetime.now(UTC)
    demo = plan_demo(measures, now=now)
    expected = expected_outcomes(demo)
    cycle = plan_cycle(measures, demo, seed=DEFAULT_SEED, now=now)
    assert all((cycle.closes, cycle.reviews, cycle.answers, cycle.corrections, cycle.backfills)), cycle
    after_first: dict[str, int] = {}
    for run in (1, 2):
        result = subprocess.run(
            [SHINCHOKU, "demo", "--data-dir", str(up.data_dir)],
            env=up.env,
            cwd=up.cwd,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "caught up" in result.stdout
        assert f"{last_completed_quarter(now).label} (" in result.stdout
        assert "government-wide" in result.stdout
        assert "the reporting cycle was not played" not in result.stderr, result.stderr
        state = asyncio.run(stream_state(stack))
        assert state["accepted"] == len(reports) + expected[ADMITTED] + cycle.facts, f"run {run}"
        if run == 1:
            after_first = state
            target = cycle.closes[-1]
            revisions = httpx.get(
                f"{up.url('reporting')}/rollups/{target.fiscal_year}/{target.quarter}/revisions", auth=up.auth
            ).json()["items"]
            assert [r["revision"] for r in revisions] == list(range(1, 2 + len(cycle.corrections)))
            for close in cycle.closes:
                assert httpx.get(
                    f"{up.url('reporting')}/rollups/{close.fiscal_year}/{close.quarter}", auth=up.auth
                ).json()["closed"]
        else:
            assert "already on the platform" in result.stdout
            assert state == after_first, "a second demo run adds nothing anywhere"
    assert up.stop(signal.SIGTERM) == 0
    print(f"ready: first start {first_start:.1f}s, restart {second_start:.1f}s ({time.monotonic() - t0:.1f}s)")  # noqa: T201
