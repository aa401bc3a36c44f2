"""The catalog's registry as the services read it: the `CATALOG` key-value bucket, read whole, then followed.

The catalog writes the bucket (key = measure id, value = Measure JSON) and reads it back whole before each
mirror (`read_bucket`); ingest and reporting keep it in memory (`CatalogMirror`). All three read it here, because
reading it whole is subtle: nats-py's watcher (2.14 to at least 2.16) can say "no more initial values" (its
None marker) before it has handed them all over (nats-io/nats.py#842, #995). So a read goes on until it has also
seen the stream's last sequence as it stood before the watch began: the watcher delivers in stream order and
always delivers the stream's last message (the last value of its key), so seeing it means every earlier key was
seen too. A mirror that believed the early marker served a partial registry (a rollup short of measures, a
report judged by request-reply) until the rest trickled in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts.catalog import Measure
from contracts.streams import CATALOG_BUCKET

log = logging.getLogger(__name__)

#: Longest wait for the next initial value before the read is given up (and started over by its caller).
READ_TIMEOUT = 10.0


async def _initial_values(watcher: KeyValue.KeyWatcher, *, last_seq: int, timeout: float) -> dict[str, bytes]:
    live: dict[str, bytes] = {}
    marker_seen = False
    seen_seq = 0
    while not (marker_seen and seen_seq >= last_seq):
        entry = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]
        if entry is None:  # the watcher's end of the initial values (perhaps early: see the module's docstring)
            marker_seen = True
            continue
        seen_seq = max(seen_seq, entry.revision or 0)
        if entry.operation is None and entry.value is not None:
            live[entry.key] = entry.value
        else:
            live.pop(entry.key, None)
    return live


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    """Unsubscribe the watch, whatever state the connection is in: a failure here must not replace the reason the
    read ended (a cancellation above all, which the caller's retry loop would otherwise take for a fault)."""
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]
    except Exception as e:
        log.debug("stopping the catalog watch: %s", e)


async def read_bucket(kv: KeyValue, *, timeout: float = READ_TIMEOUT) -> dict[str, bytes]:
    """The live value of every key of the bucket (deleted keys are absent)."""
    last_seq = (await kv.status()).stream_info.state.last_seq
    watcher = await kv.watchall()
    try:
        return await _initial_values(watcher, last_seq=last_seq, timeout=timeout)
    finally:
        await _stop(watcher)


async def follow_bucket(
    kv: KeyValue,
    *,
    loaded: Callable[[dict[str, bytes]], None],
    changed: Callable[[str, bytes | None], None],
    timeout: float = READ_TIMEOUT,
) -> None:
    """Hand over the bucket's live values as one (`loaded`), then each later change as it happens (`changed`, None
    for a deleted key), until the watch stops."""
    last_seq = (await kv.status()).stream_info.state.last_seq
    watcher = await kv.watchall()
    try:
        loaded(await _initial_values(watcher, last_seq=last_seq, timeout=timeout))
        async for entry in watcher:
            if entry is None:  # the marker comes once; nothing to do if it ever came again
                continue
            changed(entry.key, entry.value if entry.operation is None and entry.value is not None else None)
    finally:
        await _stop(watcher)


def parse_measure(key: str, value: bytes) -> Measure | None:
    """The Measure a bucket value holds, or None (logged) when it holds none: the mirror keeps what it had."""
    try:
        return Measure.model_validate_json(value)
    except ValidationError as e:
        log.error("catalog entry %s is not a valid Measure, ignored: %s", key, e)
        return None


class CatalogMirror:
    """Follows the CATALOG bucket for ever as Measures, starting over (with the bucket read whole again) after any
    failure; meanwhile the service keeps what it last had.

    `on_loaded` receives every measure of the bucket at once (at start and after each restart of the watch),
    `on_changed` each later change (None: the key was deleted). A value that is not a Measure is logged and left
    out (a change to one leaves the measure as it was).
    """

    def __init__(
        self,
        nc: Client,
        *,
        on_loaded: Callable[[dict[str, Measure]], None],
        on_changed: Callable[[str, Measure | None], None],
        retry_delay: float = 2.0,
    ) -> None:
        self._nc = nc
        self._on_loaded = on_loaded
        self._on_changed = on_changed
        self._retry_delay = retry_delay
        #: The bucket, once opened (to read one key again: `KeyValue.get`).
        self.kv: KeyValue | None = None

    def _loaded(self, values: dict[str, bytes]) -> None:
        measures = {key: m for key, value in values.items() if (m := parse_measure(key, value)) is not None}
        log.info("catalog mirror loaded: %d measures", len(measures))
        self._on_loaded(measures)

    def _changed(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._on_changed(key, None)
        elif (measure := parse_measure(key, value)) is not None:
            self._on_changed(key, measure)

    async def follow(self) -> None:
        """Until cancelled."""
        while True:
            try:
                self.kv = await self._nc.jetstream().key_value(CATALOG_BUCKET)
                await follow_bucket(self.kv, loaded=self._loaded, changed=self._changed)
                log.warning("catalog watch ended; watching again")
            except asyncio.CancelledError:
                raise
            except (BucketNotFoundError, NotFoundError):
                log.info("catalog bucket %s not there yet; retrying in %.0fs", CATALOG_BUCKET, self._retry_delay)
            except Exception as e:  # keep what was mirrored and start over
                log.warning("catalog watch failed (%s: %s); retrying in %.0fs", type(e).__name__, e, self._retry_delay)
            await asyncio.sleep(self._retry_delay)
