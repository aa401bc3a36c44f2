"""Work done in spawned child processes (another core), the one mechanism for it in the platform.

A `ChildPool` runs `processes` children of one kind. Each is spawned (a fresh interpreter: no inherited
connections or threads), exits as soon as its parent is gone (a SIGKILLed service must not leave a writer
behind), builds its handler with `factory(*args)` and then serves items from a socket. Items are fed from one
queue to whichever child is free:

* `call(item)`: the handler's answer comes back (the live reporting writer: one batch, one transaction,
  its outcome).
* `put(item)`: no answer; `finish()` then collects each handler's `finish()` (the rebuild's writers: many
  batches, then each one's winners).

With `pipeline=N` a child is sent up to N items before its first answer is back: it starts on the next the moment
it answers one, instead of idling while the answer crosses to the parent and the parent sends the next item (the
live writer with two batches in flight; the parent is busy then, acknowledging and tracing the batch before). A
child serves its items in the order sent, so with one child the answers come in the order of the calls.

A child that dies is reported at once with its last words (the exception that ended it, sent before it
went, or the signal that killed it): `call`/`put`/`finish` raise `ChildDied`. With `replace=True` the pool
starts a fresh child for the next item (the live writer: the batch in hand is retried, nothing else is
lost); with `replace=False` the first death fails the pool (the rebuild: a share of the stream is gone).

The parent's end of each socket is read and written by the event loop itself (asyncio streams), not by
threads: the parent is busy with Python work (receiving, acknowledging, tracing), and a thread blocked on a
pipe needs the GIL back after every write and read, which cost the live writer a tenth of its throughput.
Messages are pickles behind an 8-byte length.

One module of ~400 lines on purpose: the child's loop and the parent's pool are the two ends of one small
protocol (call, put, finish; an answer or last words), read together or not at all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from shinchoku_runtime.heap import GC_THRESHOLDS, settle_heap

log = logging.getLogger(__name__)

_CALL, _PUT, _FINISH = "call", "put", "finish"
_OK, _ERROR = "ok", "error"
_LENGTH = struct.Struct("!Q")

#: Builds a child's handler in the child: `handler(item)` serves an item; an optional `handler.finish()` answers
#: `finish`; an optional `handler.gc_thresholds` sets the child's collector (`heap.settle_heap`). Must be
#: importable by name (a module-level function or class), as spawning requires.
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


# ---------------------------------------------------------------------------------------------- the child


def _read_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    while view:
        got = sock.recv_into(view)
        if not got:
            raise EOFError("the parent closed the connection")
        view = view[got:]
    return buffer


def _send(sock: socket.socket, message: tuple[str, Any]) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    header = _LENGTH.pack(len(data))
    if len(data) < 65536:
        sock.sendall(header + data)  # one write for an answer that is small anyway
    else:
        sock.sendall(header)
        sock.sendall(data)


def _serve(factory: Factory, args: tuple[Any, ...], sock: socket.socket, parent: int) -> None:
    """A child's life: build the handler, serve items until told to finish; last words on any failure."""
    exit_with_parent(parent)
    try:
        handler = factory(*args)
        settle_heap(getattr(handler, "gc_thresholds", GC_THRESHOLDS))
        while True:
            (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
            kind, item = pickle.loads(_read_exactly(sock, size))
            if kind == _PUT:
                handler(item)
            elif kind == _CALL:
                _send(sock, (_OK, handler(item)))
            else:
                finish = getattr(handler, "finish", None)
                _send(sock, (_OK, finish() if finish is not None else None))
                return
    except EOFError:  # the parent closed its end: nothing more to do
        return
    except BaseException as e:
        with contextlib.suppress(Exception):
            _send(sock, (_ERROR, f"{type(e).__name__}: {e}"))
        raise


# ---------------------------------------------------------------------------------------------- the parent


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
    """One spawned child, the parent's end of its socket, and the task listening to it."""

    def __init__(self, factory: Factory, args: tuple[Any, ...], name: str, on_death: Callable[[_Child], None]) -> None:
        context = multiprocessing.get_context("spawn")
        mine, theirs = socket.socketpair()
        for end in (mine, theirs):  # room for a whole batch (≈1 MB): written at once, not as the child reads it
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.name = name
        self.process: BaseProcess = context.Process(
            target=_serve, args=(factory, args, theirs, os.getpid()), name=name, daemon=True
        )
        self.process.start()
        # The parent keeps only its own end: a child that dies then closes the socket for good, and the
        # listener reads the end of it at once.
        theirs.close()
        self.finishing = False
        self.last_words: str | None = None
        self.death: asyncio.Future[ChildDied] = asyncio.get_running_loop().create_future()
        self._answers: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._on_death = on_death
        self._opened = asyncio.ensure_future(asyncio.open_unix_connection(sock=mine))
        self._listener = asyncio.ensure_future(self._listen())

    @property
    def alive(self) -> bool:
        return not self.death.done()

    async def _listen(self) -> None:
        reader, writer = await self._opened
        try:
            while True:
                (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                kind, value = pickle.loads(await reader.readexactly(size))
                if kind == _ERROR:
                    self.last_words = str(value)
                elif self._answers:
                    answer = self._answers.popleft()
                    if not answer.done():
                        answer.set_result(value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the end of the child
        await asyncio.to_thread(self.process.join, 5)
        error = ChildDied(self.name, self.process.pid, self.process.exitcode, self.last_words)
        self.death.set_result(error)
        for answer in self._answers:
            if not answer.done():
                answer.set_exception(error)
        self._answers.clear()
        writer.close()
        if not self.finishing:
            self._on_death(self)

    async def send(self, kind: str, item: Any, *, answered: bool) -> asyncio.Future[Any] | None:
        """Write a message (waits while the child has not read most of the previous ones); its answer to come."""
        if not self.alive:
            raise self.death.result()
        _, writer = await self._opened
        if writer.is_closing():
            raise await self.death
        answer: asyncio.Future[Any] | None = None
        if answered:
            answer = asyncio.get_running_loop().create_future()
            self._answers.append(answer)
        data = pickle.dumps((kind, item), pickle.HIGHEST_PROTOCOL)
        writer.write(_LENGTH.pack(len(data)))
        writer.write(data)
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            raise await self.death from None
        return answer

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()


class ChildPool:
    """`processes` spawned children serving `factory(*args)`'s handler, fed from one queue (see the module)."""

    def __init__(
        self,
        factory: Factory,
        args: tuple[Any, ...],
        *,
        name: str,
        processes: int = 1,
        replace: bool,
        queue: int = 0,
        pipeline: int = 1,
    ) -> None:
        if pipeline < 1:
            raise ValueError(f"pipeline must be at least 1, not {pipeline}")
        self._pipeline = pipeline
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

    def start(self) -> None:
        """Spawn the children and the tasks feeding them."""
        for slot in range(self._processes):
            self._spawn(slot)
            self._feeders.append(asyncio.create_task(self._feed(slot), name=f"{self.name}-{slot}"))

    def _spawn(self, slot: int) -> _Child:
        child = _Child(self._factory, self._args, self.name, lambda dead: self._died(slot, dead))
        self._children[slot] = child
        return child

    def _died(self, slot: int, child: _Child) -> None:
        """A child's death, reported once: fail the pool, or leave the slot for a fresh child (next item)."""
        error = child.death.result()
        if self._children[slot] is not child:
            return
        self._children[slot] = None
        if self._replace:
            log.error("%s; a fresh one takes the next item", error)
            return
        log.error("%s", error)
        if self._failure is None:
            self._failure = error
            self._failed.set()

    async def _feed(self, slot: int) -> None:
        sent = asyncio.Semaphore(self._pipeline)  # items sent to this slot's child and not answered yet
        relays: set[asyncio.Task[None]] = set()
        try:
            while True:
                await sent.acquire()
                kind, item, answer = await self._queue.get()
                try:
                    if self._failure is not None:
                        raise self._failure
                    child = self._children[slot]
                    if child is None or not child.alive:
                        child = self._spawn(slot)
                    waiting = await child.send(kind, item, answered=kind == _CALL)
                except ChildDied as e:
                    sent.release()
                    self._queue.task_done()
                    if answer is not None and not answer.done():
                        answer.set_exception(e)
                    if not self._replace:
                        return
                    continue
                relay = self._relay(waiting, answer, sent)
                if self._pipeline == 1:
                    await relay
                else:
                    task = asyncio.create_task(relay)
                    relays.add(task)
                    task.add_done_callback(relays.discard)
        finally:
            for task in relays:
                task.cancel()

    async def _relay(
        self, waiting: asyncio.Future[Any] | None, answer: asyncio.Future[Any] | None, sent: asyncio.Semaphore
    ) -> None:
        """Hand the child's answer to the caller (a `ChildDied` if it died first)."""
        try:
            if waiting is not None:
                try:
                    result = await waiting
                except ChildDied as e:
                    if answer is not None and not answer.done():
                        answer.set_exception(e)
                else:
                    if answer is not None and not answer.done():
                        answer.set_result(result)
        finally:
            sent.release()
            self._queue.task_done()

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
        answers = []
        for slot in range(self._processes):
            child = self._children[slot]
            if child is None or not child.alive:
                child = self._spawn(slot)
            child.finishing = True
            answers.append(await child.send(_FINISH, None, answered=True))
        results = await asyncio.gather(*[a for a in answers if a is not None])
        await self._reap(30.0)
        return list(results)

    async def close(self, *, graceful: bool) -> None:
        """Stop feeding and reap the children: `graceful` asks those not finished to finish (killed when they do
        not within a few seconds); otherwise they are killed (a failed job: what they hold is discarded)."""
        for feeder in self._feeders:
            feeder.cancel()
        await asyncio.gather(*self._feeders, return_exceptions=True)
        self._feeders = []
        for child in self._children:
            if child is None or not child.alive or child.finishing:
                continue
            child.finishing = True
            if graceful:
                with contextlib.suppress(ChildDied):
                    await child.send(_FINISH, None, answered=False)
            else:
                child.kill()
        await self._reap(10.0 if graceful else 5.0)
        self._children = [None] * self._processes

    async def _reap(self, timeout: float) -> None:
        """Wait for the children to exit (their listeners see the end), killing any still there at `timeout`."""
        children = [c for c in self._children if c is not None]
        deaths = [c.death for c in children]
        if not deaths:
            return
        _, late = await asyncio.wait(deaths, timeout=timeout)
        for child in children:
            if child.death in late:
                child.kill()
        await asyncio.wait(deaths, timeout=10)
