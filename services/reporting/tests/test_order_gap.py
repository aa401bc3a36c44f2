"""A batch that meets a transient database fault leaves no gap before the order cursor.

The writer applies ACCEPTED in the log's order (`reporting.cycle.cursor`): a message whose predecessors are not applied
waits for them (`handlers.ORDER_WAIT_SECONDS`) and is then nak'ed to come back. If a batch that failed on a locked
SQLite were nak'ed to come back later, every batch behind it would wait and be nak'ed in turn, and those naks go back
into the consumer's redelivery queue ahead of the failed batch: under load the service stalled for a minute. The
failed batch is retried in place instead (the batches behind it wait in the queue): nothing is deferred.

Real nats-server, real SQLite; the fault is a real write lock that another connection holds during the first write.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from prometheus_client import CollectorRegistry
from sqlalchemy import event

from contracts.periods import FiscalQuarter
from reporting import repository
from reporting.cycle.cursor import init_cursor
from reporting.handlers import BatchOutcome, Delivered
from reporting.metrics import ReportingMetrics
from reporting.subscribers import AcceptedPuller, AcceptedWriter, consumer_config, update_consumer
from reporting.testing import publish_admissions, random_admissions, synthetic_measures, wait_caught_up
from reporting.workers import ThreadApplier
from shinchoku_runtime.db import make_engine

ADMISSIONS = random_admissions(synthetic_measures(20), [FiscalQuarter(2024, 3)], 400)


class LockedFirstWrite:
    """Writes in a thread; during its first batch another connection holds the SQLite file's write lock (the
    writer's busy timeout is short, so that batch fails with "database is locked"), released right after."""

    def __init__(self, engine: Any, path: Path) -> None:
        self._inner = ThreadApplier(engine)
        self._path = path
        self.calls = 0

    async def apply(self, messages: Sequence[Delivered], *, retry: bool = False) -> BatchOutcome:
        self.calls += 1
        if self.calls > 1:
            return await self._inner.apply(messages, retry=retry)
        other = sqlite3.connect(self._path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            return await self._inner.apply(messages, retry=retry)
        finally:
            other.rollback()
            other.close()

    async def close(self) -> None:
        await self._inner.close()


def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout=100")


async def test_a_batch_that_met_a_locked_database_is_retried_in_place(
    admin_nc: Client, reporting_nc: Client, tmp_path: Path
) -> None:
    path = tmp_path / "reporting.sqlite"
    engine = repository.tune(make_engine(f"sqlite:///{path}"))
    event.listen(engine, "connect", _short_busy_timeout)  # after make_engine's 30 s
    repository.create_store(engine)
    await publish_admissions(admin_nc, ADMISSIONS)
    config = consumer_config(ack_wait=30.0, max_ack_pending=20_000)
    init_cursor(engine, repository.LIVE, await update_consumer(reporting_nc, config))

    registry = CollectorRegistry()
    applier = LockedFirstWrite(engine, path)
    writer = AcceptedWriter(applier, ReportingMetrics(registry), db_system="sqlite", retry_delay=0.5, max_rows=50)
    puller = AcceptedPuller(reporting_nc, writer.submit, config=config, batch=50)
    writer.start()
    started = time.monotonic()
    task = asyncio.create_task(puller.run())
    try:
        await wait_caught_up(reporting_nc, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        puller.stop()
        await asyncio.wait_for(task, 15)
        await writer.stop()

    def batches(outcome: str) -> float:
        return registry.get_sample_value("shinchoku_reporting_batches_total", {"outcome": outcome}) or 0.0

    seen = f"caught up in {elapsed:.2f}s; batches retried {batches('retried'):g}, deferred {batches('deferred'):g}"
    assert batches("retried") >= 1, seen  # the lock did make a write fail
    assert batches("deferred") == 0, seen  # and nothing behind it waited for a gap and was nak'ed
    with engine.connect() as conn:
        assert repository.count_rows(conn, repository.LIVE.events) == len(ADMISSIONS)
    engine.dispose()
