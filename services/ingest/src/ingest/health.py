"""What ingest's own work says about its health (read by /healthz): can it write its store, can it publish?"""

from __future__ import annotations

import time


class WorkHealth:
    """Kept by the batch handler as it stores and publishes; read by /healthz.

    The store: failing from the first batch that could not write until one writes again (or /healthz finds
    a write could start). Publishing: a stream whose last publish got no PubAck or a refusal (a full disk,
    a stream limit, no quorum) is failing until its next PubAck, or until no message has been retried on it
    for longer than a retry takes at most (`horizon`): the messages that failed were all put back and come
    back sooner while the outage lasts, so a failure older than that is history, not the present.
    """

    def __init__(self, *, horizon: float) -> None:
        self._horizon = horizon
        self._store_failing_since: float | None = None
        #: stream → (first failure, latest failure, what went wrong).
        self._publish_failures: dict[str, tuple[float, float, str]] = {}

    # --- the store ---

    @property
    def store_failing(self) -> bool:
        return self._store_failing_since is not None

    def store_failed(self) -> None:
        if self._store_failing_since is None:
            self._store_failing_since = time.monotonic()

    def store_ok(self) -> None:
        self._store_failing_since = None

    # --- publishing ---

    def publish_failed(self, stream: str, detail: str, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        first = self._publish_failures.get(stream, (now,))[0]
        self._publish_failures[stream] = (first, now, detail)

    def published(self, stream: str) -> None:
        self._publish_failures.pop(stream, None)

    def publishing_problems(self, *, now: float | None = None) -> dict[str, str]:
        """The streams ingest cannot write to now, each with what went wrong and for how long."""
        now = time.monotonic() if now is None else now
        return {
            stream: f"{detail} (failing for {now - first:.0f} s)"
            for stream, (first, last, detail) in sorted(self._publish_failures.items())
            if now - last <= self._horizon
        }
