"""Where a batch of admitted events is decoded and written: in a child process (a second core) or a thread.

The consumer's own process receives, acknowledges and traces; decoding (pydantic) and the database write
are about as much Python work again. With `writer_processes=1` (the default) they run in a child process
(the runtime's `ChildPool` with one spawned child and its own engine); with 0 in a thread of the service
process. Either way one batch is one transaction, and the consumer acknowledges only after the outcome says
committed. A child that dies is reported with its last words and replaced; the batch in hand is retried (by
`AcceptedWriter`, in place).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy import Engine

from reporting import repository
from reporting.handlers import BatchOutcome, Delivered, decode_and_apply
from reporting.repository import LIVE
from shinchoku_runtime.children import ChildPool
from shinchoku_runtime.db import make_engine


class Applier(Protocol):
    async def apply(self, messages: Sequence[Delivered]) -> BatchOutcome: ...

    async def close(self) -> None: ...


class ThreadApplier:
    """Decode and write in a worker thread of this process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def apply(self, messages: Sequence[Delivered]) -> BatchOutcome:
        return await asyncio.to_thread(decode_and_apply, self._engine, messages, store=LIVE)

    async def close(self) -> None:
        return None


def live_writer(url: str) -> Callable[[Sequence[Delivered]], BatchOutcome]:
    """In the child process: its own engine, and the handler writing one batch to the live store."""
    engine = repository.tune(make_engine(url))
    return functools.partial(decode_and_apply, engine, store=LIVE)


class ProcessApplier:
    """Decode and write in one spawned child process (replaced if it dies), started with the first batch."""

    def __init__(self, database_url: str) -> None:
        self._pool = ChildPool(live_writer, (database_url,), name="reporting writer process", replace=True)
        self._started = False

    async def apply(self, messages: Sequence[Delivered]) -> BatchOutcome:
        if not self._started:
            self._pool.start()
            self._started = True
        outcome: BatchOutcome = await self._pool.call(list(messages))
        return outcome

    async def close(self) -> None:
        if self._started:
            await self._pool.close(graceful=True)


def make_applier(engine: Engine, *, processes: int) -> Applier:
    if processes > 0:
        return ProcessApplier(engine.url.render_as_string(hide_password=False))
    return ThreadApplier(engine)
