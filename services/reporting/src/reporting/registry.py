"""The catalog as reporting knows it: the `CATALOG` key-value bucket, read at start and watched for changes.

Reporting never imports the catalog service: it reads the bucket the catalog keeps (key = measure id,
value = Measure JSON, through the runtime's `CatalogMirror`) and keeps the measure list, sections, leads and
targets in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from nats.aio.client import Client

from contracts.catalog import Measure, measure_sort_key
from shinchoku_runtime.catalogmirror import CatalogMirror


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

    def apply(self, key: str, measure: Measure | None) -> None:
        """Apply one change of the bucket (None: the key was deleted) and publish a new snapshot."""
        if measure is None:
            self._entries.pop(key, None)
        else:
            self._entries[measure.id] = measure
        self._publish(loaded=True)

    async def follow(self, nc: Client, *, retry_delay: float = 2.0) -> None:
        """Load the bucket whole, then apply every change, for ever (the runtime's `CatalogMirror`); readers keep
        the last snapshot until the bucket is read whole."""
        mirror = CatalogMirror(
            nc,
            on_loaded=lambda measures: self.replace(measures.values()),
            on_changed=self.apply,
            retry_delay=retry_delay,
        )
        await mirror.follow()
