"""Warm-up scheduling: which documents were read lately, so that a change to the store recomputes them at once.

The app calls `RollupQueries.warm` in the background after every commit (and every second): the documents
read lately are recomputed then, so that the next reader finds them ready, or, if it asks while the warm-up
computes, waits for that computation instead of starting its own (`SingleFlightCache`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from contracts.periods import FiscalQuarter

#: Recomputes a document as known now; True when it had to be computed (it was stale), False when it was ready.
Refresh = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Read:
    """A document read as known now: its kind (the route's document), quarter and audience."""

    kind: str
    quarter: FiscalQuarter
    #: The public's view (closed quarters only) rather than the live one.
    public: bool = False


class RecentReads:
    """The documents read lately, the latest first, each with how to recompute it. Thread-safe."""

    def __init__(self, *, most: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._most = most
        self._clock = clock
        self._lock = threading.Lock()
        self._reads: OrderedDict[Read, tuple[float, Refresh]] = OrderedDict()

    def read(self, read: Read, refresh: Refresh) -> None:
        """Note that `read` was read now (the least recent read is forgotten beyond `most`)."""
        with self._lock:
            self._reads[read] = (self._clock(), refresh)
            self._reads.move_to_end(read)
            while len(self._reads) > self._most:
                self._reads.popitem(last=False)

    def within(self, window: float) -> list[tuple[Read, Refresh]]:
        """The reads of the last `window` seconds, the latest first (the likeliest to be read again next); older
        ones are forgotten."""
        horizon = self._clock() - window
        with self._lock:
            for read in [r for r, (seen, _) in self._reads.items() if seen < horizon]:
                del self._reads[read]
            return [(read, refresh) for read, (_, refresh) in reversed(self._reads.items())]
