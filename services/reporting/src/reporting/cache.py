"""A bounded cache that computes a missing value once, however many threads ask for it at the same time."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: How long a thread waits for another one computing the value it wants before it computes the value itself.
FLIGHT_WAIT_SECONDS = 30.0


class Cached(NamedTuple, Generic[V]):
    value: V
    #: Whether this call computed the value (rather than finding it, or waiting for the thread computing it).
    computed: bool


class SingleFlightCache(Generic[K, V]):
    """The `size` values used last, by key. A value missing is computed by the first thread that asks for it; the
    threads asking for the same key meanwhile (a warm-up and a reader, two readers) wait for it and share it.

    Keys are value objects with named fields (frozen dataclasses), one type per kind of value: a key says what
    its value depends on, and keys of two kinds never compare equal. Thread-safe.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a cache holds at least one value, not {size}")
        self._size = size
        self._lock = threading.Lock()
        self._values: OrderedDict[K, V] = OrderedDict()
        #: Values being computed, each by one thread: others asking for the same one wait for its event.
        self._flights: dict[K, threading.Event] = {}

    def get(self, key: K, compute: Callable[[], V]) -> Cached[V]:
        """The value cached under `key`, or computed by `compute` once however many threads ask at once.

        If the thread computing it fails, or the value was evicted before a waiting thread read it, the waiting
        thread computes it itself. `compute`'s exceptions reach its caller; nothing is cached then.
        """
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return Cached(self._values[key], False)
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = threading.Event()
                    break
            flight.wait(timeout=FLIGHT_WAIT_SECONDS)
        try:
            value = compute()
            with self._lock:
                self._values[key] = value
                self._values.move_to_end(key)
                while len(self._values) > self._size:
                    self._values.popitem(last=False)
            return Cached(value, True)
        finally:
            with self._lock:
                del self._flights[key]
            flight.set()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values
