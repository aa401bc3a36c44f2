"""What the platform did, read from outside: the streams (as admin), both stores (read-only SQL) and reporting's HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import sqlalchemy as sa
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError

from shinchoku_runtime.db import normalise_url

from .checker import MeasureInfo

CHUNK = 500


async def admin_connection(url: str, password: str) -> Client:
    return await nats.connect(
        servers=url.split(","), user="admin", password=password, name="fault-observer", max_reconnect_attempts=-1
    )


async def last_seq(nc: Client, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.last_seq)


#: How long the observer keeps asking a cluster that answers "JetStream unavailable" (a stream leader being
#: elected after a partition heals or a node rejoins): the checker reads the outcome, it does not judge availability.
SETTLE_SECONDS = 30.0


async def read_stream(nc: Client, stream: str, *, start_seq: int = 1) -> list[dict[str, Any]]:
    """Every message body (JSON) of `stream` from `start_seq` on, through an ephemeral consumer; read again from
    the start while the cluster says JetStream is unavailable (for up to SETTLE_SECONDS)."""
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    while True:
        try:
            return await _read_stream_once(nc, stream, start_seq=start_seq)
        except (ServiceUnavailableError, NoRespondersError, NatsTimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _read_stream_once(nc: Client, stream: str, *, start_seq: int) -> list[dict[str, Any]]:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    if info.state.messages == 0 or info.state.last_seq < start_seq:
        return []
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(start_seq, 1),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(">", durable=None, stream=stream, config=config)
    out: list[dict[str, Any]] = []
    wanted = info.state.last_seq
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except NatsTimeoutError:
                break
            for m in msgs:
                out.append(json.loads(m.data))
            if msgs and msgs[-1].metadata.sequence.stream >= wanted:
                break
    finally:
        await sub.unsubscribe()
    return out


async def accepted_counts(nc: Client, *, start_seq: int = 1) -> Counter[str]:
    """ACCEPTED messages per event_id."""
    return Counter(body["event"]["event_id"] for body in await read_stream(nc, "ACCEPTED", start_seq=start_seq))


async def rejections(nc: Client, *, start_seq: int = 1) -> list[dict[str, Any]]:
    return await read_stream(nc, "REJECTED", start_seq=start_seq)


#: The durable consumers the scenarios wait for, with their streams.
DURABLES = (("ingest", "STATUS"), ("reporting", "ACCEPTED"))


async def backlog(nc: Client) -> dict[str, int]:
    """Messages not yet acknowledged by each durable consumer (pending + in flight)."""
    js = nc.jetstream()
    out = {}
    for name, stream in DURABLES:
        try:
            info = await js.consumer_info(stream, name)
        except Exception:  # not created yet, or NATS restarting
            out[name] = -1
            continue
        out[name] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    return out


async def consumer_detail(nc: Client) -> str:
    """Each durable consumer's counters, for a scenario that did not settle: where its backlog stands."""
    js = nc.jetstream()
    parts = []
    for name, stream in DURABLES:
        try:
            info = await js.consumer_info(stream, name)
        except Exception as e:
            parts.append(f"{name}: {type(e).__name__}: {e}")
            continue
        delivered = info.delivered.stream_seq if info.delivered else None
        floor = info.ack_floor.stream_seq if info.ack_floor else None
        parts.append(
            f"{name}: pending {info.num_pending}, ack pending {info.num_ack_pending}, redelivered "
            f"{info.num_redelivered}, waiting pulls {info.num_waiting}, delivered up to {delivered}, ack floor {floor}"
        )
        with contextlib.suppress(Exception):
            state = (await js.stream_info(stream)).state
            parts.append(
                f"{stream}: sequences {state.first_seq}–{state.last_seq}, {state.messages} messages, "
                f"{state.num_deleted or 0} missing"
            )
    return "; ".join(parts)


@dataclass
class Stores:
    """Read-only SQL on ingest's and reporting's databases."""

    ingest_url: str
    reporting_url: str
    _engines: dict[str, sa.Engine] = field(default_factory=dict)

    def _engine(self, url: str) -> sa.Engine:
        if url not in self._engines:
            self._engines[url] = sa.create_engine(normalise_url(url), poolclass=sa.pool.NullPool)
        return self._engines[url]

    def ingest_outcomes(self, event_ids: Iterable[str]) -> dict[str, Counter[str]]:
        """Per event_id: how many STATUS messages ingest decided as admitted, duplicate, rejected."""
        out: dict[str, Counter[str]] = {}
        ids = list(event_ids)
        with self._engine(self.ingest_url).connect() as conn:
            for i in range(0, len(ids), CHUNK):
                rows = conn.execute(
                    sa.text(
                        "SELECT event_id, outcome, count(*) FROM decision WHERE event_id IN :ids GROUP BY event_id, outcome"
                    ).bindparams(sa.bindparam("ids", expanding=True)),
                    {"ids": ids[i : i + CHUNK]},
                )
                for event_id, outcome, n in rows:
                    out.setdefault(event_id, Counter())[outcome] += n
        return out

    def reporting_events(self, event_ids: Iterable[str]) -> set[str]:
        """The event_ids the reporting store holds (it counts each at most once: its key is event_id)."""
        ids = list(event_ids)
        found: set[str] = set()
        with self._engine(self.reporting_url).connect() as conn:
            for i in range(0, len(ids), CHUNK):
                rows = conn.execute(
                    sa.text("SELECT event_id FROM events WHERE event_id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": ids[i : i + CHUNK]},
                )
                found.update(r[0] for r in rows)
        return found

    def reporting_activity(self) -> list[str]:
        """What reporting's database sessions are doing, cursor first (PostgreSQL; a diagnostic for a stall)."""
        engine = self._engine(self.reporting_url)
        if engine.dialect.name != "postgresql":
            return []
        with engine.connect() as conn:
            lines = []
            with contextlib.suppress(sa.exc.SQLAlchemyError), conn.begin_nested():
                lines.append(f"order cursor: {conn.execute(sa.text('SELECT last_seq FROM cycle_cursor')).scalar()}")
            rows = conn.execute(
                sa.text(
                    "SELECT pid, client_port, state, wait_event_type, wait_event, now() - xact_start, "
                    "now() - state_change, left(query, 100) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            lines += [" | ".join(str(v) for v in row) for row in rows]
        return lines

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()


def stack_dumps(pids: Iterable[int]) -> list[str]:
    """`py-spy dump` of each process and its children (where each thread waits), when py-spy is installed."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return ["(no py-spy for stack dumps)"]
    out = []
    todo = list(pids)
    while todo:
        pid = todo.pop(0)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        done = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
        out.append(f"--- pid {pid}\n{done.stdout}{done.stderr}{tcp_sockets(pid)}")
    return out


def tcp_sockets(pid: int) -> str:
    """A process's TCP connections as the kernel sees them: local → remote port, state, send and receive queues."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    lines = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                f = row.split()
                if f[9] in inodes:
                    tx, rx = (int(v, 16) for v in f[4].split(":"))
                    local, remote = (int(a.rsplit(":", 1)[1], 16) for a in (f[1], f[2]))
                    lines.append(f"tcp {local} -> {remote} state {f[3]} send-q {tx} recv-q {rx}")
    return "\n".join(lines) + "\n"


def catalog_measures(catalog_url: str) -> list[MeasureInfo]:
    items = httpx.get(f"{catalog_url}/measures", params={"limit": 1000}, timeout=10).json()["items"]
    return [MeasureInfo(id=m["id"], section=int(m["section"]), leads=tuple(m["lead_agencies"])) for m in items]


async def served(http: httpx.AsyncClient, fiscal_year: int, quarter: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rollup, measures = await asyncio.gather(
        http.get(f"/rollups/{fiscal_year}/{quarter}"),
        http.get(f"/rollups/{fiscal_year}/{quarter}/measures", params={"limit": 1000}),
    )
    rollup.raise_for_status()
    measures.raise_for_status()
    return rollup.json(), measures.json()


async def received_times(nc: Client, *, start_seq: int = 1) -> dict[str, datetime]:
    """Per event_id, when the broker first received it: the timestamp of its first STATUS message (the receipt time
    DESIGN.md judges timeliness by), read from the stream itself rather than from what ingest recorded."""
    js = nc.jetstream()
    info = await js.stream_info("STATUS")
    out: dict[str, datetime] = {}
    if info.state.messages == 0 or info.state.last_seq < start_seq:
        return out
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(start_seq, 1),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(">", durable=None, stream="STATUS", config=config)
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except NatsTimeoutError:
                break
            for m in msgs:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    event_id = str(json.loads(m.data)["event_id"])
                    at = m.metadata.timestamp
                    if event_id not in out or at < out[event_id]:
                        out[event_id] = at
            if msgs and msgs[-1].metadata.sequence.stream >= info.state.last_seq:
                break
    finally:
        await sub.unsubscribe()
    return out
