"""`python -m reporting rebuild`: drop the reporting store and replay ACCEPTED from the start.

Safe while the service runs (its replicas included): the replay fills a shadow copy of the tables
(`events__rebuild`, …) while the live store keeps serving and consuming. Then, in one transaction that
holds the live store's write lock (PostgreSQL `LOCK TABLE … IN EXCLUSIVE MODE`, SQLite's database lock),
the replay catches up with the end of the stream, and the shadow tables replace the live ones. Every
event the live consumer had committed before the lock is in the stream before the catch-up reads its
end, so it is in the new store; everything after the lock is written by the consumer into the new
tables. Its durable consumer is not touched. Readers keep reading during the swap.

The replay reads with an ephemeral pull consumer (no acknowledgements) and its own fetch loop on an
inbox, the fastest path nats-py offers; events are bulk-inserted, and the effective reports are derived
from them in one statement with the same ordering the incremental path applies, so the result equals the
incrementally built store row for row.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sqlalchemy import Engine

from contracts.streams import ACCEPTED_STREAM
from reporting import repository
from reporting.config import ReportingSettings
from reporting.handlers import Admitted, apply_admitted, decode_admitted
from reporting.repository import LIVE_SUFFIX, OLD_SUFFIX, SHADOW_SUFFIX, Store
from shinchoku_runtime.db import make_engine

log = logging.getLogger(__name__)

REQUEST_BATCH = 5000
REQUESTS_IN_FLIGHT = 2


class StreamReader:
    """Reads ACCEPTED from a sequence through an ephemeral pull consumer and a callback inbox.

    `batches()` yields lists of messages until the stream has nothing more to deliver.
    """

    def __init__(self, nc: Client, *, start_seq: int, batch: int = REQUEST_BATCH) -> None:
        self._nc = nc
        self._start_seq = max(1, start_seq)
        self._batch = batch
        self._name = f"reporting-rebuild-{secrets.token_hex(6)}"
        self._buffer: list[Msg] = []
        self._pending: collections.deque[int] = collections.deque()
        self._exhausted = False
        self._wakeup = asyncio.Event()
        self._sub: Any = None

    async def open(self) -> None:
        js = self._nc.jetstream()
        await js.add_consumer(
            ACCEPTED_STREAM.name,
            ConsumerConfig(
                name=self._name,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._start_seq,
                ack_policy=AckPolicy.NONE,
                filter_subject=ACCEPTED_STREAM.subjects[0],
                inactive_threshold=120.0,
                mem_storage=True,
                description="reporting rebuild (ephemeral)",
            ),
        )
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        try:
            await self._nc.jetstream().delete_consumer(ACCEPTED_STREAM.name, self._name)
        except Exception as e:  # it expires by itself after inactive_threshold
            log.debug("could not delete the rebuild consumer: %s", e)

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None:
            self._buffer.append(msg)
            if self._pending:
                self._pending[0] -= 1
                if self._pending[0] <= 0:
                    self._pending.popleft()
        elif status != "100":  # 404 no messages, 408 request expired, 409 …: that request is over
            if self._pending:
                self._pending.popleft()
            self._exhausted = True
        self._wakeup.set()

    async def _request(self) -> None:
        body = json.dumps({"batch": self._batch, "no_wait": True}).encode()
        self._pending.append(self._batch)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{ACCEPTED_STREAM.name}.{self._name}"
        await self._nc.publish(subject, body, reply=self._inbox)

    async def batches(self) -> AsyncIterator[list[Msg]]:
        """Everything from where the last call stopped up to the stream's current end."""
        self._exhausted = False
        while True:
            while len(self._pending) < REQUESTS_IN_FLIGHT and not self._exhausted:
                await self._request()
            if not self._buffer:
                if self._exhausted and not self._pending:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=10)
                except TimeoutError:
                    # A lost request or reply: forget the requests in flight and ask again.
                    self._pending.clear()
                continue
            out, self._buffer = self._buffer, []
            yield out


class ProgressBar:
    """A text progress bar on stderr (a line every few seconds when stderr is not a terminal)."""

    def __init__(self, total: int, *, label: str = "replayed", stream: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._shown = 0.0
        self._tty = self.stream.isatty()

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._shown >= (0.2 if self._tty else 5.0):
            self._shown = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        share = min(1.0, self.done / self.total) if self.total else 1.0
        bar = "#" * int(share * 30)
        line = f"[{bar:<30}] {self.done:,}/{self.total:,} events  {rate:,.0f}/s"
        self.stream.write(("\r" if self._tty else "") + line + (end or ("" if self._tty else "\n")))
        self.stream.flush()

    def finish(self) -> None:
        self._draw(time.monotonic(), end="\n")


@dataclass(frozen=True)
class RebuildResult:
    events_read: int
    events_stored: int
    effective_reports: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events_read / self.seconds if self.seconds else 0.0


def _decode_all(messages: list[Msg]) -> list[Admitted]:
    out = []
    for msg in messages:
        try:
            out.append(decode_admitted(msg.data))
        except (ValidationError, ValueError) as e:
            log.error("ACCEPTED message on %s is not AdmittedEvent JSON, skipped: %s", msg.subject, e)
    return out


def _insert_batch(engine: Engine, store: Store, batch: list[Admitted]) -> None:
    rows: dict[str, tuple[Any, ...]] = {}
    for admitted in batch:
        rows.setdefault(admitted.event_id, admitted.event_row)
    with engine.begin() as conn:
        repository.insert_events(conn, store=store, rows=list(rows.values()))


async def connect_reporting(settings: ReportingSettings) -> Client:
    options: dict[str, Any] = {"name": "shinchoku-reporting-rebuild", "max_reconnect_attempts": 5}
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or ""
    return await nats.connect(settings.nats_servers, **options)


async def rebuild_store(
    engine: Engine, nc: Client, *, progress: bool = True, stream: TextIO | None = None
) -> RebuildResult:
    """Replay ACCEPTED into a shadow store, then swap it in (see the module docstring)."""
    started = time.monotonic()
    repository.create_store(engine)
    shadow = repository.store_tables(suffix=SHADOW_SUFFIX, tag=f"_{secrets.token_hex(4)}")
    with engine.begin() as conn:
        repository.drop_tables(conn, suffix=SHADOW_SUFFIX)
        repository.drop_tables(conn, suffix=OLD_SUFFIX)
    repository.create_store(engine, store=shadow, with_indexes=False)

    js = nc.jetstream()
    info = await js.stream_info(ACCEPTED_STREAM.name)
    total = info.state.messages
    reader = StreamReader(nc, start_seq=info.state.first_seq)
    await reader.open()
    bar = ProgressBar(total, stream=stream) if progress else None
    read = 0
    try:
        # Bulk phase: decode in the event loop while the previous batch is written in a worker thread.
        writing: asyncio.Task[None] | None = None
        async for messages in reader.batches():
            batch = _decode_all(messages)
            read += len(messages)
            if writing is not None:
                await writing
            writing = asyncio.create_task(asyncio.to_thread(_insert_batch, engine, shadow, batch))
            if bar:
                bar.update(len(messages))
        if writing is not None:
            await writing
        log.info("replayed %d messages in %.1fs", read, time.monotonic() - started)
        mark = time.monotonic()
        with engine.begin() as conn:
            repository.create_late_indexes(conn, store=shadow)
            repository.fill_effective_from_events(conn, store=shadow)
        log.info("indexed and derived the effective reports in %.1fs", time.monotonic() - mark)
        mark = time.monotonic()

        # Swap phase: hold the live store's write lock, catch up with the stream, swap.
        with engine.begin() as conn:
            repository.lock_for_swap(conn)
            async for messages in reader.batches():
                read += len(messages)
                apply_admitted(conn, store=shadow, batch=_decode_all(messages))
                if bar:
                    bar.update(len(messages))
            previous = repository.revisions(conn)
            repository.fill_revisions_from_events(conn, store=shadow, previous=previous)
            stored = repository.count_rows(conn, shadow.events)
            effective = repository.count_rows(conn, shadow.effective)
            repository.rename_tables(conn, from_suffix=LIVE_SUFFIX, to_suffix=OLD_SUFFIX)
            repository.rename_tables(conn, from_suffix=SHADOW_SUFFIX, to_suffix=LIVE_SUFFIX)
            repository.drop_tables(conn, suffix=OLD_SUFFIX)
        log.info("caught up and swapped the store in %.1fs", time.monotonic() - mark)
        if bar:
            bar.finish()
    finally:
        await reader.close()
    return RebuildResult(read, stored, effective, time.monotonic() - started)


async def run_rebuild(settings: ReportingSettings, *, progress: bool = True) -> RebuildResult:
    engine = make_engine(settings.resolved_database_url())
    nc = await connect_reporting(settings)
    try:
        return await rebuild_store(engine, nc, progress=progress)
    finally:
        await nc.close()
        engine.dispose()
