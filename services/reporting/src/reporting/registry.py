"""The catalog as reporting knows it: the `CATALOG` key-value bucket, read at start and watched for changes.

Reporting never imports the catalog service: it reads the bucket the catalog keeps (key = measure id,
value = Measure JSON) and keeps the measure list, sections, leads and targets in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE
from pydantic import ValidationError

from contracts.catalog import Measure, measure_sort_key
from contracts.streams import CATALOG_BUCKET

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogSnapshot:
    """An immutable view of the registry; `revision` grows with every change reporting applies."""

    revision: int
    loaded: bool
    measures: tuple[Measure, ...] = ()
    by_id: dict[str, Measure] = field(default_factory=dict)

    @classmethod
    def of(cls, measures: Iterable[Measure], *, revision: int, loaded: bool = True) -> CatalogSnapshot:
        ordered = tuple(sorted(measures, key=lambda m: measure_sort_key(m.id)))
        return cls(revision=revision, loaded=loaded, measures=ordered, by_id={m.id: m for m in ordered})

    def led_by(self, agency: str) -> tuple[Measure, ...]:
        return tuple(m for m in self.measures if agency in m.lead_agencies)


class CatalogView:
    """Holds the current snapshot; `follow()` keeps it in step with the bucket."""

    def __init__(self, measures: Iterable[Measure] | None = None) -> None:
        self._entries: dict[str, Measure] = {}
        self._revision = 0
        self._snapshot = CatalogSnapshot(revision=0, loaded=False)
        if measures is not None:
            self.replace(measures)

    @property
    def snapshot(self) -> CatalogSnapshot:
        return self._snapshot

    @property
    def loaded(self) -> bool:
        return self._snapshot.loaded

    def replace(self, measures: Iterable[Measure]) -> None:
        self._entries = {m.id: m for m in measures}
        self._publish(loaded=True)

    def _publish(self, *, loaded: bool) -> None:
        self._revision += 1
        self._snapshot = CatalogSnapshot.of(self._entries.values(), revision=self._revision, loaded=loaded)

    def apply(self, key: str, value: bytes | None, *, deleted: bool = False) -> bool:
        """Apply one bucket entry and publish a new snapshot; False when the value is not a valid Measure."""
        ok = _apply_entry(self._entries, key, value, deleted=deleted)
        self._publish(loaded=True)
        return ok

    async def follow(self, nc: Client, *, retry_delay: float = 2.0) -> None:
        """Load the bucket, then apply every change, for ever (restarting the watch after any failure)."""
        js = nc.jetstream()
        while True:
            try:
                kv = await js.key_value(CATALOG_BUCKET)
                watcher = await kv.watchall()
                # The initial values fill a fresh dict; readers keep the last snapshot until it is complete.
                entries: dict[str, Measure] = {}
                initial = True
                async for entry in watcher:
                    if entry is None:
                        if initial:
                            initial = False
                            self._entries = entries
                            self._publish(loaded=True)
                            log.info("catalog loaded: %d measures", len(entries))
                        continue
                    _apply_entry(entries, entry.key, entry.value, deleted=entry.operation in (KV_DEL, KV_PURGE))
                    if not initial:
                        self._publish(loaded=True)
                log.warning("catalog watch ended; watching again")
            except asyncio.CancelledError:
                raise
            except (BucketNotFoundError, NotFoundError):
                log.info("catalog bucket %s not there yet; retrying in %.0fs", CATALOG_BUCKET, retry_delay)
            except Exception as e:  # keep serving the last snapshot and try again
                log.warning("catalog watch failed (%s: %s); retrying in %.0fs", type(e).__name__, e, retry_delay)
            await asyncio.sleep(retry_delay)


def _apply_entry(entries: dict[str, Measure], key: str, value: bytes | None, *, deleted: bool) -> bool:
    if deleted or not value:
        entries.pop(key, None)
        return True
    try:
        measure = Measure.model_validate_json(value)
    except ValidationError as e:
        log.error("catalog entry %s is not a valid Measure, ignored: %s", key, e)
        return False
    entries[measure.id] = measure
    return True
