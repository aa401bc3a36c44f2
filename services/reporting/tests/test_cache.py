"""The single-flight cache: one computation per key however many threads ask, least recently used evicted."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from reporting.cache import SingleFlightCache


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    revision: int


@dataclass(frozen=True, slots=True)
class OtherKey:
    name: str
    revision: int


def test_a_value_is_computed_once_and_then_found() -> None:
    cache: SingleFlightCache[Key, str] = SingleFlightCache(4)
    first = cache.get(Key("a", 1), lambda: "A1")
    assert (first.value, first.computed) == ("A1", True)
    again = cache.get(Key("a", 1), lambda: pytest.fail("computed twice"))
    assert (again.value, again.computed) == ("A1", False)
    assert cache.get(Key("a", 2), lambda: "A2").computed  # another revision is another value


def test_keys_of_two_kinds_never_share_a_value() -> None:
    cache: SingleFlightCache[Key | OtherKey, str] = SingleFlightCache(4)
    cache.get(Key("a", 1), lambda: "key")
    assert cache.get(OtherKey("a", 1), lambda: "other").value == "other"


def test_the_least_recently_used_value_goes_first() -> None:
    cache: SingleFlightCache[Key, int] = SingleFlightCache(2)
    cache.get(Key("a", 1), lambda: 1)
    cache.get(Key("b", 1), lambda: 2)
    cache.get(Key("a", 1), lambda: 0)  # used: b is now the least recent
    cache.get(Key("c", 1), lambda: 3)
    assert Key("a", 1) in cache
    assert Key("b", 1) not in cache
    assert len(cache) == 2


def test_threads_asking_together_share_one_computation() -> None:
    cache: SingleFlightCache[Key, int] = SingleFlightCache(4)
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        started.set()
        release.wait(10)
        return 42

    results: list[tuple[int, bool]] = []

    def ask() -> None:
        found = cache.get(Key("a", 1), slow)
        results.append((found.value, found.computed))

    first = threading.Thread(target=ask)
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=ask) for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert len(calls) == 1
    assert sorted(results) == [(42, False), (42, False), (42, False), (42, True)]


def test_a_failed_computation_caches_nothing_and_the_next_caller_computes() -> None:
    cache: SingleFlightCache[Key, int] = SingleFlightCache(4)

    def broken() -> int:
        raise RuntimeError("database away")

    with pytest.raises(RuntimeError, match="database away"):
        cache.get(Key("a", 1), broken)
    assert Key("a", 1) not in cache
    assert cache.get(Key("a", 1), lambda: 7) == (7, True)
