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
from shinchoku_runtime.streamdefs import stream_config
from shinchoku_runtime.testing import fresh_postgres_database, postgres_reachable

from .checker import Report
from .cluster import ProxiedCluster
from .load import Outcome, Publishers, plan_reports
from .observe import Stores, admin_connection, catalog_measures, last_seq, read_stream
from .scenario import Harness, Result, check
from .service_launcher import ClusterDeployment, deploy
from .test_full_disk import fill, told_disk_full

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    # A safety net under a loaded machine: every wait inside has its own, shorter deadline.
    pytest.mark.timeout(600),
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
PARTITION = 6.0
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
    cluster = ProxiedCluster.started(base / "nats", store_dirs={2: small_store / "jetstream"} if small_store else None)
    deployment: ClusterDeployment | None = None
    try:
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
    reports = plan_reports(harness.measures, fiscal_year=2021, count=600, seed=21)
    seen: list[str] = []

    async def fault() -> None:
        admin = await cluster.admin()
        try:
            leader = await cluster.leader(admin, "STATUS")
            cluster.isolate(leader)
            seen.append(leader.name)
            await asyncio.sleep(PARTITION)
            others = await cluster.leader(admin, "STATUS")
            seen.append(others.name)
        finally:
            cluster.heal()
            await admin.close()
        await asyncio.to_thread(recovered(topology))

    result = await harness.run(
        f"partition: STATUS leader cut {PARTITION:.0f}s", reports, rate=60, fault=fault, settle=120
    )
    result.notes.append(f"isolated {seen[0]}, STATUS led by {seen[-1]} meanwhile")
    check(result, fault_report)
    assert seen[0] != seen[-1], "the majority side elected no new STATUS leader"


async def test_sigkill_a_node_that_restarts_and_rejoins(
    topology: Topology, fault_report: Callable[[str], None]
) -> None:
    harness, cluster = topology.harness, topology.cluster
    reports = plan_reports(harness.measures, fiscal_year=2022, count=600, seed=22)
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
    outage = HORIZON + 5
    health: list[dict[str, int]] = []

    async def fault() -> None:
        health.append(await health_of(deployment, ("ingest-1", "ingest-2")))
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
    before, during = health[0], health[1:]
    after = await health_of(deployment, ("ingest-1", "ingest-2"))
    unhealthy = sum(1 for h in during if any(code == 503 for code in h.values()))
    result.notes.append(
        f"horizon {HORIZON:.0f}s; ingest /healthz before {sorted(before.values())}, 503 in {unhealthy} of "
        f"{len(during)} polls during, {sorted(after.values())} after"
    )
    result.notes.append(f"{len(undeliverable)} dead-lettered undeliverable")
    check(result, fault_report)
    assert set(before.values()) == {200}, before
    assert unhealthy, "ingest never said it had admissions it could not publish"
    assert set(after.values()) == {200}, after
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
        size = await asyncio.to_thread(fill, filler, 64 << 10)
        notes.append(f"{node.name}'s store filled ({size >> 20} MB filler)")
        # Held at least 8 s, and until the node has met the full disk (its log says so), for at most 30 s: with a
        # fixed 8 s, the load left after the fault once did not fill the headroom and the fault was not there.
        held = time.monotonic()
        log_file = node.server.log_file
        while time.monotonic() - held < 30 and (
            time.monotonic() - held < 8 or log_file is None or not told_disk_full(log_file)
        ):
            await asyncio.sleep(0.25)
        notes.append(f"held {time.monotonic() - held:.0f}s")
        filler.unlink()
        # Once a write failed with ENOSPC the node's JetStream stays unwritable until restarted (see test_full_disk).
        cluster.kill(node)
        await asyncio.to_thread(cluster.start_node, node)
        await asyncio.to_thread(recovered(topology))

    try:
        result = await harness.run(f"full disk on {node.name} 8s", reports, rate=60, fault=fault, settle=120)
    finally:
        filler.unlink(missing_ok=True)
    said = node.server.log_file is not None and told_disk_full(node.server.log_file)
    notes.append(f"{node.name}'s log names the full disk: {'yes' if said else 'no'}")
    result.notes = notes + result.notes
    check(result, fault_report)
    assert said, "the node never hit the full disk: the fault was not there"


@pytest.mark.timeout(SOAK_SECONDS + 600)
async def test_soak_past_the_duplicate_window_and_the_redelivery_horizon(
    topology: Topology, fault_report: Callable[[str], None]
) -> None:
    """Load for SOAK_SECONDS with a fault every few seconds (a node killed and restarted, a node cut off), ACCEPTED's
    duplicate window shortened to SOAK_WINDOW; all along, each acknowledged report is sent again (same bytes) once
    it is older than that window, so past both windows and ingest's redelivery horizon: each must be counted once."""
    harness, cluster = topology.harness, topology.cluster
    rate = 20.0
    reports = plan_reports(harness.measures, fiscal_year=2025, count=int(SOAK_SECONDS * rate), seed=25)
    rng = random.Random(25)
    faults: list[str] = []
    done = asyncio.Event()
    outcome, resent = Outcome(), Outcome()
    pending: list[Report] = []

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

    async def resend_old(pubs: Publishers) -> None:
        """Every acknowledged report older than the window, once."""
        due = [
            outcome.acked[e]
            for e, at in list(outcome.acked_at.items())
            if e not in resent.acked_at and time.monotonic() - at > SOAK_WINDOW + 1
        ]
        if due:
            await pubs.publish_all(due, rate=200, deadline=60, outcome=resent)

    async def resender(pubs: Publishers) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 2)
            await resend_old(pubs)

    admin = await cluster.admin()
    js = admin.jetstream()
    short = stream_config(ACCEPTED_STREAM, replicas=cluster.replicas)
    short.duplicate_window = SOAK_WINDOW
    await js.update_stream(short)
    started = time.monotonic()
    try:
        starts = (
            await last_seq(admin, "STATUS") + 1,
            await last_seq(admin, "ACCEPTED") + 1,
            await last_seq(admin, "REJECTED") + 1,
        )
        async with Publishers(cluster.url, harness.agency_passwords, timeout=3.0) as pubs:
            helpers = [asyncio.create_task(rolling_faults()), asyncio.create_task(resender(pubs))]
            try:
                await pubs.publish_all(reports, rate=rate, deadline=SOAK_SECONDS + 60, outcome=outcome)
            finally:
                done.set()
                await asyncio.gather(*helpers)
            await asyncio.to_thread(recovered(topology))
            # What the load's deadline left unacknowledged (its last attempt fell in a fault): the faults are over,
            # so the publisher goes on resending the same bytes, as a ministry's client would.
            pending = [*outcome.refused.values(), *outcome.unanswered.values()]
            if pending:
                await pubs.publish_all(pending, rate=200, deadline=60, outcome=outcome)
            await resend_old(pubs)
        result = await harness.account(
            f"soak {SOAK_SECONDS:.0f}s, resends past {SOAK_WINDOW:.0f}s window",
            outcome,
            set(),
            admin,
            settle=180,
            starts=starts,
        )
    finally:
        await js.update_stream(stream_config(ACCEPTED_STREAM, replicas=cluster.replicas))
        await admin.close()
    result.seconds = time.monotonic() - started
    if outcome.failures:
        result.notes.append(
            "publish failures retried: " + ", ".join(f"{k}×{v}" for k, v in outcome.failures.most_common())
        )
    if pending:
        result.notes.append(f"{len(pending)} still unacknowledged at the load's deadline, sent again after the faults")
    result.notes.append(f"{len(faults)} faults: {', '.join(faults)}")
    result.notes.append(f"{len(resent.acked)} of {len(outcome.acked)} resent and acknowledged again after the window")
    check(result, fault_report)
    assert resent.acked, "nothing was resent after the window: the soak did not outlast it"


async def test_clock_skew_on_one_ingest_replica(topology: Topology, fault_report: Callable[[str], None]) -> None:
    """ingest-2 runs 6 hours behind (Debian's faketime): reports on the quarter under way, claimed minutes ago, are
    ahead of its clock by hours. Admission is judged by the broker's receipt time, so both replicas admit them;
    judged on its own clock, ingest-2 would reject them as `future_timestamp`. ingest-1 is stopped throughout, so
    the skewed replica decides every report. Last scenario: ingest-2 stays skewed."""
    if shutil.which("faketime") is None:
        pytest.skip("Debian's faketime is not installed (apt-get install faketime)")
    harness, deployment = topology.harness, topology.deployment
    await asyncio.to_thread(deployment.restart, "ingest-2", wrapper=("faketime", "-f", "-6h"))
    now = datetime.now(UTC)
    fiscal_year = now.year if now.month >= 4 else now.year - 1
    quarter = {4: 1, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2, 10: 3, 11: 3, 12: 3}.get(now.month, 4)
    reports = plan_reports(harness.measures, fiscal_year=fiscal_year, count=600, seed=26, quarter=quarter, now=now)
    rejected_from = await rejected_seq(topology)
    # ingest-1 stopped (SIGSTOP) for the whole load: the skewed replica decides every report.
    paused = deployment.pause("ingest-1")
    try:
        result: Result = await harness.run(
            "clock skew: ingest-2 at -6h", reports, rate=60, settle=120, paused=("ingest-1",)
        )
    finally:
        deployment.resume(paused)
    result.notes.append("ingest-1 paused: ingest-2 decided every report")
    future = [b for b in await rejected_since(topology, rejected_from) if b.get("reason") == "future_timestamp"]
    result.notes.append(f"{len(future)} rejected as future_timestamp")
    check(result, fault_report)
    assert not future
