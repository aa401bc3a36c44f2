"""The runtime's child processes (`ChildPool`): answers, shares, last words, replacement, exit with the parent."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from shinchoku_runtime.children import ChildDied, ChildPool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _importable_by_the_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned children import the handler below by its module's name (`tests.runtime.test_children`)."""
    monkeypatch.syspath_prepend(str(ROOT))


class Summer:
    """A child's handler: answers an item (doubled, or its pid, or fails on "boom"), keeps the sum of what it served."""

    def __init__(self, start: int) -> None:
        self.total = start

    def __call__(self, item: Any) -> Any:
        if item == "boom":
            raise ValueError("壊れた item")
        if item == "pid":
            return os.getpid()
        if item == "slow":
            time.sleep(30)
            return None
        self.total += item
        return 2 * item

    def finish(self) -> int:
        return self.total


async def test_call_returns_the_handlers_answer() -> None:
    pool = ChildPool(Summer, (0,), name="test child", replace=True)
    pool.start()
    try:
        assert await pool.call(21) == 42
        assert await pool.call(2) == 4
    finally:
        await pool.close(graceful=True)


async def test_a_child_that_fails_says_why_and_a_fresh_one_takes_the_next_item() -> None:
    pool = ChildPool(Summer, (0,), name="test child", replace=True)
    pool.start()
    try:
        first = await pool.call("pid")
        with pytest.raises(ChildDied, match="ValueError: 壊れた item"):
            await pool.call("boom")
        assert await pool.call(5) == 10
        assert await pool.call("pid") != first
    finally:
        await pool.close(graceful=True)


async def test_a_killed_child_is_reported_at_once_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    pool = ChildPool(Summer, (0,), name="test child", replace=True)
    pool.start()
    try:
        pid = await pool.call("pid")
        with caplog.at_level(logging.ERROR, logger="shinchoku_runtime.children"):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while "SIGKILL" not in caplog.text:  # reported while idle, not only at the next item
                assert time.monotonic() < deadline, "the death was not reported"
                await asyncio.sleep(0.05)
        assert f"pid {pid}" in caplog.text
        assert await pool.call(1) == 2  # nothing in hand was lost: the next item finds a fresh child
        assert await pool.call("pid") != pid
    finally:
        await pool.close(graceful=True)


async def test_items_put_are_shared_and_finish_collects_each_share() -> None:
    pool = ChildPool(Summer, (100,), name="test child", processes=2, replace=False, queue=2)
    pool.start()
    try:
        for item in range(1, 41):
            await pool.put(item)
        shares = await pool.finish()
    finally:
        await pool.close(graceful=False)
    assert len(shares) == 2
    assert sum(shares) == 200 + sum(range(1, 41))


async def test_a_death_fails_a_pool_without_replacement_at_once() -> None:
    pool = ChildPool(Summer, (0,), name="test child", processes=2, replace=False, queue=1)
    pool.start()
    try:
        await pool.put("slow")  # one child busy for half a minute
        await pool.put("boom")  # the other dies of it
        started = time.monotonic()

        async def keep_putting() -> None:  # every later step fails as soon as the death is known
            while True:
                await pool.put(1)
                await asyncio.sleep(0.05)

        with pytest.raises(ChildDied, match="ValueError: 壊れた item"):
            await keep_putting()
        assert time.monotonic() - started < 10
    finally:
        started = time.monotonic()
        await pool.close(graceful=False)
        assert time.monotonic() - started < 10  # the busy ones are killed, not waited for


def test_children_exit_with_their_parent(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import asyncio, multiprocessing, operator, sys, time
        from shinchoku_runtime.children import ChildPool

        async def main():
            pool = ChildPool(operator.itemgetter, (0,), name="orphan", replace=True)
            pool.start()
            assert await pool.call(("ready",)) == "ready"
            print(multiprocessing.active_children()[0].pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Recorder:
    """A child's handler that says the order it served items in, slowly enough for items to queue behind it."""

    def __init__(self) -> None:
        self.served: list[Any] = []

    def __call__(self, item: Any) -> Any:
        if item == "boom":
            raise ValueError("壊れた item")
        time.sleep(0.02)
        self.served.append(item)
        return list(self.served)


async def test_a_pipelined_child_serves_calls_in_order_and_starts_on_the_next_at_once() -> None:
    pool = ChildPool(Recorder, (), name="pipelined child", replace=True, pipeline=2)
    pool.start()
    try:
        answers = await asyncio.gather(*[pool.call(i) for i in range(10)])
        assert answers == [list(range(i + 1)) for i in range(10)]
    finally:
        await pool.close(graceful=True)


async def test_a_pipelined_child_that_dies_fails_every_call_it_held_and_a_fresh_one_takes_the_next() -> None:
    pool = ChildPool(Recorder, (), name="pipelined child", replace=True, pipeline=2)
    pool.start()
    try:
        dying, behind = pool.call("boom"), pool.call(1)
        results = await asyncio.gather(dying, behind, return_exceptions=True)
        assert all(isinstance(r, ChildDied) for r in results), results  # both were sent before the death
        assert await pool.call(2) == [2]  # a fresh child: the one behind was never served
    finally:
        await pool.close(graceful=True)


def test_a_pipeline_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="pipeline"):
        ChildPool(Recorder, (), name="no pipeline", replace=True, pipeline=0)


class DefaultCollector:
    """A handler that says its process's collector settings."""

    def __call__(self, item: Any) -> Any:
        import gc

        return gc.get_threshold()


class OwnCollector(DefaultCollector):
    """The same, asking for settings of its own."""

    gc_thresholds = (123_456, 7, 8)


async def test_a_handler_may_set_its_childs_collector() -> None:
    from shinchoku_runtime.heap import GC_THRESHOLDS

    for factory, expected in ((DefaultCollector, GC_THRESHOLDS), (OwnCollector, (123_456, 7, 8))):
        pool = ChildPool(factory, (), name="collector", replace=True)
        pool.start()
        try:
            assert tuple(await pool.call(None)) == expected, factory.__name__
        finally:
            await pool.close(graceful=True)
