"""The collector's settings for a long-running process (a service, or one of its child processes).

Its own module, without FastAPI or uvicorn: a child process (the reporting writer, the rebuild's writers) imports
it at start, and importing `shinchoku_runtime.service` there cost ≈230 ms of each child's start (a rebuild starts
two).
"""

from __future__ import annotations

import gc

#: Young-generation collections every 20,000 allocations instead of 700 (then 20 and 50 for the older ones).
#: Measured in ingest at ~4,500 messages/s: the collector's share of CPU went from ~7 % to ~1 %, because a
#: batch in flight (hundreds of messages, their spans and rows) no longer gets promoted piecemeal into the
#: old generation, whose full collections each walked the span queue again (~35 ms each).
GC_THRESHOLDS = (20_000, 20, 50)


#: For a process that allocates in batches and frees each batch before the next (the rebuild's writers): a
#: young collection only every 100,000 net allocations, and the full ones practically never. Measured in a
#: rebuild of 1,000,000 events: each writer spent 0.7 s in ~100 collections with `GC_THRESHOLDS` (most of it
#: walking the winners it keeps), 0.04 s in one with these.
BATCH_THRESHOLDS = (100_000, 50, 1000)


def settle_heap(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """After start-up: freeze what is alive now, and collect young objects in larger steps (`thresholds`).

    A service starts with ~120,000 long-lived objects (FastAPI, pydantic, SQLAlchemy, OpenTelemetry, the
    catalog); frozen, full collections no longer walk them. What is created later is collected as usual,
    reference cycles included.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
