"""Reporting benchmark: consumer throughput, rebuild speed, and rollup latency with N events stored.

    .venv/bin/python bench/reporting.py                      # 1,000,000 events (several minutes)
    .venv/bin/python bench/reporting.py --events 100000      # a short run
    .venv/bin/python bench/reporting.py --postgres           # the store on a fresh PostgreSQL database
    .venv/bin/python bench/reporting.py --profile artifacts/profile   # + py-spy profiles (consumer, rebuild)
    .venv/bin/python bench/reporting.py --events 200000 --consumer-only --skip-untraced \
        --service-python ../other-worktree/.venv/bin/python          # another version's consumer, same load

What one run does:

1. starts nats-server (from the wheel, generated users) in a temporary directory, puts a
   320-measure catalog (shaped like the plan) into the CATALOG bucket, and bulk-loads N AdmittedEvent messages onto
   ACCEPTED as the admin user (Nats-Msg-Id and a traceparent header on each, as ingest publishes them), spread over
   the twelve quarters FY2024Q1–FY2026Q4 with many corrections per (measure, agency, quarter). Loading is
   set-up: it runs without `sync_interval: always`; every measured phase runs on the same store with it;
2. consumer: starts `python -m reporting` (default settings, tracing to its span file) and times how fast the
   durable consumer drains the backlog; "sustained" is the rate between 10 % and 90 % acknowledged. Then it
   drains the same backlog again into an empty store with the OpenTelemetry SDK disabled, to show what the
   per-message spans cost (`--skip-untraced` skips this);
3. latency: with all N events stored, GETs `/rollups/{fy}/{q}` over real HTTP (httpx, one connection, the
   secretariat's token) for four open quarters: p50/p99 as served (cached until the store changes); sent the moment
   a change is acknowledged (a fresh event published, and the GET sent as soon as the service's ack of it passes
   through the server, seen on `$JS.ACK.ACCEPTED.reporting.>`: the rollup read must count it); and half a second
   after a change (what a dashboard's reader meets). The time from publishing each change to its ack is printed too;
4. the reporting cycle: closes FY2024Q1 and FY2024Q2 as the secretariat's `shinchoku close` does once ingest
   admits it (an AdmittedClose on `closed.{fy}.{q}` of ACCEPTED; ingest is not running), waits for each
   `published.{fy}.{q}`, then changes their figures one report at a time (a later report of a lead with another
   status) and times each change to its `restated.{fy}.{q}` event (a core subscription to `restated.>`, as any
   system follows them): from the change's publication and from the service's ack of it. Each change must bring
   exactly one restatement, naming the change's event id (`--restatements N`);
5. rebuild: stops the service and runs `python -m reporting rebuild`, which replays ACCEPTED from the start into a
   new store and swaps it in; the rate is N / wall time of the whole command.

The load average is printed at the start and the end: other work on the machine shows up in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# This file is bench/reporting.py: keep its directory off the import path, or `reporting` would be this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402
from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.aio.subscription import Subscription  # noqa: E402

from contracts.periods import TOKYO, FiscalQuarter, quarters_between  # noqa: E402
from contracts.streams import REPORTING_DURABLE  # noqa: E402
from reporting.cycle.testing import admitted_close, publish_close  # noqa: E402
from reporting.repository import drop_tables  # noqa: E402
from reporting.testing import bulk_publish, put_catalog, synthetic_measures  # noqa: E402
from shinchoku.issuer import EmbeddedIssuer, StackAuth  # noqa: E402
from shinchoku_runtime.db import make_engine  # noqa: E402
from shinchoku_runtime.natsclient import connect, ensure_streams  # noqa: E402
from shinchoku_runtime.natsconf import write_config  # noqa: E402
from shinchoku_runtime.natsserver import NatsServer, free_port, nats_server_binary, wait_for_port  # noqa: E402
from shinchoku_runtime.testing import fresh_postgres_database  # noqa: E402

QUARTERS = quarters_between(FiscalQuarter(2024, 1), FiscalQuarter(2026, 4))
STATUSES = ("not_started", "on_track", "at_risk", "delayed", "completed", "suspended")
TRACEPARENT = "00-{:032x}-{:016x}-01"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} (1/5 min) on {os.cpu_count()} cores"


def report_message(
    *,
    event_id: str,
    measure_id: str,
    agency: str,
    quarter: FiscalQuarter,
    status: str,
    progress: int,
    reported: datetime,
    admitted: datetime,
) -> tuple[str, bytes, dict[str, str]]:
    """One AdmittedEvent as ingest publishes it on ACCEPTED (subject, JSON made with an f-string, headers)."""
    body = (
        f'{{"event":{{"event_id":"{event_id}","schema_version":1,"measure_id":"{measure_id}",'
        f'"agency":"{agency}","fiscal_year":{quarter.fiscal_year},"quarter":{quarter.quarter},"status":"{status}",'
        f'"progress":{progress},"kpis":[],"note":"進捗は概ね計画どおり",'
        f'"reported_at":"{reported.isoformat()}","reporter":"担当課"}},'
        f'"admitted_at":"{admitted.isoformat()}",'
        f'"subject":"status.{agency}.{measure_id}"}}'
    )
    headers = {"Nats-Msg-Id": event_id, "traceparent": TRACEPARENT.format(uuid.uuid4().int, uuid.uuid4().int >> 64)}
    return f"accepted.{agency}.{measure_id}", body.encode(), headers


def messages(count: int, seed: int = 3) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """AdmittedEvent JSON as ingest publishes it, made with an f-string (a few µs each)."""
    rnd = random.Random(seed)
    measures = synthetic_measures(320)
    pairs = [(m.id, str(a)) for m in measures for a in m.lead_agencies]
    admitted = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(count):
        measure_id, agency = pairs[rnd.randrange(len(pairs))]
        q = QUARTERS[rnd.randrange(len(QUARTERS))]
        reported = (q.end_at + timedelta(seconds=rnd.randrange(-20 * 86400, 45 * 86400))).astimezone(TOKYO)
        event_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        status = STATUSES[rnd.randrange(6)]
        subject, body, _ = report_message(
            event_id=event_id,
            measure_id=measure_id,
            agency=agency,
            quarter=q,
            status=status,
            progress=rnd.randrange(101),
            reported=reported,
            admitted=admitted + timedelta(microseconds=i * 50),
        )
        headers = {
            "Nats-Msg-Id": event_id,
            "traceparent": TRACEPARENT.format(rnd.getrandbits(128), rnd.getrandbits(64)),
        }
        yield subject, body, headers


def drop_store(database_url: str) -> None:
    """Empty the reporting store (for a second drain from the start)."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            drop_tables(conn, suffix="")
    finally:
        engine.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def spy_argv(out: Path | None, name: str) -> list[str]:
    """A py-spy prefix recording the command it starts (attaching to a running process is not possible here)."""
    if out is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return [spy, "record", "--rate", "250", "--subprocesses", "--format", "raw", "-o", str(out / f"{name}.txt"), "--"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


class Service:
    """`python -m reporting` as a child process on a free port (under py-spy when profiling)."""

    def __init__(self, env: dict[str, str], log: Path, profile: Path | None = None, python: str | None = None) -> None:
        """`profile`: a directory for py-spy's output; `python`: the interpreter whose `reporting` runs (another
        worktree's, to compare with another version of the service)."""
        self.env = env
        self.log = log
        self.profile = profile
        self.python = python or sys.executable
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        spy = spy_argv(self.profile.parent, self.profile.name) if self.profile else []
        argv = [*spy, self.python, "-m", "reporting"]
        self.process = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        """The service's own pid (not py-spy's, when profiling)."""
        assert self.process is not None
        if self.profile:
            for _ in range(100):
                found = children(self.process.pid)
                if found:
                    return found[0]
                time.sleep(0.05)
        return self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Under py-spy, stop the service itself: py-spy then writes its profile and exits.
        targets = children(self.process.pid) if self.profile else [self.process.pid]
        for pid in targets or [self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


async def wait_healthy(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{base}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"reporting at {base} not healthy after {timeout}s")


async def drain(nc: Client, total: int) -> tuple[float, float]:
    """Poll the durable consumer until `total` messages are acknowledged: (sustained rate, whole-drain rate)."""
    js = nc.jetstream()
    marks: list[tuple[float, int]] = []
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            info = await js.consumer_info("ACCEPTED", "reporting")
            marks.append((time.monotonic(), info.ack_floor.stream_seq or 0))
            if marks[-1][1] >= total and info.num_ack_pending == 0:
                break
        if time.monotonic() - started > 3600:
            raise TimeoutError("consumer did not drain in an hour")
        await asyncio.sleep(0.2)
    first = next((t, s) for t, s in marks if s > 0)
    low = next((t, s) for t, s in marks if s >= total * 0.1)
    high = next((t, s) for t, s in marks if s >= total * 0.9)
    sustained = (high[1] - low[1]) / max(high[0] - low[0], 1e-9)
    whole = total / max(marks[-1][0] - first[0], 1e-9)
    return sustained, whole


class AckWatch:
    """Sees the service acknowledge ACCEPTED messages as the acks pass through the server (a core subscription to
    `$JS.ACK.ACCEPTED.reporting.>`, as the admin): the moment a change is committed and acknowledged, without
    polling the consumer."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._seen: dict[int, float] = {}
        self._waiting: dict[int, asyncio.Future[float]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"$JS.ACK.ACCEPTED.{REPORTING_DURABLE}.>", cb=self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_ack(self, msg: Msg) -> None:
        at = time.perf_counter()
        if msg.data not in (b"", b"+ACK"):
            return  # a nak or a progress note: not an acknowledgement
        tokens = msg.subject.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.… (v1), or with domain and account (v2).
        seq = int(tokens[5] if len(tokens) == 9 else tokens[7])
        self._seen[seq] = at
        waiter = self._waiting.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(at)

    async def acknowledged(self, seq: int, timeout: float = 60) -> float:
        """When (perf_counter) the service acknowledged stream sequence `seq`."""
        if seq in self._seen:
            return self._seen.pop(seq)
        waiter = self._waiting[seq] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._seen.pop(seq, None)


async def latencies(
    base: str,
    nc: Client,
    quarters: list[FiscalQuarter],
    requests: int,
    changes: int,
    auth: httpx.Auth,
    acks: AckWatch,
) -> dict[str, list[float]]:
    """GET /rollups/{fy}/{q} as served, sent the moment a change is acknowledged, and half a second after one."""
    out: dict[str, list[float]] = {
        "served": [],
        "change published → acknowledged by reporting": [],
        "sent the moment a change is acknowledged": [],
        "half a second after a change": [],
    }
    js = nc.jetstream()
    async with httpx.AsyncClient(base_url=base, timeout=30, auth=auth) as http:
        for q in quarters:  # warm up: the first computation of each quarter
            assert (await http.get(f"/rollups/{q.fiscal_year}/{q.quarter}")).status_code == 200
        for i in range(requests):
            q = quarters[i % len(quarters)]
            t = time.perf_counter()
            response = await http.get(f"/rollups/{q.fiscal_year}/{q.quarter}")
            out["served"].append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
        seq = 10_000_000
        for i in range(changes + changes // 4):
            q = quarters[i % len(quarters)]
            # One more event in this quarter; the GET goes out as soon as the service acknowledges it (it has
            # committed it: the rollup read must count it).
            subject, body, headers = next(messages(1, seed=seq + i))
            doc = json.loads(body)
            doc["event"]["fiscal_year"], doc["event"]["quarter"] = q.fiscal_year, q.quarter
            published = time.perf_counter()
            ack = await js.publish(subject, json.dumps(doc).encode(), headers=headers)
            acknowledged = await acks.acknowledged(ack.seq)
            if i >= changes:
                # Read half a second after the change was acknowledged (a dashboard's reader, not the writer).
                await asyncio.sleep(0.5)
            t = time.perf_counter()
            response = await http.get(f"/rollups/{q.fiscal_year}/{q.quarter}")
            took = (time.perf_counter() - t) * 1000
            assert response.status_code == 200
            if i < changes:
                out["change published → acknowledged by reporting"].append((acknowledged - published) * 1000)
                out["sent the moment a change is acknowledged"].append(took)
            else:
                out["half a second after a change"].append(took)
    return out


class Publications:
    """Every `published.>` and `restated.>` message the service sends (core subscriptions, as any system can
    follow them), with when it arrived."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.queue: asyncio.Queue[tuple[float, str, dict[str, Any]]] = asyncio.Queue()
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        for subject in ("published.>", "restated.>"):
            self._subs.append(await self._nc.subscribe(subject, cb=self._on))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        await self.queue.put((time.perf_counter(), msg.subject, json.loads(msg.data)))

    async def next(self, subject: str, timeout: float = 60) -> tuple[float, dict[str, Any]]:
        """The next message on `subject` (when it arrived, its body); messages on other subjects are an error."""
        at, got, body = await asyncio.wait_for(self.queue.get(), timeout)
        if got != subject:
            raise AssertionError(f"expected {subject}, got {got} (revision {body.get('revision')})")
        return at, body


async def cycle(
    base: str,
    nc: Client,
    closes: list[FiscalQuarter],
    restatements: int,
    auth: httpx.Auth,
    acks: AckWatch,
) -> dict[str, list[float]]:
    """Close quarters as the secretariat (the admitted close on ACCEPTED, as ingest publishes it after `shinchoku
    close`), then change their figures one report at a time: each change must bring exactly one `restated` event.
    Returns the milliseconds from each change's publication (and from the service's acknowledgement of it) to its
    `restated.{fy}.{q}` event."""
    out: dict[str, list[float]] = {
        "close published → published.{fy}.{q} received": [],
        "change published → restated.{fy}.{q} received": [],
        "change acknowledged → restated.{fy}.{q} received": [],
    }
    js = nc.jetstream()
    publications = Publications(nc)
    await publications.start()
    revisions: dict[FiscalQuarter, int] = {}
    leads: dict[FiscalQuarter, list[tuple[str, str, str]]] = {}
    try:
        for q in closes:
            t = time.perf_counter()
            await publish_close(nc, admitted_close(fiscal_year=q.fiscal_year, quarter=q.quarter, admitted_at=now()))
            at, body = await publications.next(f"published.{q.fiscal_year}.{q.quarter}")
            out["close published → published.{fy}.{q} received"].append((at - t) * 1000)
            revisions[q] = 1
            assert body["rollup"]["revision"] == 1, body["rollup"]["revision"]
        async with httpx.AsyncClient(base_url=base, timeout=30, auth=auth) as http:
            for q in closes:
                response = await http.get(f"/rollups/{q.fiscal_year}/{q.quarter}/measures", params={"limit": 1000})
                assert response.status_code == 200, response.text
                leads[q] = [
                    (item["measure_id"], lead["agency"], lead["status"])
                    for item in response.json()["items"]
                    for lead in item["leads"]
                ]
        for i in range(restatements):
            q = closes[i % len(closes)]
            k = (i // len(closes)) % len(leads[q])
            measure_id, agency, status = leads[q][k]
            # A later report of this lead with another status: it wins, so the quarter's figures change.
            new_status = STATUSES[(STATUSES.index(status) + 1) % len(STATUSES)] if status in STATUSES else "on_track"
            leads[q][k] = (measure_id, agency, new_status)
            event_id = str(uuid.uuid4())
            subject, message, headers = report_message(
                event_id=event_id,
                measure_id=measure_id,
                agency=agency,
                quarter=q,
                status=new_status,
                progress=50,
                reported=(q.end_at + timedelta(days=90, seconds=i)).astimezone(TOKYO),
                admitted=now(),
            )
            t = time.perf_counter()
            ack = await js.publish(subject, message, headers=headers)
            acknowledged = await acks.acknowledged(ack.seq)
            at, restated = await publications.next(f"restated.{q.fiscal_year}.{q.quarter}")
            revisions[q] += 1
            assert restated["revision"] == revisions[q], (restated["revision"], revisions[q])
            assert [c["event_ids"] for c in restated["changes"]] == [[event_id]], restated["changes"]
            out["change published → restated.{fy}.{q} received"].append((at - t) * 1000)
            out["change acknowledged → restated.{fy}.{q} received"].append((at - acknowledged) * 1000)
        with contextlib.suppress(TimeoutError):  # nothing more: exactly one restatement per change
            extra = await asyncio.wait_for(publications.queue.get(), 2)
            raise AssertionError(f"an unexpected publication: {extra[1]}")
    finally:
        await publications.stop()
    return out


async def measured_phases(args: argparse.Namespace, base: str, admin: Client, reader: httpx.Auth, loaded: int) -> None:
    """The latency phase on open quarters, then the reporting cycle's on closed ones; prints their tables."""
    quarters = [FiscalQuarter(2024, 3), FiscalQuarter(2025, 1), FiscalQuarter(2025, 4), FiscalQuarter(2026, 2)]
    acks = AckWatch(admin)
    await acks.start()
    try:
        lat = await latencies(base, admin, quarters, args.requests, args.changes, reader, acks)
        print(table(f"GET /rollups/{{fy}}/{{q}} with {loaded:,} events stored; {load()}", lat), flush=True)
        closes = [FiscalQuarter(2024, 1), FiscalQuarter(2024, 2)]
        figures = await cycle(base, admin, closes, args.restatements, reader, acks)
        title = (
            f"the reporting cycle with {loaded:,} events stored: {len(closes)} quarters closed, then "
            f"{args.restatements} changes to them one at a time; {load()}"
        )
        print(table(title, figures), flush=True)
    finally:
        await acks.stop()


def now() -> datetime:
    return datetime.now(UTC)


def table(title: str, rows: dict[str, list[float]]) -> str:
    """Figures as a small table: p50, p99 and max in milliseconds, and how many."""
    width = max(len(name) for name in rows)
    lines = [title, f"  {'':{width}}  {'p50 ms':>9}  {'p99 ms':>9}  {'max ms':>9}  {'n':>6}"]
    for name, values in rows.items():
        if values:
            lines.append(
                f"  {name:{width}}  {statistics.median(values):9.2f}  {percentile(values, 99):9.2f}  "
                f"{max(values):9.2f}  {len(values):6,}"
            )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events loaded onto ACCEPTED")
    parser.add_argument("--requests", type=int, default=2000, help="rollup GETs for the served latency")
    parser.add_argument("--changes", type=int, default=100, help="rollup GETs right after a change")
    parser.add_argument(
        "--restatements", type=int, default=100, help="changes to closed quarters, each timed to its restated event"
    )
    parser.add_argument("--consumer-only", action="store_true", help="drain only (no latency, cycle or rebuild phase)")
    parser.add_argument(
        "--service-python", default=None, help="run the service with this interpreter (another worktree's .venv)"
    )
    parser.add_argument("--postgres", action="store_true", help="the store on a fresh PostgreSQL database")
    parser.add_argument("--profile", type=Path, default=None, help="write py-spy profiles here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--rebuilds", type=int, default=1, help="rebuild this many times (the median is printed)")
    parser.add_argument("--skip-untraced", action="store_true", help="drain once only (with tracing)")
    args = parser.parse_args()

    service_python = args.service_python or sys.executable
    print(f"reporting benchmark: {args.events:,} events, the service run by {service_python}; {load()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="shinchoku-bench-reporting-"))
    server = NatsServer.create(tmp / "nats")
    # Loading is set-up, not measured: it runs on the same store without `sync_interval: always` (an fsync per
    # message), then the server restarts with the configuration every deployment uses.
    config = write_config(server.directory, server.options)
    loading_config = config.with_name("nats-loading.conf")
    loading_config.write_text(re.sub(r"\n\s*sync_interval:.*", "", config.read_text()))
    pg = fresh_postgres_database("shinchoku_bench") if args.postgres else contextlib.nullcontext(None)
    try:
        with pg as pg_url:
            database_url = pg_url or f"sqlite:///{tmp / 'db' / 'reporting.sqlite'}"
            loader = subprocess.Popen(
                [nats_server_binary(), "-c", str(loading_config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_for_port(server.options.host, server.options.port)
                admin = await connect(
                    server.plain_url, name="bench-load", user="admin", password=server.passwords["admin"]
                )
                await ensure_streams(admin.jetstream())
                await put_catalog(admin, synthetic_measures(320))
                t = time.monotonic()
                loaded = await bulk_publish(admin, messages(args.events))
                print(f"loaded {loaded:,} events onto ACCEPTED in {time.monotonic() - t:.1f}s", flush=True)
                await admin.close()
            finally:
                loader.terminate()
                loader.wait(30)
            server.start()
            admin = await connect(
                server.plain_url, name="bench-admin", user="admin", password=server.passwords["admin"]
            )

            port = free_port()
            base = f"http://127.0.0.1:{port}"
            # Open quarters are read with a token (the secretariat's) of the issuer the service trusts.
            reader = StackAuth(EmbeddedIssuer.prepare(tmp / "data"))
            env = {
                **os.environ,
                "SHINCHOKU_REPORTING_NATS_URL": server.plain_url,
                "SHINCHOKU_REPORTING_NATS_USER": "reporting",
                "SHINCHOKU_REPORTING_NATS_PASSWORD": server.passwords["reporting"],
                "SHINCHOKU_REPORTING_DATABASE_URL": database_url,
                "SHINCHOKU_REPORTING_DATA_DIR": str(tmp / "data"),
                "SHINCHOKU_REPORTING_PORT": str(port),
                "SHINCHOKU_REPORTING_LOG_LEVEL": "WARNING",
            }
            # The consumer with tracing as deployed (every report's trace recorded, spans to the span file), then
            # again from an empty store with the SDK disabled, to show what tracing costs.
            runs: list[tuple[str, dict[str, str]]] = [("traced", {})] + (
                [] if args.skip_untraced else [("untraced", {"OTEL_SDK_DISABLED": "true"})]
            )
            service: Service | None = None
            try:
                for i, (label, extra) in enumerate(runs):
                    if i > 0:
                        await admin.jetstream().delete_consumer("ACCEPTED", "reporting")
                        drop_store(database_url)
                    profile = args.profile / f"service-{label}" if args.profile else None
                    service = Service({**env, **extra}, tmp / f"reporting-{label}.log", profile, args.service_python)
                    service.start()
                    await wait_healthy(base)
                    pid, nats_pid = service.pid, server.process.pid if server.process else 0
                    await asyncio.sleep(1)  # the writer process is up once healthy; let it settle
                    writers = children(pid)
                    cpu, nats_cpu = cpu_seconds(pid), cpu_seconds(nats_pid)
                    writer_cpu = sum(cpu_seconds(w) for w in writers)
                    sustained, whole = await drain(admin, loaded)
                    main_us = (cpu_seconds(pid) - cpu) / loaded * 1e6
                    writer_us = (sum(cpu_seconds(w) for w in writers) - writer_cpu) / loaded * 1e6
                    nats_us = (cpu_seconds(nats_pid) - nats_cpu) / loaded * 1e6
                    busiest = max(main_us, writer_us)
                    print(
                        f"consumer ({label}): {sustained:,.0f} events/s sustained (10–90 % of the backlog), "
                        f"{whole:,.0f} events/s over the whole drain; CPU per event: service process {main_us:.0f} µs "
                        f"+ writer process {writer_us:.0f} µs (the busier one allows {1e6 / busiest:,.0f} events/s "
                        f"given a free core each), nats-server {nats_us:.0f} µs; {load()}",
                        flush=True,
                    )
                    if i < len(runs) - 1:
                        service.stop()
                if not args.consumer_only:
                    await measured_phases(args, base, admin, reader, loaded)
            finally:
                if service is not None:
                    service.stop()

            rates = []
            for _ in range(0 if args.consumer_only else args.rebuilds):
                # The events of the latency phases too, the closes and the restating changes.
                in_stream = loaded + args.changes + args.changes // 4 + 2 + args.restatements
                rates.append(run_rebuild(args, env, in_stream, server.process.pid if server.process else 0))
            if len(rates) > 1:
                print(
                    f"rebuild over {len(rates)} runs: median {statistics.median(rates):,.0f} events/s "
                    f"(min {min(rates):,.0f}, max {max(rates):,.0f})",
                    flush=True,
                )
            await admin.close()
    finally:
        server.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"done; {load()}")


def run_rebuild(args: argparse.Namespace, env: dict[str, str], messages_in_stream: int, nats_pid: int) -> float:
    """One `python -m reporting rebuild` over the whole of ACCEPTED; prints its figures, returns events/s."""
    nats_cpu = cpu_seconds(nats_pid) if nats_pid else 0.0
    t = time.monotonic()
    rebuild = subprocess.Popen(
        [*spy_argv(args.profile, "rebuild"), sys.executable, "-m", "reporting", "rebuild", "--no-progress"],
        env={**env, "SHINCHOKU_REPORTING_LOG_LEVEL": "INFO"},  # its phases, printed below
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout, stderr = rebuild.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rebuild_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    seconds = time.monotonic() - t
    nats_cpu = (cpu_seconds(nats_pid) if nats_pid else 0.0) - nats_cpu
    if rebuild.returncode != 0:
        raise RuntimeError(f"rebuild failed: {stdout}")
    stored = re.search(r"([\d,]+) events,", stdout)
    rate = messages_in_stream / seconds
    print(
        f"rebuild: {messages_in_stream:,} ACCEPTED messages replayed into a new store in {seconds:.1f}s: "
        f"{rate:,.0f} events/s (command wall time, start-up included; "
        f"{stored.group(1) if stored else '?'} events stored); CPU {rebuild_cpu:.1f}s in the rebuild process "
        f"and its writer (= {messages_in_stream / max(rebuild_cpu, 1e-9):,.0f} events/s of their CPU), "
        f"{nats_cpu:.1f}s in nats-server; {load()}",
        flush=True,
    )
    phases = [m.group(1) for m in re.finditer(r'"message": "((?:replayed|indexed|caught up|writer:)[^"]*)"', stderr)]
    if phases:
        print(f"  rebuild phases: {'; '.join(phases)}", flush=True)
    return rate


if __name__ == "__main__":
    asyncio.run(main())
