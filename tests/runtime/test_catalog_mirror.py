"""Ingest's and reporting's mirrors of the CATALOG bucket, when nats-py's watcher says "no more" too early.

nats-py (2.14 to at least 2.16) can put the watcher's end-of-initial-values marker (None) before every key's last
value (nats-io/nats.py#842, #995; the catalog's own read is tested in services/catalog/tests/test_read_bucket.py).
The bucket here is a stand-in that hands its watcher the marker early and holds back the rest until the test
lets it go, as the race does: a mirror must not say it is loaded with part of the registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from nats.errors import ConnectionClosedError

from contracts.catalog import Measure
from ingest.lookup import MeasureMirror
from reporting.registry import CatalogView
from reporting.testing import synthetic_measures

MEASURES = synthetic_measures(4)


@dataclass
class _Entry:
    key: str
    value: bytes | None
    revision: int
    operation: str | None = None


@dataclass
class _Watcher:
    """Hands out entries as nats-py's KeyWatcher does; after `hold_after` entries it waits for `release`."""

    items: list[_Entry | None]
    hold_after: int
    release: asyncio.Event
    handed: int = 0

    async def updates(self, timeout: float = 5.0) -> _Entry | None:
        return await asyncio.wait_for(self.__anext__(), timeout)

    def __aiter__(self) -> _Watcher:
        return self

    async def __anext__(self) -> _Entry | None:
        if self.handed >= self.hold_after:
            await self.release.wait()
        if not self.items:
            await asyncio.Event().wait()  # a live watch: no change comes
        self.handed += 1
        return self.items.pop(0)

    stop_fails: bool = False

    async def stop(self) -> None:
        if self.stop_fails:  # as nats-py's unsubscribe does on a closed connection
            raise ConnectionClosedError


@dataclass
class _Bucket:
    items: list[_Entry | None]
    hold_after: int
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def status(self) -> Any:
        last = max(e.revision for e in self.items if e is not None)
        return SimpleNamespace(stream_info=SimpleNamespace(state=SimpleNamespace(last_seq=last)))

    async def watchall(self) -> _Watcher:
        return _Watcher(list(self.items), self.hold_after, self.release)


class _Connection:
    """What the mirrors ask of a nats-py client: `jetstream().key_value(bucket)` (and a subscription for ingest)."""

    def __init__(self, bucket: _Bucket) -> None:
        self.bucket = bucket

    def jetstream(self) -> _Connection:
        return self

    async def key_value(self, name: str) -> _Bucket:
        assert name == "CATALOG"
        return self.bucket

    async def subscribe(self, subject: str, cb: Callable[..., Any]) -> None:
        return None


def early_marker_bucket() -> _Bucket:
    m = MEASURES
    return _Bucket(
        items=[
            _Entry(m[0].id, m[0].model_dump_json().encode(), 1),
            _Entry(m[1].id, m[1].model_dump_json().encode(), 2),
            None,  # too early: the next two were live before the watch began
            _Entry(m[2].id, m[2].model_dump_json().encode(), 3),
            _Entry(m[0].id, None, 4, operation="DEL"),
        ],
        hold_after=3,
    )


LIVE = {MEASURES[1].id, MEASURES[2].id}


async def _settle(loaded: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not loaded() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def test_reportings_view_is_never_loaded_with_part_of_the_registry() -> None:
    bucket = early_marker_bucket()
    view = CatalogView()
    following = asyncio.create_task(view.follow(_Connection(bucket)))
    try:
        await asyncio.sleep(0.3)  # the early marker has been handed over
        assert not view.loaded or set(view.snapshot.by_id) == LIVE, "loaded with part of the registry"
        bucket.release.set()
        await _settle(lambda: view.loaded)
        assert set(view.snapshot.by_id) == LIVE
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_ingests_mirror_is_never_loaded_with_part_of_the_registry() -> None:
    bucket = early_marker_bucket()
    mirror = MeasureMirror(_Connection(bucket))  # type: ignore[arg-type]
    await mirror.start()
    try:
        await asyncio.sleep(0.3)
        known = {m.id for m in MEASURES if mirror.cached(m.id)[1] is not None}
        assert not mirror.loaded.is_set() or known == LIVE, "loaded with part of the registry"
        bucket.release.set()
        await _settle(mirror.loaded.is_set)
        assert {m.id for m in MEASURES if mirror.cached(m.id)[1] is not None} == LIVE
        assert len(mirror) == len(LIVE)
    finally:
        await mirror.stop()


async def test_a_mirror_stops_when_cancelled_even_if_its_watch_cannot_be_unsubscribed() -> None:
    """A service stopping closes its connection: the watch's unsubscribe then fails, and that failure must not turn
    the cancellation into a fault the mirror retries for ever (a stopped ingest hung in its tests)."""
    bucket = early_marker_bucket()
    watchall = bucket.watchall

    async def failing_watch() -> _Watcher:
        watcher = await watchall()
        watcher.stop_fails = True
        return watcher

    bucket.watchall = failing_watch  # type: ignore[method-assign]
    bucket.release.set()
    view = CatalogView()
    following = asyncio.create_task(view.follow(_Connection(bucket)))
    await _settle(lambda: view.loaded)
    assert view.loaded
    following.cancel()
    done, _ = await asyncio.wait([following], timeout=3)
    assert done == {following}, "the mirror went on after its cancellation"
    assert following.cancelled()


def test_the_stand_in_measures_are_distinct() -> None:
    assert len({m.id for m in MEASURES}) == len(MEASURES) == 4
    assert all(isinstance(m, Measure) for m in MEASURES)
