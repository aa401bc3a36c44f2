"""Ingest benchmark: admitted events/s sustained, next to the raw JetStream publish rate on the same server.

    .venv/bin/python bench/ingest.py [--events 200000] [--pg] [--publishers 4] [--batch-size 1000]

What it does, in one run:

1. starts its own nats-server (generated config, per-agency users, `sync_interval: always`) in a temp dir
   and declares the shared streams;
2. stands in for the catalog: puts 320 synthetic measures (ids 1-1 … 6-N, one or two lead agencies)
   into the CATALOG KV bucket;
3. publishes N valid events into STATUS from several agency connections with nats-py `publish_async`,
   waiting for every PubAck: that is the raw JetStream publish rate on this server;
4. starts `--replicas` (2) `python -m ingest` processes sharing the durable consumer, on SQLite (and again
   on PostgreSQL with --pg), lets them drain the backlog, and measures admitted events/s sustained:
   (admitted − 1) / (time of the last ACCEPTED message − time of the first), from the ACCEPTED stream itself;
5. checks exactly-once: ACCEPTED holds N messages, the ingest store N admitted decisions for N distinct
   event ids, and REJECTED nothing.

Publishing and ingesting do not overlap, so each figure has the machine to itself (with nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from nats.js.api import KeyValueConfig, StorageType

from contracts.agencies import Agency
from contracts.catalog import Measure
from contracts.events import Status
from contracts.periods import FiscalQuarter
from contracts.streams import CATALOG_BUCKET, INGEST_DURABLE, agency_inbox_prefix, publish_stream
from shinchoku.issuer import EmbeddedIssuer, StackAuth
from shinchoku_runtime.db import normalise_url
from shinchoku_runtime.natsclient import connect, ensure_streams
from shinchoku_runtime.natsserver import NatsServer, free_port
from shinchoku_runtime.testing import fresh_postgres_database

SECTIONS = {1: 156, 2: 60, 3: 30, 4: 30, 5: 27, 6: 17}  # 320 measures, as many as the plan has


def synthetic_catalog(seed: int = 7) -> list[Measure]:
    rng = random.Random(seed)
    agencies = list(Agency)
    out = []
    for section, count in SECTIONS.items():
        for n in range(1, count + 1):
            leads = rng.sample(agencies, rng.choice((1, 1, 2)))
            out.append(
                Measure(
                    id=f"{section}-{n}",
                    section=section,
                    section_title=f"section {section}",
                    title=f"measure {section}-{n}",
                    lead_agencies=leads,
                    targets=[],
                )
            )
    return out


def make_events(catalog: list[Measure], n: int, seed: int = 11) -> dict[str, list[tuple[str, bytes]]]:
    """N valid events, grouped by publishing agency: (subject, payload)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    quarter = FiscalQuarter.of_moment(now)
    statuses = list(Status)
    by_agency: dict[str, list[tuple[str, bytes]]] = {}
    for i in range(n):
        measure = catalog[i % len(catalog)]
        agency = rng.choice(measure.lead_agencies).value
        reported_at = (now - timedelta(seconds=rng.randint(60, 86_400))).isoformat()
        fq = quarter if rng.random() < 0.5 else quarter.previous()
        body = (
            f'{{"event_id":"{uuid.uuid4()}","measure_id":"{measure.id}","agency":"{agency}",'
            f'"fiscal_year":{fq.fiscal_year},"quarter":{fq.quarter},"status":"{rng.choice(statuses).value}",'
            f'"progress":{rng.randint(0, 100)},"reported_at":"{reported_at}","reporter":"bench"}}'
        )
        by_agency.setdefault(agency, []).append((f"status.{agency}.{measure.id}", body.encode()))
    return by_agency


async def preload_catalog(server: NatsServer, catalog: list[Measure]) -> None:
    nc = await connect(server.plain_url, name="bench-admin", user="admin", password=server.passwords["admin"])
    js = nc.jetstream()
    await ensure_streams(js)
    kv = await js.create_key_value(KeyValueConfig(bucket=CATALOG_BUCKET, history=1, storage=StorageType.FILE))
    for m in catalog:
        await kv.put(m.id, m.model_dump_json().encode())
    await nc.close()


async def publish_all(server: NatsServer, by_agency: dict[str, list[tuple[str, bytes]]], publishers: int) -> float:
    """Publish every event with publish_async from `publishers` agency connections; return events/s."""
    agencies = sorted(by_agency, key=lambda a: -len(by_agency[a]))
    groups: list[list[str]] = [[] for _ in range(publishers)]
    for i, agency in enumerate(agencies):
        groups[i % publishers].append(agency)

    async def one_agency(agency: str) -> int:
        nc = await connect(
            server.plain_url,
            name=f"bench-{agency}",
            user=agency,
            password=server.passwords[agency],
            inbox_prefix=agency_inbox_prefix(agency),
        )
        js = nc.jetstream(publish_async_max_pending=4000)
        futures = []
        for subject, payload in by_agency[agency]:
            futures.append(await js.publish_async(subject, payload, stream=publish_stream(subject)))
        acks = await asyncio.gather(*futures)
        await nc.close()
        return len(acks)

    async def one_publisher(group: list[str]) -> int:
        # Agencies of one publisher go one after the other: `publishers` connections publish concurrently.
        total = 0
        for agency in group:
            total += await one_agency(agency)
        return total

    started = time.perf_counter()
    counts = await asyncio.gather(*(one_publisher(g) for g in groups if g))
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed


def tracing_env(args: argparse.Namespace) -> dict[str, str]:
    """How ingest traces during the run: as configured by default, sampled, or not at all."""
    if args.no_tracing:
        return {"OTEL_SDK_DISABLED": "true"}
    if args.trace_ratio is not None:
        return {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(args.trace_ratio)}
    return {}


def describe_tracing(args: argparse.Namespace) -> str:
    if args.no_tracing:
        return "tracing off (OTEL_SDK_DISABLED=true)"
    if args.trace_ratio is not None:
        return f"traces sampled at {args.trace_ratio:g} (parentbased_traceidratio)"
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    return f"tracing as configured ({sampler}; span file when no OTLP endpoint)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_ingest(
    server: NatsServer, database_url: str, data_dir: Path, args: argparse.Namespace
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[int]]]:
    """`--replicas` ingest processes sharing the durable consumer (and the store), as replicas would."""
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    logs = []
    try:
        for replica in range(args.replicas):
            port = free_port()
            env = {
                **os.environ,
                "SHINCHOKU_INGEST_NATS_URL": server.plain_url,
                "SHINCHOKU_INGEST_NATS_USER": "ingest",
                "SHINCHOKU_INGEST_NATS_PASSWORD": server.passwords["ingest"],
                "SHINCHOKU_INGEST_DATABASE_URL": database_url,
                "SHINCHOKU_INGEST_DATA_DIR": str(data_dir),
                "SHINCHOKU_INGEST_PORT": str(port),
                "SHINCHOKU_INGEST_BATCH_SIZE": str(args.batch_size),
                "SHINCHOKU_INGEST_MAX_INFLIGHT_BATCHES": str(args.inflight),
                "SHINCHOKU_INGEST_LOG_LEVEL": "WARNING",
                **tracing_env(args),
            }
            log = open(data_dir / f"ingest-{replica}.log", "ab")
            logs.append(log)
            command = [sys.executable, "-m", "ingest"]
            profile = args.profile
            if profile and replica == 0:
                py_spy = str(Path(sys.executable).parent / "py-spy")
                fmt = ["--format", "raw"] if profile.endswith(".txt") else []
                command = [py_spy, "record", "--rate", "200", "--gil", *fmt, "-o", profile, "--", *command]
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            ports.append(port)
        yield processes, ports
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for log in logs:
            log.close()


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def measure_ingest(
    server: NatsServer, expected: int, timeout: float, pids: list[int] | None
) -> tuple[float, int, int, float, float]:
    """Wait until ACCEPTED holds `expected` messages.

    Returns (events/s first→last admission, accepted, rejected, and the CPU µs per event while admitting
    of ingest (all replicas) and of nats-server).
    """
    assert server.process is not None
    server_pid = server.process.pid
    nc = await connect(server.plain_url, name="bench-watch", user="admin", password=server.passwords["admin"])
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    cpu_start: tuple[float, float, int] | None = None
    while True:
        accepted = (await js.stream_info("ACCEPTED")).state
        rejected = (await js.stream_info("REJECTED")).state.messages
        if cpu_start is None and accepted.messages > 0 and pids is not None:
            cpu_start = (total_cpu(pids), cpu_seconds(server_pid), accepted.messages)  # startup excluded
        if accepted.messages + rejected >= expected:
            break
        if accepted.messages != last_count:
            last_count, last_change = accepted.messages, time.monotonic()
            print(f"  … {accepted.messages:,} admitted", flush=True)
        if time.monotonic() > deadline or time.monotonic() - last_change > 60:
            break
        await asyncio.sleep(0.5 if cpu_start is None else 2)
    cpu_per_event = server_per_event = float("nan")
    if cpu_start is not None and pids is not None and accepted.messages > cpu_start[2]:
        counted = accepted.messages - cpu_start[2]
        cpu_per_event = (total_cpu(pids) - cpu_start[0]) * 1e6 / counted
        server_per_event = (cpu_seconds(server_pid) - cpu_start[1]) * 1e6 / counted
    first = await js.get_msg("ACCEPTED", accepted.first_seq)
    last = await js.get_msg("ACCEPTED", accepted.last_seq)
    assert first.time is not None
    assert last.time is not None
    seconds = (last.time - first.time).total_seconds()
    info = await js.consumer_info("STATUS", INGEST_DURABLE)
    print(f"  consumer: {info.num_pending} pending, {info.num_ack_pending} unacked, {info.num_redelivered} redelivered")
    await nc.close()
    rate = (accepted.messages - 1) / seconds if seconds > 0 else float("nan")
    return rate, accepted.messages, rejected, cpu_per_event, server_per_event


def batch_summary(ports: list[int], data_dir: Path) -> str:
    """Batches and their mean size, from each replica's /metrics (summed; read as the operator, with a token of
    the issuer the replicas trust, prepared in `data_dir`)."""
    values: dict[str, float] = {}
    phases: dict[str, float] = {}
    auth = StackAuth(EmbeddedIssuer.prepare(data_dir))
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, auth=auth).text
        except httpx.HTTPError as e:
            return f"no metrics: {e}"
        for line in text.splitlines():
            if line.startswith("shinchoku_ingest_phase_seconds_sum{"):
                phase = line.split('phase="')[1].split('"')[0]
                phases[phase] = phases.get(phase, 0.0) + float(line.split()[1])
            for name in (
                "shinchoku_ingest_batch_size_count",
                "shinchoku_ingest_batch_size_sum",
                "shinchoku_ingest_batch_seconds_sum",
            ):
                if line.startswith(name + " "):
                    values[name] = values.get(name, 0.0) + float(line.split()[1])
    count = values.get("shinchoku_ingest_batch_size_count", 0)
    if not count:
        return "no batches"
    mean = values["shinchoku_ingest_batch_size_sum"] / count
    busy = values.get("shinchoku_ingest_batch_seconds_sum", 0) / count
    spent = ", ".join(f"{k} {v * 1000 / count:,.0f}" for k, v in phases.items())
    return (
        f"ingest: {count:,.0f} batches, {mean:,.0f} messages per batch, {busy * 1000:,.0f} ms per batch "
        f"(mean ms per batch in: {spent})"
    )


def store_counts(database_url: str) -> tuple[int, int]:
    engine = sa.create_engine(normalise_url(database_url))
    with engine.connect() as conn:
        admitted = conn.execute(sa.text("select count(*) from decision where outcome = 'admitted'")).scalar_one()
        distinct = conn.execute(
            sa.text("select count(distinct event_id) from decision where outcome = 'admitted'")
        ).scalar_one()
    engine.dispose()
    return int(admitted), int(distinct)


async def run(args: argparse.Namespace) -> int:
    catalog = synthetic_catalog()
    events = make_events(catalog, args.events)
    total = sum(len(v) for v in events.values())
    databases = ["sqlite"] + (["postgres"] if args.pg else [])
    print(
        f"{total:,} events; ingest batch {args.batch_size} × {args.inflight} in flight; {describe_tracing(args)}; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    ok = True
    for database in databases:
        with tempfile.TemporaryDirectory(prefix="shinchoku-bench-") as tmp:
            base = Path(tmp)
            server = NatsServer.create(base / "nats")
            server.start()
            try:
                await preload_catalog(server, catalog)
                print(f"[{database}] publishing {total:,} events from {len(events)} agencies …", flush=True)
                raw_rate = await publish_all(server, events, args.publishers)
                print(
                    f"[{database}] raw JetStream publish_async (nats-py, {args.publishers} connections): {raw_rate:,.0f} events/s"
                )
                with contextmanager(_database)(database, base) as url:
                    (base / "ingest").mkdir()
                    with running_ingest(server, url, base / "ingest", args) as (processes, ports):
                        rate, accepted, rejected, cpu, server_cpu = await measure_ingest(
                            server, total, args.timeout, None if args.profile else [p.pid for p in processes]
                        )
                        print(f"  {batch_summary(ports, base / 'ingest')}")
                    admitted, distinct = store_counts(url)
                print(
                    f"[{database}] ingest admitted {accepted:,} events: {rate:,.0f} events/s sustained "
                    f"(first→last admission) by {args.replicas} ingest process(es); CPU per admitted event: "
                    f"ingest {cpu:,.0f} µs, nats-server {server_cpu:,.0f} µs"
                )
                exact = accepted == total and admitted == total and distinct == total and rejected == 0
                print(
                    f"[{database}] exactly-once: ACCEPTED={accepted:,} store admitted={admitted:,} "
                    f"distinct event ids={distinct:,} REJECTED={rejected:,} published={total:,} → "
                    + ("OK" if exact else "FAILED")
                )
                ok = ok and exact
            finally:
                server.stop()
    return 0 if ok else 1


def _database(kind: str, base: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{base / 'ingest.sqlite'}"
        return
    with fresh_postgres_database("shinchoku_bench") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--publishers", type=int, default=4, help="concurrent agency connections publishing")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--pg", action="store_true", help="run the ingest figure on PostgreSQL too")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--replicas", type=int, default=2, help="ingest processes sharing the durable consumer (2: as deployed)"
    )
    parser.add_argument("--inflight", type=int, default=4, help="batches waiting for PubAcks at once")
    parser.add_argument("--trace-ratio", type=float, help="sample traces at this ratio (parentbased_traceidratio)")
    parser.add_argument("--no-tracing", action="store_true", help="run ingest with OTEL_SDK_DISABLED=true")
    parser.add_argument("--profile", help="py-spy profile of ingest: an SVG flame graph, or raw stacks if *.txt")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
