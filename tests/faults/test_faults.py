"""Jepsen-style fault injection on the embedded stack: nothing acknowledged is lost or counted twice.

One stack (nats-server, catalog, ingest and reporting under the same Supervisor `shinchoku up` uses; ingest
and reporting on PostgreSQL when it is reachable, else SQLite) serves every scenario in this module, in
order. Each scenario offers load from the agencies' own connections, injects its fault mid-load, lets the
stack settle, and then an independent checker (tests/faults/checker.py) compares the rollups reporting
serves with those computed from the reports whose publish got a PubAck, and counts, per acknowledged report,
what ingest recorded, what ACCEPTED holds and what the reporting store holds.

Consumer settings are shortened so that the scenarios are quick: ingest's ack_wait is 5 s (its minimum),
reporting's 3 s; the pauses last longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from shinchoku_runtime.db import normalise_url
from shinchoku_runtime.testing import fresh_postgres_database, pg_admin_url, postgres_reachable

from .checker import JST, Report
from .load import plan_reports
from .observe import Stores, catalog_measures
from .scenario import Harness, check
from .stack import RunningStack, running_stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(f"{s}.__main__") is None for s in ("catalog", "ingest", "reporting")),
        reason="needs `python -m catalog`, `python -m ingest` and `python -m reporting`",
    ),
]

ACK_WAIT = {"ingest": 5.0, "reporting": 3.0}
PAUSE = max(ACK_WAIT.values()) + 2.0
DB_OUTAGE = 10.0


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(ingest URL, reporting URL, kind): fresh PostgreSQL databases when reachable, else SQLite files."""
    if postgres_reachable() is None:
        with (
            fresh_postgres_database("shinchoku_fault_ingest") as ingest,
            fresh_postgres_database("shinchoku_fault_reporting") as reporting,
        ):
            yield ingest, reporting, "postgresql"
        return
    base = tmp_path_factory.mktemp("fault-db")
    yield f"sqlite:///{base / 'ingest.sqlite'}", f"sqlite:///{base / 'reporting.sqlite'}", "sqlite"


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory, databases: tuple[str, str, str]
) -> Iterator[Harness[RunningStack]]:
    ingest_url, reporting_url, _kind = databases
    overrides = {
        "SHINCHOKU_INGEST_DATABASE_URL": ingest_url,
        "SHINCHOKU_REPORTING_DATABASE_URL": reporting_url,
        "SHINCHOKU_INGEST_ACK_WAIT": str(ACK_WAIT["ingest"]),
        "SHINCHOKU_REPORTING_ACK_WAIT": str(ACK_WAIT["reporting"]),
        # A batch must finish (or give up) inside ack_wait; retries after a fault come back quickly.
        "SHINCHOKU_INGEST_PUBLISH_TIMEOUT": "3",
        "SHINCHOKU_INGEST_RETRY_DELAY_MAX": "2",
        "SHINCHOKU_REPORTING_RETRY_DELAY": "1",
    }
    data_dir = tmp_path_factory.mktemp("faults") / "var"
    with running_stack(data_dir, overrides) as stack:
        stores = Stores(ingest_url, reporting_url)
        try:
            yield Harness(stack, stores, catalog_measures(stack.url("catalog")))
        finally:
            stores.dispose()


async def test_sigkill_ingest_mid_load(harness: Harness[RunningStack], fault_report: Callable[[str], None]) -> None:
    reports = plan_reports(harness.measures, fiscal_year=2001, count=1500, seed=1)

    async def fault() -> None:
        old = harness.stack.kill("ingest")
        await asyncio.to_thread(harness.stack.wait_restarted, "ingest", old)

    check(await harness.run("SIGKILL ingest (restarted)", reports, rate=300, fault=fault), fault_report)


async def test_sigkill_reporting_mid_load(harness: Harness[RunningStack], fault_report: Callable[[str], None]) -> None:
    reports = plan_reports(harness.measures, fiscal_year=2002, count=1500, seed=2)

    async def fault() -> None:
        old = harness.stack.kill("reporting")
        await asyncio.to_thread(harness.stack.wait_restarted, "reporting", old)

    check(await harness.run("SIGKILL reporting (restarted)", reports, rate=300, fault=fault), fault_report)


async def test_sigkill_nats_server_mid_load(
    harness: Harness[RunningStack], fault_report: Callable[[str], None]
) -> None:
    reports = plan_reports(harness.measures, fiscal_year=2003, count=1500, seed=3)

    async def fault() -> None:
        old = harness.stack.kill("nats-server")
        await asyncio.to_thread(harness.stack.wait_restarted, "nats-server", old)

    check(await harness.run("SIGKILL nats-server (restarted)", reports, rate=300, fault=fault), fault_report)


async def test_sigstop_longer_than_ack_wait(
    harness: Harness[RunningStack], fault_report: Callable[[str], None]
) -> None:
    reports = plan_reports(harness.measures, fiscal_year=2004, count=2400, seed=4)

    async def fault() -> None:
        paused = [harness.stack.pause("ingest"), harness.stack.pause("reporting")]
        try:
            await asyncio.sleep(PAUSE)
        finally:
            for pid in paused:
                harness.stack.resume(pid)

    result = await harness.run(f"SIGSTOP ingest+reporting {PAUSE:.0f}s", reports, rate=300, fault=fault, at=0.2)
    result.notes.append(f"ack_wait ingest {ACK_WAIT['ingest']:.0f}s, reporting {ACK_WAIT['reporting']:.0f}s")
    check(result, fault_report)


@contextlib.contextmanager
def database_unavailable(urls: list[str]) -> Iterator[str]:
    """Make the services' databases refuse every connection: PostgreSQL ALLOW_CONNECTIONS false and the backends
    terminated; SQLite an exclusive lock held on each file (writers get `database is locked`)."""
    if urls[0].startswith("postgresql"):
        admin = sa.create_engine(normalise_url(pg_admin_url()), isolation_level="AUTOCOMMIT")
        names = [u.rsplit("/", 1)[1] for u in urls]
        try:
            with admin.connect() as conn:
                for name in names:
                    conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                    conn.execute(
                        sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                        {"n": name},
                    )
            yield "PostgreSQL: ALLOW_CONNECTIONS false + backends terminated"
        finally:
            with admin.connect() as conn:
                for name in names:
                    conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            admin.dispose()
        return
    locks: list[sqlite3.Connection] = []
    try:
        for url in urls:
            lock = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            locks.append(lock)
        yield "SQLite: exclusive lock held on both files"
    finally:
        for lock in locks:
            lock.execute("ROLLBACK")
            lock.close()


async def test_database_unavailable_10s(
    harness: Harness[RunningStack], databases: tuple[str, str, str], fault_report: Callable[[str], None]
) -> None:
    reports = plan_reports(harness.measures, fiscal_year=2005, count=2400, seed=5)
    how: list[str] = []

    async def fault() -> None:
        with database_unavailable([databases[0], databases[1]]) as what:
            how.append(what)
            await asyncio.sleep(DB_OUTAGE)

    result = await harness.run(f"database unavailable {DB_OUTAGE:.0f}s", reports, rate=300, fault=fault, at=0.2)
    result.notes += how
    check(result, fault_report)


async def test_publisher_retrying_after_timeouts(
    harness: Harness[RunningStack], fault_report: Callable[[str], None]
) -> None:
    """Each report goes out twice at once with a 5 ms PubAck timeout, then again (same bytes) until acknowledged."""
    reports = plan_reports(harness.measures, fiscal_year=2006, count=1200, seed=6)
    result = await harness.run(
        "publisher retries (dups in flight)", reports, rate=300, copies=2, publish_timeout=2.0, first_timeout=0.005
    )
    check(result, fault_report)


def poison_reports(harness: Harness[RunningStack], count: int, fiscal_year: int) -> list[Report]:
    """Valid-looking reports on measure numbers the catalog does not hold: with the catalog unreachable, ingest can
    neither admit nor reject them as unknown_measure, so they are redelivered until max_deliver."""
    rng = random.Random(99)
    agencies = sorted({a for m in harness.measures for a in m.leads})
    return [
        Report(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            measure_id=f"6-{900 + i}",
            agency=rng.choice(agencies),
            fiscal_year=fiscal_year,
            quarter=1,
            status="on_track",
            reported_at=datetime(fiscal_year, 7, 1, 12, tzinfo=JST) + timedelta(minutes=i),
        )
        for i in range(count)
    ]


async def test_redelivery_storm_dead_letters_at_max_deliver(
    harness: Harness[RunningStack], fault_report: Callable[[str], None]
) -> None:
    """Last scenario of the module: it restarts ingest with max_deliver 3."""
    stack = harness.stack
    stack.set_env(
        "ingest",
        {
            "SHINCHOKU_INGEST_MAX_DELIVER": "3",
            "SHINCHOKU_INGEST_RETRY_DELAY_MAX": "0.5",
            "SHINCHOKU_INGEST_CATALOG_TIMEOUT": "0.5",
        },
    )
    await asyncio.to_thread(stack.restart, "ingest")
    poison = poison_reports(harness, 60, fiscal_year=2007)
    valid = plan_reports(harness.measures, fiscal_year=2007, count=600, seed=7)
    catalog = stack.pause("catalog")
    try:
        t0 = time.monotonic()
        result = await harness.run(
            "redelivery storm (max_deliver 3)",
            valid + poison,
            rate=300,
            poison={r.event_id for r in poison},
            paused=("catalog",),
            settle=120,
        )
        result.notes.append(f"catalog paused {time.monotonic() - t0:.0f}s; poison = unknown measures")
    finally:
        stack.resume(catalog)
    check(result, fault_report)
    assert result.dead_lettered == len(poison)
    # Ingest says why, per report: reason undeliverable with a message a clerk can act on.
    async with httpx.AsyncClient(base_url=stack.url("ingest"), timeout=10, auth=stack.auth) as http:
        body = (await http.get("/rejections", params={"reason": "undeliverable", "limit": 1000})).json()
    listed = {item["event_id"]: item for item in body["items"]}
    assert {r.event_id for r in poison} <= set(listed)
    assert all("undeliverable" in listed[r.event_id]["message"] for r in poison)
