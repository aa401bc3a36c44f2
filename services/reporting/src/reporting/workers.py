"""Where a batch of admitted events is decoded and written: in a child process (a second core) or a thread.

The consumer's own process receives, acknowledges and traces; decoding (pydantic) and the database write
are about as much Python work again. With `writer_processes=1` (the default) they run in a child process
(`ProcessPoolExecutor` with one spawned worker, its own engine); with 0 in a thread of the service process.
Either way one batch is one transaction, and the consumer acknowledges only after the outcome says committed.
A worker that dies is replaced and the batch in hand is nak'ed (it comes back).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from sqlalchemy import Engine

from reporting import repository
from reporting.handlers import BatchOutcome, decode_and_apply
from reporting.repository import LIVE
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.service import settle_heap

log = logging.getLogger(__name__)

_worker_engine: Engine | None = None


class Applier(Protocol):
    async def apply(self, payloads: Sequence[bytes]) -> BatchOutcome: ...

    def close(self) -> None: ...


class ThreadApplier:
    """Decode and write in a worker thread of this process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def apply(self, payloads: Sequence[bytes]) -> BatchOutcome:
        return await asyncio.to_thread(decode_and_apply, self._engine, payloads, store=LIVE)

    def close(self) -> None:
        return None


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """In a child process: exit as soon as the parent is gone (a SIGKILLed service must not leave a writer).

    `parent` is the pid the parent had when it started this process (its own `os.getpid()`): read here, in
    the child, it could already be init's if the parent died while the child was still starting.
    """
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(url: str, parent: int) -> None:
    global _worker_engine
    exit_with_parent(parent)
    _worker_engine = repository.tune(make_engine(url))
    settle_heap()


def _apply_in_worker(payloads: Sequence[bytes]) -> BatchOutcome:
    assert _worker_engine is not None, "worker not initialised"
    return decode_and_apply(_worker_engine, payloads, store=LIVE)


class ProcessApplier:
    """Decode and write in one spawned child process (replaced if it dies)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._url, os.getpid()),
        )

    async def apply(self, payloads: Sequence[bytes]) -> BatchOutcome:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _apply_in_worker, list(payloads))
        except BrokenProcessPool:
            log.error("the writer process died; starting another (the batch will be redelivered)")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_applier(engine: Engine, *, processes: int) -> Applier:
    if processes > 0:
        return ProcessApplier(engine.url.render_as_string(hide_password=False))
    return ThreadApplier(engine)
