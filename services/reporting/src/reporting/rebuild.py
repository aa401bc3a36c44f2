"""`python -m reporting rebuild`: drop the reporting store and replay ACCEPTED from the start.

Safe while the service runs (its replicas included): the replay fills a shadow copy of the tables
(`events__rebuild`, …) while the live store keeps serving and consuming. Then, in one transaction that
holds the live store's write lock (PostgreSQL `LOCK TABLE … IN EXCLUSIVE MODE`, SQLite's database lock),
the replay catches up with the end of the stream, and the shadow tables replace the live ones. Every
event the live consumer had committed before the lock is in the stream before the catch-up reads its
end, so it is in the new store; everything after the lock is written by the consumer into the new
tables. Its durable consumer is not touched. Readers keep reading during the swap.

The replay reads with an ephemeral pull consumer (no acknowledgements) and its own fetch loop on an
inbox, the fastest path nats-py offers. This process only receives; writer processes (`WRITERS`, each taking
the next batch when it is free) decode, bulk-insert the events and keep the winning report per (quarter,
measure, agency) of their share in memory, by the same ordering the incremental upsert applies (greatest
`reported_at`, then greatest `event_id`); the shares' winners are merged by that ordering, so the result
equals the incrementally built store row for row. The catch-up under the lock uses the incremental path itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import multiprocessing
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

import sqlalchemy as sa
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
from shinchoku_runtime.natsclient import connect_service

log = logging.getLogger(__name__)

#: The first line of a header block without a status (a data message's).
_PLAIN_HEADER = b"NATS/1.0\r\n"

#: A message as the replay reads it: (subject, payload).
Payload = tuple[bytes, bytes]

REQUEST_BATCH = 5000
REQUESTS_IN_FLIGHT = 2
#: Batches received and waiting for a writer process.
SEND_QUEUE = 4
#: Writer processes decoding and inserting (each takes the next batch when it is free). On SQLite they take
#: turns at the write lock; decoding, the larger part, runs side by side.
WRITERS = 2


class StreamReader:
    """Reads ACCEPTED from a sequence through an ephemeral pull consumer and a callback inbox.

    `batches()` yields lists of (subject, payload) until the stream has nothing more to deliver.
    """

    def __init__(self, nc: Client, *, start_seq: int, batch: int | None = None) -> None:
        self._nc = nc
        self._start_seq = max(1, start_seq)
        self._batch = batch or REQUEST_BATCH
        self._name = f"reporting-rebuild-{secrets.token_hex(6)}"
        self._buffer: list[Payload] = []
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
        self._skip_data_headers()

    def _skip_data_headers(self) -> None:
        """Take this subscription's data messages straight from the protocol parser.

        The replay reads only subjects and payloads; nats-py would parse every message's header block into a
        dict (the msg id, the trace context and the batch headers ingest writes), build a `Msg`, queue it and
        run the subscription's callback for it: most of this process's CPU. A data message (no header block,
        or one without a status line) is taken here as (subject, payload); a status message (`NATS/1.0 404 …`,
        `408`, `100` heartbeats) goes nats-py's way to `_on_msg`. Other subscriptions on the connection are
        not touched, and `close()` puts nats-py's own handling back.
        """
        nc = self._nc
        original = nc._process_msg
        sid = self._sub._id
        buffer_append = self._buffer.append
        pending = self._pending
        wakeup = self._wakeup

        async def process_msg(sid_: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
            if sid_ != sid or (headers and not headers.startswith(_PLAIN_HEADER)):
                await original(sid_, subject, reply, data, headers)
                return
            buffer_append((subject, data))
            if pending:
                pending[0] -= 1
                if pending[0] > 0:
                    return
                pending.popleft()
            wakeup.set()  # a request is complete: `batches` hands its messages over and asks for more

        nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
        self._restore: Callable[[], None] | None = lambda: setattr(nc, "_process_msg", original)

    async def close(self) -> None:
        restore = getattr(self, "_restore", None)
        if restore is not None:
            restore()
            self._restore = None
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
        if status is None:  # not taken by the parser hook (see `_skip_data_headers`): a data message
            self._buffer.append((msg.subject.encode(), msg.data))
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

    async def batches(self) -> AsyncIterator[list[Payload]]:
        """Everything from where the last call stopped up to the stream's current end, a request's worth at a time."""
        self._exhausted = False
        while True:
            while len(self._pending) < REQUESTS_IN_FLIGHT and not self._exhausted:
                await self._request()
            if not self._buffer or (len(self._buffer) < self._batch and self._pending):
                if self._exhausted and not self._pending:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=10)
                except TimeoutError:
                    # A lost request or reply: forget the requests in flight and ask again.
                    self._pending.clear()
                continue
            out = self._buffer.copy()  # the same list object stays the parser hook's target
            self._buffer.clear()
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


class EffectiveReports:
    """The effective report per (quarter, measure, agency) of everything added: greatest reported_at, then
    greatest event id (the ordering `repository.upsert_effective` applies in SQL)."""

    def __init__(self) -> None:
        self._best: dict[tuple[int, int, str, str], tuple[tuple[int, str], tuple[Any, ...]]] = {}

    def add(self, batch: list[Admitted]) -> None:
        best = self._best
        for admitted in batch:
            row = admitted.event_row
            key = (row[3], row[4], row[1], row[2])  # fiscal_year, quarter, measure_id, agency
            order = (row[6], row[0])  # reported_at_us, event_id
            seen = best.get(key)
            if seen is None or order > seen[0]:
                best[key] = (order, admitted.effective_row())

    def rows(self) -> list[tuple[Any, ...]]:
        return [row for _, row in self._best.values()]

    def ranked(self) -> list[tuple[tuple[int, str], tuple[Any, ...]]]:
        """The winners with their ordering, for `merge` (another writer's share of the stream)."""
        return list(self._best.values())

    def merge(self, ranked: list[tuple[tuple[int, str], tuple[Any, ...]]]) -> None:
        """Add the winners of another share of the stream (the effective row's first four fields are its key)."""
        best = self._best
        for order, row in ranked:
            key = (row[0], row[1], row[2], row[3])
            seen = best.get(key)
            if seen is None or order > seen[0]:
                best[key] = (order, row)


@dataclass(frozen=True)
class BulkResult:
    read: int
    rows: list[tuple[Any, ...]]


def _bulk_writer(url: str, suffix: str, tag: str, pipe: Any, parent: int) -> None:
    """Child process of the bulk phase: decode batches of (subject, payload), insert their events, keep winners."""
    from reporting.workers import exit_with_parent
    from shinchoku_runtime.service import settle_heap
    from shinchoku_runtime.telemetry import init_logging

    exit_with_parent(parent)
    init_logging("reporting")
    settle_heap()
    engine = repository.tune(make_engine(url))
    if engine.dialect.name == "sqlite":
        # Only the shadow tables are written here; a crash mid-rebuild discards them anyway, and the swap is
        # committed by the parent with full durability. So no fsync per bulk transaction.
        sa.event.listen(engine, "connect", _sqlite_normal_sync)
    store = repository.store_tables(suffix=suffix, tag=tag)
    winners = EffectiveReports()
    # Decoding and inserting in turn: an insert thread next to the decoding lost more to the GIL (sqlite
    # releases and takes it back for every row) than it won.
    waited = decoding = inserting = 0.0  # where this process's time went, logged at the end
    try:
        while True:
            mark = time.perf_counter()
            payloads = pipe.recv()
            if payloads is None:
                break
            started = time.perf_counter()
            batch = _decode_payloads(payloads)
            winners.add(batch)
            decoded = time.perf_counter()
            _insert_batch(engine, store, batch)
            waited += started - mark
            decoding += decoded - started
            inserting += time.perf_counter() - decoded
        log.info("writer: waited %.1fs for batches, decoded for %.1fs, inserted for %.1fs", waited, decoding, inserting)
        pipe.send(("done", winners.ranked()))
    except BaseException as e:
        with contextlib.suppress(Exception):
            pipe.send(("error", f"{type(e).__name__}: {e}"))
        raise
    finally:
        engine.dispose()


async def _bulk_phase(engine: Engine, reader: StreamReader, shadow: Store, bar: ProgressBar | None) -> BulkResult:
    context = multiprocessing.get_context("spawn")
    url = engine.url.render_as_string(hide_password=False)
    writers = []
    for _ in range(WRITERS):
        parent, child = context.Pipe()
        worker = context.Process(
            target=_bulk_writer, args=(url, shadow.suffix, shadow.tag, child, os.getpid()), daemon=True
        )
        worker.start()
        # The parent keeps only its own end: a writer that dies then closes the connection for good, and a
        # send or receive on it fails (EPIPE, EOF) instead of blocking a thread for ever.
        child.close()
        writers.append((worker, parent))
    read = 0
    # Batches wait here for the first writer free to take them: receiving goes on (the broker keeps streaming)
    # while the writers decode and insert.
    waiting: asyncio.Queue[list[Payload]] = asyncio.Queue(maxsize=SEND_QUEUE)

    async def send_all(pipe: Any) -> None:  # ends only by failing (the writer died) or being cancelled
        while True:
            batch = await waiting.get()
            try:
                await asyncio.to_thread(pipe.send, batch)
            finally:
                waiting.task_done()

    senders = [asyncio.create_task(send_all(pipe)) for _, pipe in writers]

    async def unless_a_sender_fails(step: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(step)
        await asyncio.wait({task, *senders}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            for sender in senders:
                if sender.done():
                    sender.result()  # raises what stopped it
            raise EOFError("a writer stopped taking batches")

    winners = EffectiveReports()
    failures = []
    finished = False
    stopped: BaseException | None = None
    try:
        try:
            async for messages in reader.batches():
                read += len(messages)
                await unless_a_sender_fails(waiting.put(messages))
                if bar:
                    bar.update(len(messages))
            await unless_a_sender_fails(waiting.join())
        finally:
            for sender in senders:
                sender.cancel()
        for _, pipe in writers:
            await asyncio.to_thread(pipe.send, None)
        for _, pipe in writers:
            kind, value = await asyncio.to_thread(pipe.recv)
            if kind == "done":
                winners.merge(value)
            else:
                failures.append(str(value))
        finished = not failures
    except (EOFError, BrokenPipeError, ConnectionResetError) as e:
        stopped = e
    finally:
        if not finished:  # the rebuild has failed: what the others wrote goes with the shadow tables
            for worker, _ in writers:
                worker.kill()
        await asyncio.to_thread(_join_all, writers, 30)
        said = _last_words(writers)
        for _, pipe in writers:
            pipe.close()
    if stopped is not None:
        codes = ", ".join(str(worker.exitcode) for worker, _ in writers)
        why = f": {'; '.join(said)}" if said else ""
        raise RuntimeError(f"a writer process of the rebuild stopped (exit codes {codes}){why}") from stopped
    if failures:
        raise RuntimeError(f"the rebuild's writer process failed: {'; '.join(failures)}")
    return BulkResult(read, winners.rows())


def _last_words(writers: list[tuple[Any, Any]]) -> list[str]:
    """The error a writer that stopped sent before it went, if it said anything (never waits)."""
    out = []
    for _, pipe in writers:
        with contextlib.suppress(EOFError, OSError):
            while pipe.poll(0):
                kind, value = pipe.recv()
                if kind == "error":
                    out.append(str(value))
    return out


def _join_all(writers: list[tuple[Any, Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for worker, _ in writers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join(5)


def _decode_payloads(payloads: list[Payload]) -> list[Admitted]:
    out = []
    for subject, data in payloads:
        try:
            out.append(decode_admitted(data))
        except (ValidationError, ValueError) as e:
            shown = subject.decode("utf-8", "replace")
            log.error("ACCEPTED message on %s is not AdmittedEvent JSON, skipped: %s", shown, e)
    return out


def _sqlite_normal_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _insert_batch(engine: Engine, store: Store, batch: list[Admitted]) -> None:
    rows: dict[str, tuple[Any, ...]] = {}
    for admitted in batch:
        rows.setdefault(admitted.event_id, admitted.event_row)
    with engine.begin() as conn:
        repository.insert_events(conn, store=store, rows=list(rows.values()))


async def connect_reporting(settings: ReportingSettings) -> Client:
    return await connect_service(settings, name="shinchoku-reporting-rebuild", max_reconnect_attempts=5)


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
        # Bulk phase: this process receives; writer processes decode, insert the events and keep the winning
        # report per (quarter, measure, agency), as the incremental upsert would have (every core, not one).
        winners = await _bulk_phase(engine, reader, shadow, bar)
        read += winners.read
        log.info("replayed %d messages in %.1fs", read, time.monotonic() - started)
        mark = time.monotonic()
        with engine.begin() as conn:
            repository.create_late_indexes(conn, store=shadow)
            repository.upsert_effective(conn, store=shadow, rows=winners.rows)
        log.info("indexed and stored the effective reports in %.1fs", time.monotonic() - mark)
        mark = time.monotonic()

        # Swap phase: hold the live store's write lock, catch up with the stream, swap.
        with engine.begin() as conn:
            repository.lock_for_swap(conn)
            async for messages in reader.batches():
                read += len(messages)
                apply_admitted(conn, store=shadow, batch=_decode_payloads(messages))
                if bar:
                    bar.update(len(messages))
            previous = repository.revisions(conn)
            repository.fill_revisions_from_events(conn, store=shadow, previous=previous)
            stored = repository.count_rows(conn, shadow.events)
            effective = repository.count_rows(conn, shadow.effective)
            repository.rename_tables(conn, from_suffix=LIVE_SUFFIX, to_suffix=OLD_SUFFIX)
            repository.rename_tables(conn, from_suffix=SHADOW_SUFFIX, to_suffix=LIVE_SUFFIX)
        log.info("caught up and swapped the store in %.1fs", time.monotonic() - mark)
        with engine.begin() as conn:  # after the swap: writers need not wait for it
            repository.drop_tables(conn, suffix=OLD_SUFFIX)
        if bar:
            bar.finish()
    finally:
        await reader.close()
    return RebuildResult(read, stored, effective, time.monotonic() - started)


async def run_rebuild(settings: ReportingSettings, *, progress: bool = True) -> RebuildResult:
    engine = repository.tune(make_engine(settings.resolved_database_url()))
    nc = await connect_reporting(settings)
    try:
        return await rebuild_store(engine, nc, progress=progress)
    finally:
        await nc.close()
        engine.dispose()
