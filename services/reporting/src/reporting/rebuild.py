"""`python -m reporting rebuild`: drop the reporting store and replay ACCEPTED from the start.

Safe while the service runs (its replicas included): the replay fills a shadow copy of the tables
(`events__rebuild`, …) while the live store keeps serving and consuming. Then, in one transaction that
holds the live store's write lock (PostgreSQL `LOCK TABLE … IN EXCLUSIVE MODE`, SQLite's database lock),
the replay catches up with the end of the stream, and the shadow tables replace the live ones. Every
event the live consumer had committed before the lock is in the stream before the catch-up reads its
end, so it is in the new store; everything after the lock is written by the consumer into the new
tables. Its durable consumer is not touched. Readers keep reading during the swap.

The replay reads with an ephemeral pull consumer (no acknowledgements) through the runtime's `PullConsumer`
(its own fetch loop on an inbox, data messages taken from the protocol parser: the fastest path nats-py
offers). This process only receives; writer processes (the runtime's `ChildPool`, `WRITERS` of them, each
taking the next batch when it is free) decode, bulk-insert the events and keep the winning report per (quarter,
measure, agency) of their share in memory, by the same ordering the incremental upsert applies (greatest
`reported_at`, then greatest `event_id`); the shares' winners are merged by that ordering, so the result
equals the incrementally built store row for row. The catch-up under the lock uses the incremental path itself.

The writer processes' side (decode, bulk insert, each share's winners) is `reporting.bulkwrite`.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from nats.aio.client import Client
from pydantic import ValidationError
from sqlalchemy import Engine

from contracts.streams import ACCEPTED_STREAM
from reporting import repository, revision_store
from reporting.bulkwrite import BulkWriter, EffectiveReports
from reporting.config import ReportingSettings
from reporting.cycle.cursor import set_cursor
from reporting.cycle.publications import keep_sent
from reporting.handlers import Delivered, Fact, apply_facts, decode_tolerant
from reporting.repository import LIVE_SUFFIX, OLD_SUFFIX, SHADOW_SUFFIX, Store
from reporting.tables import EffectiveRow
from shinchoku_runtime.children import ChildDied, ChildPool
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.natsclient import connect_service
from shinchoku_runtime.pull import PullConsumer

log = logging.getLogger(__name__)

#: The subjects of the facts that must be applied in the log's order (reviews, closes; and every fact after them).
_CYCLE = (b"reviewed.", b"closed.")

REQUEST_BATCH = 5000
REQUESTS_IN_FLIGHT = 2
#: Batches received and waiting for a writer process.
SEND_QUEUE = 4
#: Writer processes decoding and inserting (each takes the next batch when it is free). On SQLite they take
#: turns at the write lock; decoding, the larger part, runs side by side.
WRITERS = 2


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


@dataclass(frozen=True)
class BulkResult:
    read: int
    rows: list[EffectiveRow]
    #: The messages read from the first review or close on, in the log's order (applied one batch after another).
    leftover: list[Delivered]


async def _bulk_phase(
    engine: Engine, reader: PullConsumer, shadow: Store, bar: ProgressBar | None, *, first_seq: int
) -> BulkResult:
    url = engine.url.render_as_string(hide_password=False)
    # Batches wait in the pool's queue for the first writer free to take them: receiving goes on (the broker
    # keeps streaming) while the writers decode and insert.
    writers = ChildPool(
        BulkWriter,
        (url, shadow.suffix, shadow.tag),
        name="rebuild writer process",
        processes=WRITERS,
        replace=False,
        queue=SEND_QUEUE,
    )
    writers.start()
    read = 0
    leftover: list[Delivered] = []
    try:
        async for messages in reader.batches():
            # Up to the first review or close only: from there on, facts are applied in the log's order.
            first_cycle = next((i for i, (subject, _) in enumerate(messages) if subject.startswith(_CYCLE)), None)
            reports = messages if first_cycle is None else messages[:first_cycle]
            if reports:
                await writers.put(reports)
            read += len(reports)
            if bar:
                bar.update(len(reports))
            if first_cycle is not None:
                leftover = [
                    (subject.decode(), first_seq + read + i, data)
                    for i, (subject, data) in enumerate(messages[first_cycle:])
                ]
                read += len(leftover)
                if bar:
                    bar.update(len(leftover))
                break
        shares = await writers.finish()
    except ChildDied as e:  # the rebuild has failed: what the others wrote goes with the shadow tables
        raise RuntimeError(f"a writer process of the rebuild stopped: {e}") from e
    finally:
        await writers.close(graceful=False)
    winners = EffectiveReports()
    for ranked in shares:
        winners.merge(ranked)
    return BulkResult(read, winners.rows(), leftover)


def _decode_facts(messages: list[Delivered]) -> list[Fact]:
    out = []
    for subject, seq, data in messages:
        try:
            out.append(decode_tolerant(subject, seq, data)[0])
        except (ValidationError, ValueError) as e:
            log.error("ACCEPTED message on %s is not the JSON its subject calls for, skipped: %s", subject, e)
    return out


class RebuildRefused(RuntimeError):
    """The log would make a smaller store than the live one: nothing was swapped (`force` to do it anyway)."""


def _check_start(first_seq: int, messages: int) -> None:
    """ACCEPTED is append-only from sequence 1 (deny delete and purge, no limits): a log that starts later lost
    its beginning (or is another stream than the one the store was built from)."""
    if messages and first_seq != 1:
        raise RebuildRefused(
            f"{ACCEPTED_STREAM.name} starts at sequence {first_seq}, not 1: its beginning is gone (a truncated "
            "stream, a restore from a partial copy, another cluster); rebuilding from it would drop what the "
            "live store holds from before. Check NATS, or rebuild with --force to accept the loss"
        )


def _check_not_smaller(shadow_events: int, live_events: int) -> None:
    if shadow_events < live_events:
        raise RebuildRefused(
            f"the replay of {ACCEPTED_STREAM.name} holds {shadow_events:,} events but the live store "
            f"{live_events:,}: the stream holds less than what was counted (a truncated stream, a restore from an "
            "older copy, another cluster). The live store was left as it was; rebuild with --force to replace it "
            "anyway"
        )


async def connect_reporting(settings: ReportingSettings) -> Client:
    return await connect_service(settings, name="shinchoku-reporting-rebuild", max_reconnect_attempts=5)


async def rebuild_store(
    engine: Engine, nc: Client, *, progress: bool = True, stream: TextIO | None = None, force: bool = False
) -> RebuildResult:
    """Replay ACCEPTED into a shadow store, then swap it in (see the module docstring).

    Raises RebuildRefused, leaving the live store as it was, when ACCEPTED does not start at sequence 1 or the
    replay holds fewer events than the live store, unless `force`.
    """
    started = time.monotonic()
    repository.create_store(engine)
    info = await nc.jetstream().stream_info(ACCEPTED_STREAM.name)
    if not force:
        _check_start(info.state.first_seq, info.state.messages)
    shadow = repository.store_tables(suffix=SHADOW_SUFFIX, tag=f"_{secrets.token_hex(4)}")
    with engine.begin() as conn:
        repository.drop_tables(conn, suffix=SHADOW_SUFFIX)
        repository.drop_tables(conn, suffix=OLD_SUFFIX)
    repository.create_store(engine, store=shadow, with_indexes=False)

    total = info.state.messages
    reader = PullConsumer.replay(
        nc,
        stream=ACCEPTED_STREAM.name,
        name=f"reporting-rebuild-{secrets.token_hex(6)}",
        filter_subject=None,  # every admitted fact: reports, reviews and closes
        start_seq=info.state.first_seq,
        batch=REQUEST_BATCH,
        requests_in_flight=REQUESTS_IN_FLIGHT,
        description="reporting rebuild (ephemeral)",
    )
    await reader.open()
    bar = ProgressBar(total, stream=stream) if progress else None
    read = 0
    try:
        # Bulk phase: this process receives; writer processes decode, insert the events and keep the winning
        # report per (quarter, measure, agency), as the incremental upsert would have (every core, not one).
        winners = await _bulk_phase(engine, reader, shadow, bar, first_seq=info.state.first_seq)
        read += winners.read
        log.info("replayed %d messages in %.1fs", read, time.monotonic() - started)
        mark = time.monotonic()
        with engine.begin() as conn:
            repository.create_late_indexes(conn, store=shadow)
            repository.upsert_effective(conn, store=shadow, rows=winners.rows)
        log.info("indexed and stored the effective reports in %.1fs", time.monotonic() - mark)
        mark = time.monotonic()

        # Ordered phase, from the first review or close on: every fact in the log's order, as the consumer
        # applies them (review states, revisions and restatements depend on it).
        if winners.leftover:
            with engine.begin() as conn:
                apply_facts(conn, store=shadow, facts=_decode_facts(winners.leftover))
            async for messages in reader.batches():
                seq = info.state.first_seq + read
                batch = [(subject.decode(), seq + i, data) for i, (subject, data) in enumerate(messages)]
                read += len(messages)
                with engine.begin() as conn:
                    apply_facts(conn, store=shadow, facts=_decode_facts(batch))
                if bar:
                    bar.update(len(messages))
            log.info("applied the facts from the first review or close on in %.1fs", time.monotonic() - mark)
            mark = time.monotonic()

        # Swap phase: hold the live store's write lock, catch up with the stream, swap.
        with engine.begin() as conn:
            repository.lock_for_swap(conn)
            async for messages in reader.batches():
                seq = info.state.first_seq + read
                catch_up = [(subject.decode(), seq + i, data) for i, (subject, data) in enumerate(messages)]
                read += len(messages)
                apply_facts(conn, store=shadow, facts=_decode_facts(catch_up))
                if bar:
                    bar.update(len(messages))
            previous = revision_store.revisions(conn)
            revision_store.fill_revisions_from_events(conn, store=shadow, previous=previous)
            set_cursor(conn, shadow, info.state.first_seq + read - 1)
            keep_sent(conn, shadow=shadow, live=repository.LIVE)
            stored = repository.count_rows(conn, shadow.events)
            if not force:  # raising rolls the swap back: the live store stays
                _check_not_smaller(stored, repository.count_rows(conn, repository.LIVE.events))
            effective = repository.count_rows(conn, shadow.effective)
            repository.rename_tables(conn, from_suffix=LIVE_SUFFIX, to_suffix=OLD_SUFFIX)
            repository.rename_tables(conn, from_suffix=SHADOW_SUFFIX, to_suffix=LIVE_SUFFIX)
        log.info("caught up and swapped the store in %.1fs", time.monotonic() - mark)
        if force:
            log.warning(
                "rebuilt with --force: %d events from %s, whatever the live store held", stored, info.config.name
            )
        with engine.begin() as conn:  # after the swap: writers need not wait for it
            repository.drop_tables(conn, suffix=OLD_SUFFIX)
        if bar:
            bar.finish()
    except RebuildRefused:
        with engine.begin() as conn:
            repository.drop_tables(conn, suffix=SHADOW_SUFFIX)
        raise
    finally:
        await reader.close()
    return RebuildResult(read, stored, effective, time.monotonic() - started)


async def run_rebuild(settings: ReportingSettings, *, progress: bool = True, force: bool = False) -> RebuildResult:
    engine = repository.tune(make_engine(settings.resolved_database_url()))
    nc = await connect_reporting(settings)
    try:
        return await rebuild_store(engine, nc, progress=progress, force=force)
    finally:
        await nc.close()
        engine.dispose()
