"""Reading the CATALOG bucket whole, when nats-py's watcher says "no more" too early.

nats-py (2.14 to at least 2.16) can put the watcher's end-of-initial-values marker (None) on the queue before
every key's last value has been handed over (nats-io/nats.py#842, #995). The catalog then took a partial
bucket for the whole one and rewrote all 319 measures on a restart (CI saw `put` hold every id). The reader
waits, past the marker, for the stream's last sequence taken before the watch began.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from shinchoku_runtime.catalogmirror import read_bucket


@dataclass
class _Entry:
    key: str
    value: bytes | None
    revision: int
    operation: str | None = None


@dataclass
class _Watcher:
    """Hands out a queue as nats-py's KeyWatcher does, with the None marker where the race puts it."""

    items: list[_Entry | None]
    stopped: bool = False

    async def updates(self, timeout: float = 5.0) -> _Entry | None:
        if not self.items:
            await asyncio.sleep(timeout)
            raise TimeoutError
        return self.items.pop(0)

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class _Bucket:
    last_seq: int
    items: list[_Entry | None]
    watchers: list[_Watcher] = field(default_factory=list)

    async def status(self) -> Any:
        return SimpleNamespace(stream_info=SimpleNamespace(state=SimpleNamespace(last_seq=self.last_seq)))

    async def watchall(self) -> _Watcher:
        watcher = _Watcher(list(self.items))
        self.watchers.append(watcher)
        return watcher


async def test_a_marker_before_the_last_value_does_not_end_the_read() -> None:
    bucket = _Bucket(
        last_seq=4,
        items=[
            _Entry("1-1", b"a", 1),
            _Entry("1-2", b"b", 2),
            None,  # too early: 1-3 and the delete of 1-1 were live before the watch began
            _Entry("1-3", b"c", 3),
            _Entry("1-1", None, 4, operation="DEL"),
        ],
    )
    live = await read_bucket(bucket, timeout=0.5)  # type: ignore[arg-type]
    assert live == {"1-2": b"b", "1-3": b"c"}
    assert bucket.watchers[0].stopped


async def test_an_empty_bucket_reads_as_empty() -> None:
    bucket = _Bucket(last_seq=0, items=[None])
    assert await read_bucket(bucket, timeout=0.5) == {}  # type: ignore[arg-type]
