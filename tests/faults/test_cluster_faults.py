"""Jepsen-style faults on the deployed topology: three NATS nodes (R3 streams, `sync_interval: always`), one catalog,
two ingest and two reporting replicas on PostgreSQL, every network link through a proxy the test cuts.

Each scenario offers load from the agencies' own connections, injects its fault mid-load and lets the platform
settle; the independent checker (checker.py) then compares what both reporting replicas serve with what it
computes from the acknowledged reports (on time judged by the broker's receipt time, read from STATUS), and
counts per report what ingest recorded, what ACCEPTED holds and what reporting stores. A publish neither
acknowledged nor clearly refused is an availability failure.

Windows are shortened by settings so that every scenario runs past them in seconds: ingest's redelivery horizon
(ack_wait 5 s, max_deliver 3, nak delays ≤ 1 s: `ingest.config.retry_horizon` ≈ 34 s), the unpublished alarm
(5 s) and the outbox's reconcile interval (2 s); the soak sets ACCEPTED's duplicate window to 40 s for its
duration. `SOAK=1` makes the soak last 600 s (or `SOAK=<seconds>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from nats.js.api import DiscardPolicy

from contracts.streams import ACCEPTED_STREAM
from shinchoku_runtime.natsclient import stream_config
from shinchoku_runtime.testing import fresh_postgres_database, postgres_reachable

from .cluster import ProxiedCluster
from .load import Outcome, Publishers, plan_reports
from .observe import Stores, admin_connection, catalog_measures, last_seq, read_stream
from .scenario import Harness, Result, check
from .service_launcher import ClusterDeployment, deploy
from .test_full_disk import fill

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(
        any(importlib.util.find_spec(f"{s}.__main__") is None for s in ("catalog", "ingest", "reporting")),
        reason="needs `python -m catalog`, `python -m ingest` and `python -m reporting`",
    ),
]

INGEST = {
    "ACK_WAIT": "5",
    "MAX_DELIVER": "3",
    "RETRY_DELAY_MAX": "1",
    "PUBLISH_TIMEOUT": "2",
    "RECONCILE_INTERVAL": "2",
    "UNPUBLISHED_ALARM": "5",
}
REPORTING = {"ACK_WAIT": "3", "RETRY_DELAY": "1"}
#: ingest.config.retry_horizon with INGEST: 2 gaps of (ack_wait 5 + nak delay 1 + pause 10) + publish_timeout 2.
HORIZON = 34.0
#: ACCEPTED's duplicate window during the soak (≥ HORIZON: ingest's own check at start would refuse less).
SOAK_WINDOW = 40.0
SOAK_SECONDS = {"": 45.0, "1": 600.0}.get(os.environ.get("SOAK", ""), None) or float(os.environ.get("SOAK", "45"))
STORE_MB = 96
REPLICAS = ("reporting-1", "reporting-2")


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(f"the deployed topology runs on PostgreSQL: {reason}")
    with (
        fresh_postgres_database("shinchoku_cfault_ingest") as ingest,
        fresh_postgres_database("shinchoku_cfault_reporting") as reporting,
    ):
        yield {"ingest": ingest, "reporting": reporting}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """A tmpfs of STORE_MB for node 3's JetStream store (the full-disk scenario fills it); None when we may not
    mount (that scenario then skips and says why)."""
    mount_point = tmp_path_factory.mktemp("n3-store")
    done = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={STORE_MB}m,mode=0700", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
        if shutil.which("mount")
        else None
    )
    if done is None or done.returncode != 0:
        SKIPS["full disk"] = f"cannot mount a tmpfs ({done.stderr.strip() if done else 'no mount(8)'})"
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


SKIPS: dict[str, str] = {}


@dataclass
class Topology:
    cluster: ProxiedCluster
    deployment: ClusterDeployment
    harness: Harness[ClusterDeployment]
    store: Path | None


@pytest.fixture(scope="module")
def topology(
    tmp_path_factory: pytest.TempPathFactory, databases: dict[str, str], small_store: Path | None
) -> Iterator[Topology]:
    base = tmp_path_factory.mktemp("cluster-faults")
    cluster = ProxiedCluster.create(base / "nats", store_dirs={2: small_store / "jetstream"} if small_store else None)
    deployment: ClusterDeployment | None = None
    try:
        cluster.start()
        asyncio.run(cluster.declare_streams())
        deployment = deploy(
            cluster,
            base / "services",
            databases,
            {"ingest": dict(INGEST), "reporting": dict(REPORTING)},
        )
        stores = Stores(databases["ingest"], databases["reporting"])
        harness = Harness(deployment, stores, catalog_measures(deployment.url("catalog")), reporting_names=REPLICAS)
        try:
            yield Topology(cluster, deployment, harness, small_store)
        finally:
            stores.dispose()
    finally:
        if deployment is not None:
            deployment.stop()
        cluster.stop()


def recovered(topology: Topology) -> Callable[[], None]:
    """A function waiting until every node is healthy again and the streams' replicas are current."""

    def wait() -> None:
        topology.cluster.wait_healthy(120)

        async def current() -> None:
            nc = await topology.cluster.admin()
            try:
                for stream in ("STATUS", "ACCEPTED", "REJECTED"):
                    await topology.cluster.wait_stream_current(nc, stream, 120)
            finally:
                await nc.close()

        asyncio.run(current())

    return wait


# --- scenarios --------------------------------------------------------------------------------------------------


async def test_partition_isolating_the_status_leader(topology: Topology, fault_report: Callable[[str], None]) -> None:
    harness, cluster = topology.harness, topology.cluster
    reports = plan_reports(harness.measures, fiscal_year=2021, count=900, seed=21)
    seen: list[str] = []

    async def fault() -> None:
        admin = await cluster.admin()
        try:
            leader = await cluster.leader(admin, "STATUS")
            cluster.isolate(leader)
            seen.append(leader.name)
            await asyncio.sleep(10)
            others = await cluster.leader(admin, "STATUS")
            seen.append(others.name)
        finally:
            cluster.heal()
            await admin.close()
        await asyncio.to_thread(recovered(topology))

    result = await harness.run("partition: STATUS leader cut 10s", reports, rate=60, fault=fault, settle=120)
    result.notes.append(f"isolated {seen[0]}, STATUS led by {seen[-1]} meanwhile")
    check(result, fault_report)
    assert seen[0] != seen[-1], "the majority side elected no new STATUS leader"


async def test_sigkill_a_node_that_restarts_and_rejoins(
    topology: Topology, fault_report: Callable[[str], None]
) -> None:
    harness, cluster = topology.harness, topology.cluster
    reports = plan_reports(harness.measures, fiscal_year=2022, count=900, seed=22)
    victim: list[str] = []

    async def fault() -> None:
        admin = await cluster.admin()
        try:
            node = await cluster.leader(admin, "ACCEPTED")
        finally:
            await admin.close()
        victim.append(node.name)
        cluster.kill(node)
        await asyncio.sleep(5)
        await asyncio.to_thread(cluster.start_node, node)
        await asyncio.to_thread(recovered(topology))

    result = await harness.run("SIGKILL node (ACCEPTED leader)", reports, rate=60, fault=fault, settle=120)
    result.notes.append(f"{victim[0]} down 5s, rejoined and caught up")
    check(result, fault_report)


async def health_of(deployment: ClusterDeployment, names: tuple[str, ...]) -> dict[str, int]:
    out = {}
    async with httpx.AsyncClient(timeout=3) as http:
        for name in names:
            try:
                out[name] = (await http.get(deployment.url(name) + "/healthz")).status_code
            except httpx.HTTPError:
                out[name] = -1
    return out


async def test_accepted_refusing_writes_beyond_the_redelivery_horizon(
    topology: Topology, fault_report: Callable[[str], None]
) -> None:
    """Hole 1: ACCEPTED takes no write for longer than ingest's redelivery horizon. Every admitted report must
    reach ACCEPTED once it takes writes again (the outbox), ingest's /healthz says 503 meanwhile, and nothing
    admitted is dead-lettered as `undeliverable`."""
    harness, cluster, deployment = topology.harness, topology.cluster, topology.deployment
    reports = plan_reports(harness.measures, fiscal_year=2023, count=400, seed=23)
    outage = HORIZON + 8
    health: list[dict[str, int]] = []

    async def fault() -> None:
        admin = await cluster.admin()
        js = admin.jetstream()
        try:
            info = await js.stream_info("ACCEPTED")
            frozen = stream_config(ACCEPTED_STREAM, replicas=cluster.replicas)
            frozen.max_msgs = max(1, info.state.messages)
            frozen.discard = DiscardPolicy.NEW
            await js.update_stream(frozen)
            t0 = time.monotonic()
            while time.monotonic() - t0 < outage:
                health.append(await health_of(deployment, ("ingest-1", "ingest-2")))
                await asyncio.sleep(1)
        finally:
            await js.update_stream(stream_config(ACCEPTED_STREAM, replicas=cluster.replicas))
            await admin.close()

    rejected_from = await rejected_seq(topology)
    result = await harness.run(
        f"ACCEPTED refuses writes {outage:.0f}s", reports, rate=40, fault=fault, at=0.5, settle=150
    )
    undeliverable = [b for b in await rejected_since(topology, rejected_from) if b.get("reason") == "undeliverable"]
    unhealthy = sum(1 for h in health if any(code == 503 for code in h.values()))
    result.notes.append(f"horizon {HORIZON:.0f}s; ingest /healthz 503 in {unhealthy} of {len(health)} polls")
    result.notes.append(f"{len(undeliverable)} dead-lettered undeliverable")
    check(result, fault_report)
    assert unhealthy, "ingest never said it had admissions it could not publish"
    assert not undeliverable, undeliverable[:3]


async def rejected_seq(topology: Topology) -> int:
    admin = await topology.cluster.admin()
    try:
        return await last_seq(admin, "REJECTED") + 1
    finally:
        await admin.close()


async def rejected_since(topology: Topology, start: int) -> list[dict[str, object]]:
    admin = await admin_connection(topology.deployment.nats_url, topology.deployment.password("admin"))
    try:
        return await read_stream(admin, "REJECTED", start_seq=start)
    finally:
        await admin.close()


async def test_full_disk_on_one_node(topology: Topology, fault_report: Callable[[str], None]) -> None:
    if topology.store is None:
        pytest.skip(SKIPS.get("full disk", "no small filesystem for node 3"))
    harness, cluster = topology.harness, topology.cluster
    node = cluster.nodes[2]
    reports = plan_reports(harness.measures, fiscal_year=2024, count=600, seed=24)
    filler = topology.store / "filler"
    notes: list[str] = []

    async def fault() -> None:
        size = await asyncio.to_thread(fill, filler, 256 << 10)
        notes.append(f"{node.name}'s store filled ({size >> 20} MB filler)")
        await asyncio.sleep(8)
        filler.unlink()
        # Once a write failed with ENOSPC the node's JetStream stays unwritable until restarted (see test_full_disk).
        cluster.kill(node)
        await asyncio.to_thread(cluster.start_node, node)
        await asyncio.to_thread(recovered(topology))

    try:
        result = await harness.run(f"full disk on {node.name} 8s", reports, rate=60, fault=fault, settle=120)
    finally:
        filler.unlink(missing_ok=True)
    result.notes = notes + result.notes
    check(result, fault_report)


async def test_soak_past_the_duplicate_window_and_the_redelivery_horizon(
    topology: Topology, fault_report: Callable[[str], None]
) -> None:
    """Load for SOAK_SECONDS with a fault every few seconds (a node killed and restarted, a node cut off), ACCEPTED's
    duplicate window shortened to SOAK_WINDOW, and then every acknowledged report older than the window sent again
    (same bytes): resent after both windows and the horizon, each must still be counted once."""
    harness, cluster = topology.harness, topology.cluster
    rate = 20.0
    count = int(SOAK_SECONDS * rate)
    reports = plan_reports(harness.measures, fiscal_year=2025, count=count, seed=25)
    rng = random.Random(25)
    faults: list[str] = []
    done = asyncio.Event()

    async def rolling_faults() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 8)
                return
            node = rng.choice(cluster.nodes)
            if rng.random() < 0.5:
                cluster.kill(node)
                await asyncio.sleep(3)
                await asyncio.to_thread(cluster.start_node, node)
                faults.append(f"kill {node.name}")
            else:
                with cluster.partitioned(node):
                    await asyncio.sleep(4)
                faults.append(f"cut {node.name}")
            await asyncio.to_thread(cluster.wait_healthy, 120)

    admin = await cluster.admin()
    js = admin.jetstream()
    short = stream_config(ACCEPTED_STREAM, replicas=cluster.replicas)
    short.duplicate_window = SOAK_WINDOW
    await js.update_stream(short)
    outcome = Outcome()
    started = time.monotonic()
    try:
        status_from = await last_seq(admin, "STATUS") + 1
        accepted_from = await last_seq(admin, "ACCEPTED") + 1
        rejected_from = await last_seq(admin, "REJECTED") + 1
        injector = asyncio.create_task(rolling_faults())
        async with Publishers(cluster.url, harness.agency_passwords, timeout=3.0) as pubs:
            try:
                await pubs.publish_all(reports, rate=rate, deadline=SOAK_SECONDS + 60, outcome=outcome)
            finally:
                done.set()
                await injector
            await asyncio.to_thread(recovered(topology))
            # Outlast ACCEPTED's window and the horizon since the last first send, then resend everything acknowledged.
            wait = max(0.0, max(SOAK_WINDOW, HORIZON) + 2 - (time.monotonic() - started - SOAK_SECONDS))
            await asyncio.sleep(wait)
            resent = Outcome()
            await pubs.publish_all(list(outcome.acked.values()), rate=200, deadline=60, outcome=resent)
        result = await harness.account(
            f"soak {SOAK_SECONDS:.0f}s + resend after {SOAK_WINDOW:.0f}s window",
            outcome,
            set(),
            admin,
            settle=180,
            starts=(status_from, accepted_from, rejected_from),
        )
    finally:
        await js.update_stream(stream_config(ACCEPTED_STREAM, replicas=cluster.replicas))
        await admin.close()
    result.seconds = time.monotonic() - started
    result.notes.append(f"{len(faults)} faults: {', '.join(faults)}")
    result.notes.append(f"resent {len(resent.acked)} of {len(outcome.acked)} after the windows")
    check(result, fault_report)


async def test_clock_skew_on_one_ingest_replica(topology: Topology, fault_report: Callable[[str], None]) -> None:
    """ingest-2 runs 6 hours behind (Debian's faketime): reports on the quarter under way, claimed minutes ago, are
    ahead of its clock by hours. Admission is judged by the broker's receipt time, so both replicas admit them;
    judged on its own clock, ingest-2 would reject its share as `future_timestamp`. Last scenario: ingest-2 stays
    skewed."""
    if shutil.which("faketime") is None:
        pytest.skip("Debian's faketime is not installed (apt-get install faketime)")
    harness, deployment = topology.harness, topology.deployment
    await asyncio.to_thread(deployment.restart, "ingest-2", wrapper=("faketime", "-f", "-6h"))
    now = datetime.now(UTC)
    fiscal_year = now.year if now.month >= 4 else now.year - 1
    quarter = {4: 1, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2, 10: 3, 11: 3, 12: 3}.get(now.month, 4)
    reports = plan_reports(harness.measures, fiscal_year=fiscal_year, count=600, seed=26, quarter=quarter, now=now)
    rejected_from = await rejected_seq(topology)
    result: Result = await harness.run("clock skew: ingest-2 at -6h", reports, rate=60, settle=120)
    future = [b for b in await rejected_since(topology, rejected_from) if b.get("reason") == "future_timestamp"]
    result.notes.append(f"{len(future)} rejected as future_timestamp")
    check(result, fault_report)
    assert not future
