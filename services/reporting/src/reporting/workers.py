"""Where a batch of admitted events is decoded and written: in a child process (a second core) or a thread.

The consumer's own process receives, acknowledges and traces; decoding (pydantic) and the database write
are about as much Python work again. With `writer_processes=1` (the default) they run in a child process
(the runtime's `ChildPool` with one spawned child and its own engine); with 0 in a thread of the service
process. Either way one batch is one transaction, and the consumer acknowledges only after the outcome says
committed. A child that dies is reported with its last words and replaced; the batch in hand is retried (by
`AcceptedWriter`, in place).

The consumer keeps two batches in flight (`AcceptedWriter`): the writer starts on the next batch as soon as it
has committed one. Batches are written one at a time in the order sent (one child, or one thread), and `InLogOrder`
keeps a failure from being overtaken: once a batch fails, the batches sent behind it are answered
`NOT_ATTEMPTED` until the failed one comes back as a retry.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sqlalchemy import Engine

from reporting import repository
from reporting.handlers import NOT_ATTEMPTED, BatchOutcome, Delivered, decode_and_apply
from reporting.repository import LIVE
from shinchoku_runtime.children import ChildPool
from shinchoku_runtime.db import make_engine


class Applier(Protocol):
    async def apply(self, messages: Sequence[Delivered], *, retry: bool = False) -> BatchOutcome:
        """Write one batch (after those sent before it); `retry`: it was sent before and failed or was not
        attempted, and every batch before it is committed."""
        ...

    async def close(self) -> None: ...


class InLogOrder:
    """The writer's side of the consumer's pipeline: once a batch fails, the batches sent behind it are not
    attempted (`NOT_ATTEMPTED`: their facts follow the failed batch's in the log, and applied first they would
    wait at the order cursor for it), until a batch comes as a retry, which the consumer sends only when every
    batch before it is committed."""

    def __init__(self, write: Callable[[Sequence[Delivered]], BatchOutcome]) -> None:
        self._write = write
        self._failed = False

    def __call__(self, item: tuple[Sequence[Delivered], bool]) -> BatchOutcome:
        messages, retry = item
        if self._failed and not retry:
            return BatchOutcome([], NOT_ATTEMPTED)
        outcome = self._write(messages)
        self._failed = outcome.error is not None
        return outcome


class ThreadApplier:
    """Decode and write in one worker thread of this process (batches one at a time, in the order sent)."""

    def __init__(self, engine: Engine) -> None:
        self._write = InLogOrder(functools.partial(decode_and_apply, engine, store=LIVE))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reporting-writer")

    async def apply(self, messages: Sequence[Delivered], *, retry: bool = False) -> BatchOutcome:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._write, (messages, retry))

    async def close(self) -> None:
        self._thread.shutdown(wait=True)


def live_writer(url: str) -> InLogOrder:
    """In the child process: its own engine, and the handler writing one batch to the live store."""
    engine = repository.tune(make_engine(url))
    return InLogOrder(functools.partial(decode_and_apply, engine, store=LIVE))


class ProcessApplier:
    """Decode and write in one spawned child process (replaced if it dies), started with the first batch; two
    batches may be sent to it before the first is answered."""

    def __init__(self, database_url: str) -> None:
        self._pool = ChildPool(live_writer, (database_url,), name="reporting writer process", replace=True, pipeline=2)
        self._started = False

    async def apply(self, messages: Sequence[Delivered], *, retry: bool = False) -> BatchOutcome:
        if not self._started:
            self._pool.start()
            self._started = True
        outcome: BatchOutcome = await self._pool.call((list(messages), retry))
        return outcome

    async def close(self) -> None:
        if self._started:
            await self._pool.close(graceful=True)


def make_applier(engine: Engine, *, processes: int) -> Applier:
    if processes > 0:
        return ProcessApplier(engine.url.render_as_string(hide_password=False))
    return ThreadApplier(engine)
