"""Work done in spawned child processes (another core), the one mechanism for it in the platform.

A `ChildPool` runs `processes` children of one kind. Each is spawned (a fresh interpreter: no inherited
connections or threads), exits as soon as its parent is gone (a SIGKILLed service must not leave a writer
behind), builds its handler with `factory(*args)` and then serves items from a pipe. Items are fed from one
queue to whichever child is free:

* `call(item)`: the handler's answer comes back (the live reporting writer: one batch, one transaction,
  its outcome).
* `put(item)`: no answer; `finish()` then collects each handler's `finish()` (the rebuild's writers: many
  batches, then each one's winners).

A child that dies is reported at once with its last words (the exception that ended it, sent before it
went, or the signal that killed it): `call`/`put`/`finish` raise `ChildDied`. With `replace=True` the pool
starts a fresh child for the next item (the live writer: the batch in hand is retried, nothing else is
lost); with `replace=False` the first death fails the pool (the rebuild: a share of the stream is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from shinchoku_runtime.service import settle_heap

log = logging.getLogger(__name__)

_CALL, _PUT, _FINISH = "call", "put", "finish"
_OK, _ERROR = "ok", "error"

#: Builds a child's handler in the child: `handler(item)` serves an item; an optional `handler.finish()` answers
#: `finish`. Must be importable by name (a module-level function), as spawning requires.
Factory = Callable[..., Callable[[Any], Any]]


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """In a child process: exit as soon as the parent is gone.

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


def _serve(factory: Factory, args: tuple[Any, ...], conn: Connection, parent: int) -> None:
    """A child's life: build the handler, serve items until told to finish; last words on any failure."""
    exit_with_parent(parent)
    try:
        handler = factory(*args)
        settle_heap()
        while True:
            kind, item = conn.recv()
            if kind == _PUT:
                handler(item)
            elif kind == _CALL:
                conn.send((_OK, handler(item)))
            else:
                finish = getattr(handler, "finish", None)
                conn.send((_OK, finish() if finish is not None else None))
                return
    except EOFError:  # the parent closed its end: nothing more to do
        return
    except BaseException as e:
        with contextlib.suppress(Exception):
            conn.send((_ERROR, f"{type(e).__name__}: {e}"))
        raise


class ChildDied(RuntimeError):
    """A child process stopped: its name, pid, how it ended and its last words, if it said any."""

    def __init__(self, name: str, pid: int | None, exitcode: int | None, last_words: str | None) -> None:
        if exitcode is not None and exitcode < 0:
            try:
                how = f"killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"killed by signal {-exitcode}"
        else:
            how = f"exit code {exitcode}"
        super().__init__(f"{name} (pid {pid}) stopped ({how})" + (f": {last_words}" if last_words else ""))
        self.exitcode = exitcode
        self.last_words = last_words


class _Child:
    """One spawned child and the parent's end of its pipe."""

    def __init__(self, factory: Factory, args: tuple[Any, ...], name: str) -> None:
        context = multiprocessing.get_context("spawn")
        conn, child_end = context.Pipe()
        self.name = name
        self.process: BaseProcess = context.Process(
            target=_serve, args=(factory, args, child_end, os.getpid()), name=name, daemon=True
        )
        self.process.start()
        # The parent keeps only its own end: a child that dies then closes the pipe for good, and a send or
        # receive on it fails (EPIPE, EOF) instead of blocking a thread for ever.
        child_end.close()
        self.conn = conn
        self.finishing = False
        #: A feeder is reading or writing the pipe (in a thread): only it may touch the pipe then.
        self.busy = False
        self.last_words: str | None = None

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def died(self) -> ChildDied:
        """What ended the child: its last words still in the pipe, its exit code (waits briefly for it)."""
        with contextlib.suppress(EOFError, OSError):
            while self.last_words is None and self.conn.poll(0):
                kind, value = self.conn.recv()
                if kind == _ERROR:
                    self.last_words = str(value)
        self.process.join(5)
        return ChildDied(self.name, self.process.pid, self.process.exitcode, self.last_words)

    def _answer(self) -> Any:
        kind, value = self.conn.recv()
        if kind == _ERROR:
            self.last_words = str(value)
            raise EOFError(value)
        return value

    def call(self, item: Any) -> Any:  # blocking: run in a thread (the caller set `busy`)
        try:
            self.conn.send((_CALL, item))
            return self._answer()
        finally:
            self.busy = False

    def put(self, item: Any) -> None:  # blocking until the child has read it: run in a thread (`busy` set)
        try:
            self.conn.send((_PUT, item))
        finally:
            self.busy = False

    def finish(self) -> Any:  # blocking: run in a thread
        self.finishing = True
        self.conn.send((_FINISH, None))
        return self._answer()


class ChildPool:
    """`processes` spawned children serving `factory(*args)`'s handler, fed from one queue (see the module)."""

    def __init__(
        self, factory: Factory, args: tuple[Any, ...], *, name: str, processes: int = 1, replace: bool, queue: int = 0
    ) -> None:
        self._factory = factory
        self._args = args
        self.name = name
        self._processes = processes
        self._replace = replace
        self._queue: asyncio.Queue[tuple[str, Any, asyncio.Future[Any] | None]] = asyncio.Queue(maxsize=queue)
        self._children: list[_Child | None] = [None] * processes
        self._feeders: list[asyncio.Task[None]] = []
        self._failed = asyncio.Event()
        self._failure: ChildDied | None = None

    # ------------------------------------------------------------------------------------------ children

    def start(self) -> None:
        """Spawn the children and the tasks feeding them."""
        for slot in range(self._processes):
            self._spawn(slot)
            self._feeders.append(asyncio.create_task(self._feed(slot), name=f"{self.name}-{slot}"))

    def _spawn(self, slot: int) -> _Child:
        child = _Child(self._factory, self._args, self.name)
        self._children[slot] = child
        # Told at once when it exits (its sentinel becomes readable), not only at the next item.
        asyncio.get_running_loop().add_reader(child.process.sentinel, self._exited, slot, child)
        return child

    def _exited(self, slot: int, child: _Child) -> None:
        asyncio.get_running_loop().remove_reader(child.process.sentinel)
        if child.finishing or child.busy or self._children[slot] is not child:
            return  # expected, or the feeder using it finds the broken pipe and reports it
        self._died(slot, child, child.died())

    def _died(self, slot: int, child: _Child, error: ChildDied) -> None:
        """Report a death once per child; fail the pool, or leave the slot for a fresh child (next item)."""
        if self._children[slot] is not child:
            return
        self._children[slot] = None
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(child.process.sentinel)
        child.conn.close()
        if self._replace:
            log.error("%s; a fresh one takes the next item", error)
            return
        log.error("%s", error)
        if self._failure is None:
            self._failure = error
            self._failed.set()

    def _child(self, slot: int) -> _Child:
        child = self._children[slot]
        if child is None or not child.alive:
            if child is not None:
                self._died(slot, child, child.died())
            child = self._spawn(slot)
        return child

    async def _feed(self, slot: int) -> None:
        while True:
            kind, item, answer = await self._queue.get()
            try:
                if self._failure is not None:
                    raise self._failure
                child = self._child(slot)
                child.busy = True
                try:
                    if kind == _CALL:
                        result = await asyncio.to_thread(child.call, item)
                        if answer is not None and not answer.done():
                            answer.set_result(result)
                    else:
                        await asyncio.to_thread(child.put, item)
                except (EOFError, OSError):  # the pipe broke: the child is gone (or going)
                    error = await asyncio.to_thread(child.died)
                    self._died(slot, child, error)
                    raise error from None
            except ChildDied as e:
                if answer is not None and not answer.done():
                    answer.set_exception(e)
                if not self._replace:
                    return
            finally:
                self._queue.task_done()

    # ------------------------------------------------------------------------------------------ feeding

    async def _unless_failed(self, step: Any) -> Any:
        """Await `step`, or raise the death that failed the pool as soon as it happens."""
        if self._failure is not None:
            if asyncio.iscoroutine(step):
                step.close()
            raise self._failure
        if self._replace:  # no death fails the pool
            return await step
        task = asyncio.ensure_future(step)
        failed = asyncio.ensure_future(self._failed.wait())
        await asyncio.wait({task, failed}, return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        if not task.done():
            task.cancel()
            assert self._failure is not None
            raise self._failure
        return await task

    async def call(self, item: Any) -> Any:
        """The handler's answer for `item` (from the first free child); `ChildDied` when that child died."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._unless_failed(self._queue.put((_CALL, item, answer)))
        return await self._unless_failed(answer)

    async def put(self, item: Any) -> None:
        """Queue `item` for the first free child (waits while the queue is full); `ChildDied` if the pool failed."""
        if self._failure is None and not self._queue.full():
            self._queue.put_nowait((_PUT, item, None))
            return
        await self._unless_failed(self._queue.put((_PUT, item, None)))

    async def finish(self) -> list[Any]:
        """Once everything queued is served: each child's `handler.finish()`, in order; the children then exit."""
        await self._unless_failed(self._queue.join())
        children = [self._child(slot) for slot in range(self._processes)]
        try:
            results = await asyncio.gather(*(asyncio.to_thread(child.finish) for child in children))
        except (EOFError, OSError):
            dead = next((c for c in children if c.last_words is not None or not c.alive), children[0])
            raise await asyncio.to_thread(dead.died) from None
        await asyncio.to_thread(self._join, children, 30.0)
        return list(results)

    async def close(self, *, graceful: bool) -> None:
        """Stop feeding and reap the children: `graceful` asks those not finished to finish (killed when they do
        not within a few seconds); otherwise they are killed (a failed job: what they hold is discarded)."""
        for feeder in self._feeders:
            feeder.cancel()
        await asyncio.gather(*self._feeders, return_exceptions=True)
        self._feeders = []
        children = [c for c in self._children if c is not None]
        self._children = [None] * self._processes
        loop = asyncio.get_running_loop()
        for child in children:
            loop.remove_reader(child.process.sentinel)
            if child.alive and not child.finishing:
                if graceful and not child.busy:
                    child.finishing = True
                    with contextlib.suppress(Exception):
                        child.conn.send((_FINISH, None))
                else:
                    child.process.kill()
        await asyncio.to_thread(self._join, children, 10.0 if graceful else 5.0)
        for child in children:
            child.conn.close()

    @staticmethod
    def _join(children: list[_Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)
