"""Use cases of the catalog: seed the registry, mirror it to the KV bucket, announce changes, answer lookups."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.js.kv import KeyValue
from sqlalchemy import Engine
from sqlmodel import Session

from catalog import repository
from catalog.domain import (
    ChangeSet,
    check_registry,
    diff_registry,
    measure_document,
    measure_hash,
    normalise_measure_id,
    registry_revision,
    sort_ids,
)
from catalog.plan import bundled_plan_text, parse_plan
from contracts.catalog import Measure, measure_sort_key
from contracts.events import CatalogChanged
from shinchoku_runtime.catalogmirror import read_bucket

log = logging.getLogger(__name__)

#: KV writes in flight at once while mirroring (each waits for its JetStream ack).
KV_WRITE_CONCURRENCY = 64


def bundled_plan() -> list[Measure]:
    """The measures of the plan shipped with the catalog."""
    return parse_plan(bundled_plan_text())


@dataclass(frozen=True, slots=True)
class SeedResult:
    revision: str
    measures_total: int
    changes: ChangeSet = field(default_factory=ChangeSet)
    first_seed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes) or self.first_seed


def seed_registry(engine: Engine, measures: Sequence[Measure], *, now: datetime | None = None) -> SeedResult:
    """Store the registry `measures` describe; nothing changes when it is the one already stored.

    A changed registry replaces exactly the measures that differ, and adds their ids to those
    awaiting announcement on `catalog.changed`.
    """
    check_registry(measures)
    ordered = sorted(measures, key=lambda m: measure_sort_key(m.id))
    revision = registry_revision(ordered)
    with Session(engine) as session, session.begin():
        repository.lock_registry(session)
        registry = repository.get_registry(session)
        if registry is not None and registry.revision == revision:
            return SeedResult(revision=revision, measures_total=registry.measures_total)
        wanted = {m.id: measure_hash(m) for m in ordered}
        changes = diff_registry(repository.stored_hashes(session), wanted)
        by_id = {m.id: m for m in ordered}
        repository.delete_measures(session, measure_ids=[*changes.updated, *changes.removed])
        repository.insert_measures(session, measures=[by_id[i] for i in sort_ids([*changes.added, *changes.updated])])
        pending = set(registry.pending_changed_ids) if registry is not None else set()
        pending |= set(changes.changed_ids)
        if registry is not None and registry.announced_revision == revision:
            pending = set()  # back to what subscribers last heard of: nothing to tell them
        repository.save_registry(
            session,
            revision=revision,
            measures_total=len(ordered),
            pending_changed_ids=sort_ids(pending),
            seeded_at=now or datetime.now(UTC),
        )
    result = SeedResult(revision=revision, measures_total=len(ordered), changes=changes, first_seed=registry is None)
    log.info(
        "registry %s seeded: %d measures, %d added, %d updated, %d removed",
        revision[:12],
        len(ordered),
        len(changes.added),
        len(changes.updated),
        len(changes.removed),
    )
    return result


def registry_documents(engine: Engine) -> dict[str, bytes]:
    """`{measure id: Measure JSON}` of the stored registry, in document order."""
    with Session(engine) as session:
        return {m.id: measure_document(m) for m in repository.all_measures(session)}


def pending_announcement(engine: Engine, *, now: datetime | None = None) -> CatalogChanged | None:
    """The CatalogChanged still owed to subscribers, or None when the stored revision was announced."""
    with Session(engine) as session:
        registry = repository.get_registry(session)
        if registry is None or registry.announced_revision == registry.revision:
            return None
        return CatalogChanged(
            revision=registry.revision,
            measures_total=registry.measures_total,
            changed_ids=list(registry.pending_changed_ids),
            at=now or datetime.now(UTC),
        )


def record_announcement(engine: Engine, *, revision: str) -> bool:
    with Session(engine) as session, session.begin():
        return repository.mark_announced(session, revision=revision)


@dataclass(frozen=True, slots=True)
class MirrorResult:
    put: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


async def mirror_to_kv(kv: KeyValue, documents: Mapping[str, bytes]) -> MirrorResult:
    """Make the bucket hold exactly `documents`: put only values that differ, delete keys no longer wanted.

    The bucket is read whole first (`read_bucket`, the one reading every service shares: it goes on past nats-py's
    early end-of-values marker, see `shinchoku_runtime.catalogmirror`).
    """
    live = await read_bucket(kv)
    to_put = [k for k, v in documents.items() if live.get(k) != v]
    to_delete = sort_ids(k for k in live if k not in documents)
    limit = asyncio.Semaphore(KV_WRITE_CONCURRENCY)

    async def put(key: str) -> None:
        async with limit:
            await kv.put(key, documents[key])

    async def delete(key: str) -> None:
        async with limit:
            await kv.delete(key)

    await asyncio.gather(*(put(k) for k in to_put))
    await asyncio.gather(*(delete(k) for k in to_delete))
    if to_put or to_delete:
        log.info("KV bucket mirrored: %d put, %d deleted", len(to_put), len(to_delete))
    return MirrorResult(put=tuple(to_put), deleted=tuple(to_delete))


def not_found_reply(message: str) -> bytes:
    return json.dumps({"error": "not_found", "message": message}, ensure_ascii=False).encode()


def measure_reply(documents: Mapping[str, bytes], payload: bytes) -> tuple[str | None, bytes]:
    """Answer a `catalog.measure.get` request: (the measure id asked for, Measure JSON or a not_found error).

    `documents` is the registry the catalog seeded and mirrored, so a reply always agrees with the KV bucket.
    """
    try:
        raw = payload.decode()
    except UnicodeDecodeError:
        return None, not_found_reply("the request must be a measure id in UTF-8, like 1-25")
    measure_id = normalise_measure_id(raw)
    if measure_id is None:
        return None, not_found_reply(f"{raw[:40]!r} is not a measure id: ids look like 1-25 (section-number)")
    document = documents.get(measure_id)
    if document is None:
        return measure_id, not_found_reply(f"no measure {measure_id} in the catalog")
    return measure_id, document
