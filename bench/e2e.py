"""End-to-end benchmark: ministry publish → ingest → reporting, on the embedded stack, next to the raw JetStream ceiling.

    .venv/bin/python bench/e2e.py                       # the full run (about 2.5 minutes)
    .venv/bin/python bench/e2e.py --duration 10 --latency-duration 10 --raw-events 50000   # a short run
    .venv/bin/python bench/e2e.py --profile artifacts/profile   # + py-spy profiles of ingest and reporting

What one run does:

1. starts the stack the way `shinchoku up` does (`plan_launch` + `Supervisor`: nats-server from the wheel with
   generated per-agency users and `sync_interval: always`, then catalog, ingest and reporting as their own
   processes on SQLite, default settings) on a temporary data directory and free ports;
2. the ceiling: raw JetStream `publish_async` throughput on the same nats-server: the same payloads published
   into a scratch stream (file storage, like STATUS) from `--publishers` connections, every PubAck awaited;
3. end-to-end throughput: every agency that leads a measure publishes from its own connection (its own user and
   inbox) with `publish_async`, together offering `--offered` events/s for `--duration` s. An event is visible when
   reporting has committed it to its rollup store (the store every rollup is computed from; see "visibility"
   below). The figure is the visible rate over the load window after a warm-up, and the drain rate
   (all events / first publish → last visible) is printed next to it;
4. latency at a fixed offered load of `--latency-rate` (1,000) events/s for `--latency-duration` s: per event, the
   time from just before its publish to the moment it is seen in reporting's store; p50, p90, p99 and max;
5. checks that reporting serves what was published (the rollups' per-agency `reported` counts of one quarter
   against the slots the latency phase filled) and that nothing was lost (store count = acknowledged count).

Visibility: a thread polls reporting's SQLite store every `--poll-ms` ms (read-only connection, `rowid` order:
the rows a commit added since the last poll). Reporting's HTTP answers from that same store, so a committed row
is rollup-visible; the poll adds at most `--poll-ms` to each latency (half of it on average).

The figures are printed with the load average at the start and the end, since other work on the machine shows up
in them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import nats
from nats.aio.client import Client
from nats.js.api import PubAck, StorageType, StreamConfig
from prometheus_client.parser import text_string_to_metric_families

from contracts.streams import STATUS_STREAM, agency_status_spec, publish_stream
from shinchoku.issuer import StackAuth
from shinchoku.launch import NATS, SERVICES, Launch, StackSettings, plan_launch
from shinchoku.supervisor import Supervisor
from shinchoku_runtime.natsserver import free_port
from shinchoku_runtime.streamdefs import stream_config

JST = timezone(timedelta(hours=9))
STATUSES = ("not_started", "on_track", "at_risk", "delayed", "completed", "suspended")
RAW_STREAM = "BENCH_RAW"


# ------------------------------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    launch: Launch
    supervisor: Supervisor
    thread: threading.Thread | None = None

    def url(self, service: str) -> str:
        return str(self.launch.stack.http[service])

    @property
    def nats_url(self) -> str:
        return str(self.launch.stack.nats_plain_url)

    def password(self, user: str) -> str:
        return str(self.launch.stack.password(user))

    @property
    def data_dir(self) -> Path:
        return Path(self.launch.stack.data_dir)

    def pid(self, name: str) -> int:
        return int(self.supervisor.pids()[name])


@contextlib.contextmanager
def embedded_stack(data_dir: Path, extra_env: dict[str, str]) -> Iterator[Stack]:
    """nats-server, catalog, ingest and reporting as `shinchoku up` runs them (same launch plan, same supervisor)."""
    for key in [k for k in os.environ if k.startswith("SHINCHOKU_")]:
        del os.environ[key]
    os.environ["SHINCHOKU_NATS_PORT"] = str(free_port())
    for service in SERVICES:
        os.environ[f"SHINCHOKU_{service.upper()}_PORT"] = str(free_port())
        os.environ.setdefault(f"SHINCHOKU_{service.upper()}_LOG_LEVEL", "WARNING")
    os.environ.update(extra_env)
    launch = plan_launch(data_dir, StackSettings())
    launch.stack.save()
    events: list[str] = []
    supervisor = Supervisor(
        launch.specs, run_dir=launch.stack.run_dir, logs_dir=launch.stack.logs_dir, log=events.append
    )
    stack = Stack(launch, supervisor)
    try:
        supervisor.start([NATS])
        supervisor.wait_ready([NATS], timeout=30)
        supervisor.start(SERVICES)
        supervisor.wait_ready(SERVICES, timeout=180)
        stack.thread = threading.Thread(target=supervisor.run, daemon=True, name="supervisor")
        stack.thread.start()
        yield stack
    finally:
        supervisor.stopping.set()
        if stack.thread is not None:
            stack.thread.join(5)
        supervisor.stop_all()
        restarts = {k: v for k, v in supervisor.restarts().items() if v}
        if restarts:
            print(f"!! processes restarted during the run: {restarts}")
            print("\n".join(events[-10:]))


# ------------------------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class Slot:
    fiscal_year: int
    quarter: int
    measure_id: str
    agency: str


def quarter_last_day(fiscal_year: int, quarter: int) -> date:
    return {1: date(fiscal_year, 6, 30), 2: date(fiscal_year, 9, 30), 3: date(fiscal_year, 12, 31)}.get(
        quarter, date(fiscal_year + 1, 3, 31)
    )


class Reports:
    """Valid v1 events, made on the fly (f-string, a few µs each), slot after slot.

    Slots are (fiscal year, quarter, measure, lead agency) from FY`first_year` to FY`last_year`, then again from the
    first: until they wrap, every event is the only one in its slot, so each is its measure's effective report for
    that agency. All those quarters are past, so no event is a future report.
    """

    def __init__(self, pairs: list[tuple[str, str]], first_year: int, last_year: int, seed: int) -> None:
        self.pairs = pairs
        self.first_year, self.last_year = first_year, last_year
        self.year = first_year
        self.quarter = 1
        self.index = 0
        self.rng = random.Random(seed)
        #: (fiscal year, quarter, measure, agency) of every event made.
        self.slots: set[tuple[int, int, str, str]] = set()

    def next(self) -> tuple[str, str, bytes, str]:
        """(agency, subject, payload, event_id) of the next event."""
        measure_id, agency = self.pairs[self.index]
        fy, q = self.year, self.quarter
        self.index += 1
        if self.index == len(self.pairs):
            self.index = 0
            self.quarter += 1
            if self.quarter == 5:
                self.quarter, self.year = 1, self.year + 1
                if self.year > self.last_year:
                    self.year = self.first_year
        self.slots.add((fy, q, measure_id, agency))
        event_id = str(uuid.uuid4())
        reported = datetime(*quarter_last_day(fy, q).timetuple()[:3], 12, tzinfo=JST) - timedelta(
            days=self.rng.randint(0, 60)
        )
        payload = (
            f'{{"event_id":"{event_id}","measure_id":"{measure_id}","agency":"{agency}","fiscal_year":{fy},'
            f'"quarter":{q},"status":"{STATUSES[self.rng.randrange(6)]}","progress":{self.rng.randint(0, 100)},'
            f'"reported_at":"{reported.isoformat()}","reporter":"bench"}}'
        ).encode()
        return agency, f"status.{agency}.{measure_id}", payload, event_id


# ------------------------------------------------------------------------------------------------ visibility


class StoreWatcher:
    """Polls reporting's SQLite store (read-only) for rows added since the last poll; records when each was seen."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.seen: dict[str, float] = {}
        self.count = 0
        self.timeline: list[tuple[float, int]] = []
        self._last_rowid = 0
        self._record_ids = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="store-watcher")
        self._lock = threading.Lock()

    def start(self) -> StoreWatcher:
        conn = self._connect()
        self._last_rowid = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0]
        self.count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        conn.close()
        self._thread.start()
        return self

    def record_ids(self, on: bool) -> None:
        with self._lock:
            self._record_ids = on

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False)

    def _run(self) -> None:
        conn = self._connect()
        while not self._stop.is_set():
            try:
                with self._lock:
                    record = self._record_ids
                if record:
                    rows = conn.execute(
                        "SELECT rowid, event_id FROM events WHERE rowid > ? ORDER BY rowid", (self._last_rowid,)
                    ).fetchall()
                    now = time.perf_counter()
                    if rows:
                        self._last_rowid = rows[-1][0]
                        self.count += len(rows)
                        for _, event_id in rows:
                            self.seen.setdefault(event_id, now)
                else:
                    top = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0]
                    now = time.perf_counter()
                    # Reporting never deletes and never replaces rows: rowids grow by one per stored event.
                    self.count += top - self._last_rowid
                    self._last_rowid = top
                self.timeline.append((now, self.count))
            except sqlite3.OperationalError:
                pass  # a checkpoint in progress: poll again
            self._stop.wait(self.interval)
        conn.close()

    def count_at(self, moment: float) -> int:
        best = 0
        for t, n in self.timeline:
            if t > moment:
                break
            best = n
        return best

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------------------------------------ publishing


async def agency_connections(stack: Stack, agencies: list[str]) -> dict[str, Client]:
    out = {}
    for agency in agencies:
        out[agency] = await nats.connect(
            stack.nats_url,
            user=agency,
            password=stack.password(agency),
            inbox_prefix=f"_INBOX_{agency}",
            name=f"bench-{agency}",
            max_reconnect_attempts=-1,
        )
    return out


@dataclass
class LoadResult:
    published: int = 0
    acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0
    publish_times: dict[str, float] = field(default_factory=dict)


async def offer_load(
    conns: dict[str, Client],
    reports: Reports,
    *,
    rate: float,
    duration: float,
    keep_times: bool,
    max_pending: int,
    in_flight: tuple[int, StoreWatcher] | None = None,
) -> LoadResult:
    """Publish at `rate` events/s for `duration` s (in 5 ms ticks) with publish_async; await every PubAck.

    With `in_flight=(cap, watcher)` the publishers hold back while `cap` events are published but not yet visible:
    the offered load then follows what the pipeline takes, and the backlog (and the drain after) stays bounded.
    """
    jss = {a: nc.jetstream(publish_async_max_pending=max_pending) for a, nc in conns.items()}
    result = LoadResult()
    futures: list[asyncio.Future[PubAck]] = []
    in_flight_base = in_flight[1].count if in_flight is not None else 0
    result.started = time.perf_counter()
    end = result.started + duration
    tick = 0.005
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = int((now - result.started) * rate) - result.published
        if in_flight is not None:
            cap, watcher = in_flight
            due = min(due, cap - (result.published - (watcher.count - in_flight_base)))
        for _ in range(max(0, due)):
            agency, subject, payload, event_id = reports.next()
            if keep_times:
                result.publish_times[event_id] = time.perf_counter()
            futures.append(await jss[agency].publish_async(subject, payload, stream=publish_stream(subject)))
            result.published += 1
        await asyncio.sleep(max(0.0, tick - (time.perf_counter() - now)))
    result.ended = time.perf_counter()
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            result.errors[type(outcome).__name__] += 1
        else:
            result.acked += 1
    return result


async def publish_spread(
    conns: list[Client], payloads: list[bytes], targets: list[tuple[str, str]], max_pending: int
) -> int:
    """`payloads` dealt round-robin over `conns`, connection i publishing (`publish_async`) on `{prefix}.{n % 320}`
    into the stream of `targets[i]` = (prefix, stream); every PubAck awaited. The number acknowledged."""

    async def publish(i: int) -> int:
        prefix, stream = targets[i]
        pub = conns[i].jetstream(publish_async_max_pending=max_pending)
        futures = [
            await pub.publish_async(f"{prefix}.{n % 320}", payloads[n], stream=stream)
            for n in range(i, len(payloads), len(conns))
        ]
        return len(await asyncio.gather(*futures))

    return sum(await asyncio.gather(*(publish(i) for i in range(len(conns)))))


async def raw_ceiling(stack: Stack, reports: Reports, count: int, connections: int, max_pending: int) -> float:
    """Raw JetStream publish_async rate: `count` payloads into a scratch file stream, all PubAcks awaited."""
    admin = await nats.connect(stack.nats_url, user="admin", password=stack.password("admin"), name="bench-raw-admin")
    js = admin.jetstream()
    await js.add_stream(StreamConfig(name=RAW_STREAM, subjects=["benchraw.>"], storage=StorageType.FILE))
    payloads = [reports.next()[2] for _ in range(count)]
    conns = [
        await nats.connect(stack.nats_url, user="admin", password=stack.password("admin"), name=f"bench-raw-{i}")
        for i in range(connections)
    ]

    started = time.perf_counter()
    done = await publish_spread(
        conns, payloads, [(f"benchraw.{i}", RAW_STREAM) for i in range(connections)], max_pending
    )
    elapsed = time.perf_counter() - started
    for nc in conns:
        await nc.close()
    await js.delete_stream(RAW_STREAM)
    await admin.close()
    return done / elapsed


async def topology_ceiling(stack: Stack, reports: Reports, agencies: list[str], count: int, max_pending: int) -> float:
    """The broker's ceiling for the platform's way of storing a report, with no service in the way: each agency
    publishes (`publish_async`, its own connection) into a scratch copy of its own stream, which a scratch copy of
    STATUS sources, as the shared definitions declare them (`contracts.streams`); the rate is `count` reports over
    first publish → the last one stored in the sourcing stream. Every report is stored and fsynced twice here, as
    on the platform (`STATUS_{agency}`, then STATUS), where the raw ceiling stores it once."""
    admin = await nats.connect(stack.nats_url, user="admin", password=stack.password("admin"), name="bench-topo-admin")
    js = admin.jetstream()
    own = [
        dataclasses.replace(
            agency_status_spec(a),
            name=f"BENCH_TOPO_{a}",
            subjects=(f"benchtopo.{a}.>",),
            deny_delete=False,
            deny_purge=False,
        )
        for a in agencies
    ]
    merged = dataclasses.replace(
        STATUS_STREAM,
        name="BENCH_TOPO",
        subjects=("benchtopo.>",),
        listens=("benchtopo-commands.>",),
        sources=tuple(spec.name for spec in own),
        deny_delete=False,
        deny_purge=False,
    )
    for spec in (*own, merged):
        await js.add_stream(stream_config(spec))
    payloads = [reports.next()[2] for _ in range(count)]
    conns = [
        await nats.connect(stack.nats_url, user="admin", password=stack.password("admin"), name=f"bench-topo-{a}")
        for a in agencies
    ]

    started = time.perf_counter()
    targets = [(f"benchtopo.{a}", spec.name) for a, spec in zip(agencies, own, strict=True)]
    acked = await publish_spread(conns, payloads, targets, max_pending)
    while (await js.stream_info(merged.name)).state.messages < acked:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    for nc in conns:
        await nc.close()
    for spec in (merged, *own):
        await js.delete_stream(spec.name)
    await admin.close()
    return acked / elapsed


async def consumer_backlog(stack: Stack) -> dict[str, int]:
    admin = await nats.connect(stack.nats_url, user="admin", password=stack.password("admin"), name="bench-watch")
    try:
        js = admin.jetstream()
        out = {}
        for durable, stream in (("ingest", "STATUS"), ("reporting", "ACCEPTED")):
            info = await js.consumer_info(stream, durable)
            out[durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return out
    finally:
        await admin.close()


def batch_counts(stack: Stack) -> tuple[float, float]:
    """Ingest's `shinchoku_ingest_batch_size` histogram so far: (messages, batches), from its /metrics."""
    text = httpx.get(f"{stack.url('ingest')}/metrics", timeout=10, auth=StackAuth.of(stack.data_dir)).text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "shinchoku_ingest_batch_size"
        for sample in family.samples
    }
    return samples.get("shinchoku_ingest_batch_size_sum", 0.0), samples.get("shinchoku_ingest_batch_size_count", 0.0)


def ingest_batches(stack: Stack, before: tuple[float, float]) -> str:
    """How many STATUS messages ingest took per batch during the load (its batch-size histogram)."""
    total, batches = (now - then for now, then in zip(batch_counts(stack), before, strict=True))
    return f"ingest batches: {batches:,.0f}, {total / batches if batches else 0:,.1f} messages each on average"


# ------------------------------------------------------------------------------------------------ profiling


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each process of the stack (and this benchmark) spends between `start` and `stop`."""

    NAMES = (NATS, "ingest", "reporting", "catalog")

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {name: cpu_seconds(self.stack.pid(name)) for name in self.NAMES}
        times = os.times()
        out["benchmark (publishers, watcher)"] = times.user + times.system
        return out

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> None:
        after = self._now()
        self.spent = {k: after[k] - self.before.get(k, 0.0) for k in after}

    def report(self, events: int, seconds: float) -> str:
        total = sum(self.spent.values())
        parts = [f"{k} {v / events * 1e6:,.0f}" for k, v in self.spent.items()]
        return (
            f"  CPU per event (µs): {', '.join(parts)}; total {total / events * 1e6:,.0f} µs "
            f"= {total / seconds:.2f} cores busy on average over {seconds:.0f}s"
        )


@contextlib.contextmanager
def profiled(stack: Stack, directory: Path | None, seconds: float, label: str) -> Iterator[None]:
    """py-spy record (raw collapsed stacks) of ingest and reporting while the block runs."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    py_spy = str(Path(sys.executable).parent / "py-spy")
    procs = []
    for service in ("ingest", "reporting"):
        out = directory / f"{label}-{service}.txt"
        procs.append(
            (
                service,
                out,
                subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(stack.pid(service)),
                        "--rate",
                        "100",
                        "--format",
                        "raw",
                        "--duration",
                        str(int(seconds)),
                        "--nonblocking",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                ),
            )
        )
    try:
        yield
    finally:
        for service, out, proc in procs:
            try:
                proc.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                proc.wait(10)
            if out.exists():
                print(summarise_profile(service, out))
            else:
                print(f"  (no profile for {service}: {proc.stderr.read().decode()[-300:] if proc.stderr else ''})")


_BORING = ("asyncio/", "<frozen runpy>", "threading.py", "__main__.py", "shinchoku_runtime/service.py")


def summarise_profile(service: str, path: Path, top: int = 15) -> str:
    """Top functions by own samples and by inclusive samples, from py-spy's raw (collapsed) stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text("utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"  profile of {service}: no samples ({path})"
    lines = [f"  profile of {service}: {total} samples ({path})", "    own time:"]
    lines += [f"      {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines.append("    inclusive (event loop and thread plumbing left out):")
    interesting = [(f, n) for f, n in inclusive.most_common() if not any(b in f for b in _BORING)]
    lines += [f"      {n / total:6.1%}  {f}" for f, n in interesting[: top + 10]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the run


def log_text(stack: Stack, name: str) -> str:
    try:
        return (stack.data_dir / "logs" / f"{name}.log").read_text("utf-8", errors="replace")
    except OSError:
        return ""


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


async def run(args: argparse.Namespace, stack: Stack) -> bool:
    """The three measurements on a running stack; False when something acknowledged went missing."""
    ok = True
    measures = httpx.get(f"{stack.url('catalog')}/measures", params={"limit": 1000}, timeout=30).json()["items"]
    pairs = [(m["id"], a) for m in measures for a in m["lead_agencies"]]
    random.Random(5).shuffle(pairs)
    agencies = sorted({a for _, a in pairs})

    raw = await raw_ceiling(stack, Reports(pairs, 2020, 2024, 1), args.raw_events, args.publishers, args.max_pending)
    print(
        f"raw JetStream publish_async ceiling: {raw:,.0f} events/s "
        f"({args.raw_events:,} PubAcks, {args.publishers} connections, file store, sync always)"
    )
    topo = await topology_ceiling(stack, Reports(pairs, 2020, 2024, 4), agencies, args.raw_events, args.max_pending)
    print(
        f"the platform's store topology, no services: {topo:,.0f} events/s ({args.raw_events:,} reports from "
        f"{len(agencies)} agency connections into their own streams, sourced into one: stored twice)"
    )

    watcher = StoreWatcher(stack.data_dir / "db" / "reporting.sqlite", args.poll_ms / 1000).start()
    conns = await agency_connections(stack, agencies)
    try:
        # --- throughput ---
        reports = Reports(pairs, 2020, 2024, 2)
        before = watcher.count
        cpu = CpuMeter(stack)
        batches_before = batch_counts(stack)
        cpu.start()
        with profiled(stack, args.profile, min(args.profile_seconds, args.duration), "throughput"):
            load = await offer_load(
                conns,
                reports,
                rate=args.offered,
                duration=args.duration,
                keep_times=False,
                max_pending=args.max_pending,
                in_flight=(args.max_in_flight, watcher) if args.max_in_flight else None,
            )
        backlog = await consumer_backlog(stack)
        la_during = loadavg()
        warm = load.started + min(args.warmup, args.duration / 3)
        window_visible = watcher.count_at(load.ended) - watcher.count_at(warm)
        sustained = window_visible / (load.ended - warm)
        deadline = time.perf_counter() + args.drain_timeout
        while watcher.count - before < load.acked and time.perf_counter() < deadline:
            await asyncio.sleep(0.2)
        last = next((t for t, n in watcher.timeline if n - before >= load.acked), float("nan"))
        cpu.stop()
        drained = load.acked / (last - load.started)
        e2e_lost = load.acked - (watcher.count - before)
        print(
            f"end-to-end: offered up to {args.offered:,.0f}/s for {args.duration:.0f}s from {len(conns)} agency "
            f"connections, at most {args.max_in_flight:,} events in flight (published, not yet visible): "
            f"{load.published:,} published ({load.published / (load.ended - load.started):,.0f}/s), "
            f"{load.acked:,} acknowledged, errors {dict(load.errors)}"
        )
        print(
            f"  sustained publish→rollup-visible: {sustained:,.0f} events/s "
            f"(visible during {warm - load.started:.0f}–{args.duration:.0f}s of the load)"
        )
        print(
            f"  drain: all {load.acked:,} visible {last - load.started:.1f}s after the first publish → "
            f"{drained:,.0f} events/s; backlog when the load stopped: {backlog}"
        )
        print(cpu.report(load.acked, (last if last == last else time.perf_counter()) - load.started))
        print(f"  {ingest_batches(stack, batches_before)}")
        print(f"  ratio end-to-end / raw: {sustained / raw:.2f} (sustained), {drained / raw:.2f} (drain)")
        print(f"  ratio end-to-end / store topology: {sustained / topo:.2f} (sustained), {drained / topo:.2f} (drain)")
        print(f"  load average at the end of the load: {la_during}")
        ok = ok and e2e_lost == 0

        # --- latency at a fixed offered load ---
        await asyncio.sleep(1.0)
        # FY2000–2019 are the latency phase's own (80 quarters × every measure/lead pair: about 27,000 slots).
        # (Reporting serves FY2000–2100 only, though the contract admits FY1900 on.)
        reports = Reports(pairs, 2000, 2019, 3)
        first_fy = reports.year
        watcher.record_ids(True)
        lat = await offer_load(
            conns,
            reports,
            rate=args.latency_rate,
            duration=args.latency_duration,
            keep_times=True,
            max_pending=args.max_pending,
        )
        deadline = time.perf_counter() + args.drain_timeout
        while len(watcher.seen.keys() & lat.publish_times.keys()) < lat.acked and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        latencies = [(watcher.seen[e] - t) * 1000 for e, t in lat.publish_times.items() if e in watcher.seen]
        missing = lat.acked - len(latencies)
        print(
            f"latency at {args.latency_rate:,.0f} events/s offered for {args.latency_duration:.0f}s "
            f"({lat.acked:,} acknowledged, {len(latencies):,} seen; poll every {args.poll_ms:g} ms):"
        )
        if latencies:
            print(
                f"  publish→rollup-visible p50 {percentile(latencies, 50):.0f} ms, "
                f"p90 {percentile(latencies, 90):.0f} ms, p99 {percentile(latencies, 99):.0f} ms, "
                f"max {max(latencies):.0f} ms, mean {statistics.fmean(latencies):.0f} ms"
            )
        ok = ok and missing == 0

        # --- what reporting serves agrees ---
        fy, q = first_fy, 1
        expected = dict(Counter(a for (y, qq, _m, a) in reports.slots if (y, qq) == (fy, q)))
        rollup = httpx.get(
            f"{stack.url('reporting')}/rollups/{fy}/{q}", timeout=30, auth=StackAuth.of(stack.data_dir)
        ).json()
        served = {a: t["reported"] for a, t in rollup["by_agency"].items() if t["reported"]}
        agrees = served == expected
        print(
            f"  served rollup FY{fy}Q{q}: per-agency reported counts "
            + ("match the published slots" if agrees else f"DIFFER: served {served} expected {expected}")
        )
        ok = ok and agrees

        dropping = [n for n in ("ingest", "reporting") if "dropping Span" in log_text(stack, n)]
        if dropping:
            print(
                f'  note: span queue overflowed in {", ".join(dropping)} ("Queue full, dropping Span"): traces incomplete'
            )
        p50 = percentile(latencies, 50) if latencies else float("nan")
        p99 = percentile(latencies, 99) if latencies else float("nan")
        print(
            f"SUMMARY end-to-end {sustained:,.0f} events/s sustained ({drained:,.0f} drain), raw {raw:,.0f} events/s, "
            f"ratio {sustained / raw:.2f}; store topology {topo:,.0f} events/s, ratio {sustained / topo:.2f}; at {args.latency_rate:,.0f}/s p50 {p50:.0f} ms p99 {p99:.0f} ms; "
            f"load average during the load {la_during}"
        )
    finally:
        watcher.stop()
        for nc in conns.values():
            await nc.close()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="seconds of throughput load (default 60)")
    parser.add_argument("--offered", type=float, default=8000, help="offered events/s in the throughput phase")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=20_000,
        help="throughput phase: publishers wait while this many events are not yet visible (0: no limit)",
    )
    parser.add_argument("--warmup", type=float, default=5, help="seconds of the load left out of the sustained rate")
    parser.add_argument("--latency-rate", type=float, default=1000, help="offered events/s in the latency phase")
    parser.add_argument("--latency-duration", type=float, default=30, help="seconds of the latency phase")
    parser.add_argument("--raw-events", type=int, default=100_000, help="PubAcks for the raw JetStream ceiling")
    parser.add_argument("--publishers", type=int, default=4, help="connections publishing the raw ceiling")
    parser.add_argument("--max-pending", type=int, default=4000, help="publish_async max pending per connection")
    parser.add_argument("--poll-ms", type=float, default=5, help="store poll interval (visibility)")
    parser.add_argument("--drain-timeout", type=float, default=300, help="seconds to wait for the backlog to drain")
    parser.add_argument("--no-tracing", action="store_true", help="OTEL_SDK_DISABLED=true for the services")
    parser.add_argument("--profile", type=Path, help="directory for py-spy profiles of ingest and reporting")
    parser.add_argument("--profile-seconds", type=float, default=20, help="seconds profiled in the throughput phase")
    parser.add_argument("--tmp", help="where the temporary data directory goes (default: the system's)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the stack, e.g. OTEL_TRACES_SAMPLER=parentbased_traceidratio (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs, span files, stores)")
    args = parser.parse_args()
    print(f"Shinchoku end-to-end benchmark on {os.cpu_count()} cores; load average at start: {loadavg()}")
    base = Path(tempfile.mkdtemp(prefix="shinchoku-e2e-", dir=args.tmp))
    extra = {"OTEL_SDK_DISABLED": "true"} if args.no_tracing else {}
    extra.update(item.split("=", 1) for item in args.env)
    if extra:
        print(f"stack environment: {extra}")
    try:
        t0 = time.perf_counter()
        # Started outside the event loop: the supervisor declares the streams with asyncio.run, as under `up`.
        with embedded_stack(base / "var", extra) as stack:
            print(
                f"stack up in {time.perf_counter() - t0:.1f}s on {stack.data_dir} (SQLite, default settings"
                + (", tracing off" if args.no_tracing else ", span files on")
                + ")"
            )
            ok = asyncio.run(run(args, stack))
    finally:
        if args.keep:
            print(f"data directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average at the end: {loadavg()}; " + ("OK" if ok else "FAILED: something acknowledged is missing"))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
