"""One fault scenario: offer load, inject the fault mid-load, let the stack settle, then account for every report."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import httpx

from .checker import MeasureInfo, Report, differences, expected_rollup, served_rollup
from .load import Outcome, Publishers
from .observe import (
    Stores,
    accepted_counts,
    admin_connection,
    backlog,
    consumer_detail,
    last_seq,
    read_stream,
    received_times,
    served,
    stack_dumps,
)
from .stack import wait_until

Fault = Callable[[], Awaitable[None]]


class Target(Protocol):
    """What a scenario runs against: the embedded stack (stack.RunningStack) or the deployed topology on the
    proxied cluster (service_launcher.ClusterDeployment)."""

    @property
    def nats_url(self) -> str: ...

    @property
    def process_names(self) -> tuple[str, ...]: ...

    def password(self, user: str) -> str: ...

    def url(self, service: str) -> str: ...

    @property
    def auth(self) -> httpx.Auth:
        """How the harness reads the services (a token of the issuer they trust)."""
        ...

    def healthy(self, name: str) -> bool: ...


T = TypeVar("T", bound=Target)

HEADER = "scenario                           acknowledged / counted / lost / double-counted / refused clearly"


@dataclass
class Result:
    scenario: str
    acknowledged: int
    counted: int
    lost: int
    double_counted: int
    dead_lettered: int = 0
    #: Publishes the platform refused with a clear answer (the publisher knows to send again): allowed.
    refused_clearly: int = 0
    #: Publishes neither acknowledged nor clearly refused: an availability failure.
    unanswered: int = 0
    notes: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        extra = f" dead-lettered={self.dead_lettered}" if self.dead_lettered else ""
        extra += f" UNANSWERED={self.unanswered}" if self.unanswered else ""
        notes = f"  ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"{self.scenario:<34} acknowledged={self.acknowledged:<5} counted={self.counted:<5} "
            f"lost={self.lost} double-counted={self.double_counted} refused-clearly={self.refused_clearly}{extra}"
            f"  [{self.seconds:.0f}s]{notes}"
        )


class Harness(Generic[T]):
    """Runs scenarios against one running target and accounts for them with the independent checker."""

    def __init__(
        self,
        stack: T,
        stores: Stores,
        measures: list[MeasureInfo],
        *,
        reporting_names: tuple[str, ...] = ("reporting",),
    ) -> None:
        """`reporting_names`: every reporting replica whose rollups must match the checker's."""
        self.stack = stack
        self.reporting_names = reporting_names
        self.stores = stores
        self.measures = measures
        self.agency_passwords = {a: stack.password(a) for m in measures for a in m.leads}

    def wait_healthy(self, timeout: float = 120.0, *, skip: Collection[str] = ()) -> None:
        for name in (n for n in self.stack.process_names if n not in skip):
            wait_until(functools.partial(self.stack.healthy, name), timeout, f"{name} healthy", interval=0.2)

    async def run(
        self,
        name: str,
        reports: list[Report],
        *,
        rate: float,
        fault: Fault | None = None,
        at: float = 0.33,
        copies: int = 1,
        poison: Collection[str] = (),
        settle: float = 90.0,
        publish_timeout: float = 2.0,
        publish_deadline: float = 90.0,
        concurrency: int = 32,
        first_timeout: float | None = None,
        paused: Collection[str] = (),
    ) -> Result:
        """Publish `reports` at `rate`/s, run `fault` once a share `at` is acknowledged, settle, account.

        `poison`: event ids that must end dead-lettered (`undeliverable` on REJECTED), not counted.
        `paused`: processes the caller keeps stopped throughout (not waited for).
        """
        started = time.monotonic()
        await asyncio.to_thread(self.wait_healthy, skip=paused)
        admin = await admin_connection(self.stack.nats_url, self.stack.password("admin"))
        try:
            status_from = await last_seq(admin, "STATUS") + 1
            accepted_from = await last_seq(admin, "ACCEPTED") + 1
            rejected_from = await last_seq(admin, "REJECTED") + 1
            triggered = asyncio.Event()
            threshold = max(1, int(len(reports) * at))

            async def progress(acked: int) -> None:
                if acked >= threshold:
                    triggered.set()

            async def inject() -> None:
                await triggered.wait()
                if fault is not None:
                    await fault()

            fault_task = asyncio.create_task(inject())
            async with Publishers(self.stack.nats_url, self.agency_passwords, timeout=publish_timeout) as pubs:
                outcome = await pubs.publish_all(
                    reports,
                    rate=rate,
                    copies=copies,
                    concurrency=concurrency,
                    deadline=publish_deadline,
                    on_progress=progress,
                    first_timeout=first_timeout,
                )
            triggered.set()
            await fault_task
            await asyncio.to_thread(self.wait_healthy, skip=paused)
            result = await self.account(
                name, outcome, set(poison), admin, settle=settle, starts=(status_from, accepted_from, rejected_from)
            )
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        result.seconds = time.monotonic() - started
        if outcome.failures:
            result.notes.append(
                "publish failures retried: " + ", ".join(f"{k}×{v}" for k, v in outcome.failures.most_common())
            )
        if copies > 1:
            result.notes.append(f"{outcome.duplicates_sent} duplicate copies sent in flight")
        return result

    async def account(
        self,
        name: str,
        outcome: Outcome,
        poison: set[str],
        admin: Any,
        *,
        settle: float,
        starts: tuple[int, int, int],
    ) -> Result:
        """Wait (up to `settle` s) until the consumers caught up and what is served matches the checker; then count.

        `starts`: STATUS's, ACCEPTED's and REJECTED's first sequence of this scenario.

        What must be counted: every acknowledged report, and a report never acknowledged that ingest admitted all
        the same (an attempt stored whose PubAck was lost): the publisher could not know, the platform must count
        it once. On time is judged by the broker's receipt time, read here from STATUS itself.
        """
        status_from, accepted_from, rejected_from = starts
        acked = outcome.acked
        sent = {**outcome.refused, **outcome.unanswered, **acked}
        stored_anyway: set[str] = set()
        countable_ids = set(acked) - poison
        diffs: list[str] = []
        deadline = time.monotonic() + settle
        https = [
            httpx.AsyncClient(base_url=self.stack.url(n), timeout=10, auth=self.stack.auth)
            for n in self.reporting_names
        ]
        try:
            while True:
                diffs = []
                try:
                    lag = await backlog(admin)
                    if any(v != 0 for v in lag.values()):
                        diffs.append(f"consumers not caught up: {lag}")
                    else:
                        unacked = set(sent) - set(acked)
                        ingest_now = await asyncio.to_thread(self.stores.ingest_outcomes, unacked)
                        stored_anyway = {e for e, c in ingest_now.items() if c["admitted"]}
                        countable_ids = (set(acked) | stored_anyway) - poison
                        countable = [sent[e] for e in countable_ids]
                        received = await received_times(admin, start_seq=status_from)
                        quarters = sorted({(r.fiscal_year, r.quarter) for r in countable})
                        missing = countable_ids - await asyncio.to_thread(self.stores.reporting_events, countable_ids)
                        if missing:
                            diffs.append(f"{len(missing)} acknowledged reports not in the reporting store")
                        for q in quarters:
                            expected = expected_rollup(self.measures, countable, *q, received)
                            for replica, http in zip(self.reporting_names, https, strict=True):
                                rollup, page = await served(http, *q)
                                diffs += [
                                    f"{replica} FY{q[0]}Q{q[1]} {d}"
                                    for d in differences(expected, served_rollup(rollup, page))
                                ]
                except Exception as e:  # a service still restarting: try again until the deadline
                    diffs.append(f"{type(e).__name__}: {e}")
                if not diffs or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            if any(d.startswith("consumers not caught up") for d in diffs):
                diffs.append(f"consumers at the deadline: {await consumer_detail(admin)}")
                diffs.append("\n".join(await asyncio.to_thread(self.stores.reporting_activity)))
                processes = getattr(self.stack, "processes", {})
                pids = [p.process.pid for n, p in processes.items() if n.startswith("reporting") and p.process]
                diffs += await asyncio.to_thread(stack_dumps, pids)
                for replica, http in zip(self.reporting_names, https, strict=True):
                    try:
                        diffs.append(f"{replica} /healthz: {(await http.get('/healthz')).text}")
                    except httpx.HTTPError as e:
                        diffs.append(f"{replica} /healthz: {type(e).__name__}: {e}")
        finally:
            for http in https:
                await http.aclose()

        in_reporting = await asyncio.to_thread(self.stores.reporting_events, countable_ids)
        ingest = await asyncio.to_thread(self.stores.ingest_outcomes, sent)
        accepted = await accepted_counts(admin, start_seq=accepted_from)
        dead = {
            body.get("event_id")
            for body in await read_stream(admin, "REJECTED", start_seq=rejected_from)
            if body.get("reason") == "undeliverable"
        }
        admitted: Counter[str] = Counter({e: c["admitted"] for e, c in ingest.items()})
        counted = len(in_reporting)
        dead_lettered = len(poison & dead & set(acked))
        lost = len(countable_ids - in_reporting) + len((poison & set(acked)) - dead)
        double = sum(max(0, n - 1) for n in admitted.values()) + sum(max(0, n - 1) for n in accepted.values())
        result = Result(
            name,
            len(acked),
            counted,
            lost,
            double,
            dead_lettered,
            refused_clearly=len(outcome.refused),
            unanswered=len(outcome.unanswered),
            differences=diffs,
        )
        if stored_anyway:
            result.notes.append(f"{len(stored_anyway)} admitted though never acknowledged to the publisher")
        not_admitted = [e for e in in_reporting if admitted[e] != 1]
        if not_admitted:
            result.notes.append(f"{len(not_admitted)} counted without exactly one admission in ingest's store")
            result.differences.append(f"ingest store disagrees for {sorted(not_admitted)[:5]}")
        duplicates = sum(c["duplicate"] for c in ingest.values())
        if duplicates:
            result.notes.append(f"ingest recorded {duplicates} identical resends as duplicates")
        poison_admitted = [e for e in poison if admitted[e] or accepted[e]]
        if poison_admitted:
            result.differences.append(f"poison events admitted: {poison_admitted[:5]}")
        return result


def check(result: Result, fault_report: Callable[[str], None]) -> None:
    """Record the scenario's line, then hold it to the invariant: nothing acknowledged lost or counted twice."""
    fault_report(result.line())
    assert result.unanswered == 0, result.line() + ": publishes neither acknowledged nor clearly refused"
    assert result.lost == 0, result.line() + "\n" + "\n".join(result.differences[:20])
    assert result.double_counted == 0, result.line()
    assert not result.differences, result.line() + "\n" + "\n".join(result.differences[:20])
