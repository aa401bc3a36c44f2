"""What a batch's decision needs from the world, gathered, and the decision made with it (`domain.decide_batch`).

- **The catalog**: each report's measure, from the KV mirror or asked of the catalog (the request joins the trace
  of the first message naming the measure). A measure the catalog cannot tell now faults its messages.
- **The records of earlier decisions** for the batch's event ids. Optimistically none, on a first attempt: a new
  event id is the common case, and the claim insert (unique on event id and agency) is the check that counts. A
  batch holding an id claimed before (a resend, a redelivery, another replica's work) fails that insert as a
  whole and is decided again with the stored records (`recheck`). Only a decision that claims nothing could come
  out differently without them: those ids are read at once.
- **The secretariat's commands' facts**: who sent them, the reports they review, the closed quarters (`commands`).
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from contracts.catalog import Measure
from ingest import repository
from ingest.commands import CommandFacts, CommandWorld
from ingest.delivery import Delivery, Fault, FaultKind
from ingest.domain import BatchDecision, ClaimKey, Command, PriorRecord, Report, decide_batch
from ingest.lookup import MeasureMirror
from ingest.observer import BatchObserver
from shinchoku_runtime.db import in_thread


class BatchDecider:
    """Looks up a batch's measures, reads its prior records and command facts, and decides it."""

    def __init__(
        self, *, engine: sa.Engine, mirror: MeasureMirror, commands: CommandWorld, observer: BatchObserver
    ) -> None:
        self._engine = engine
        self._mirror = mirror
        self._commands = commands
        self._observer = observer

    async def look_up(self, todo: list[Delivery]) -> dict[str, Measure | None]:
        """The measures the reports name (None: not in the catalog); a report whose measure the catalog cannot
        tell now is failed (retried later)."""
        reports = [(d, d.read) for d in todo if isinstance(d.read, Report)]
        started = time.time_ns()
        requests = self._observer.catalog_requests(reports, self._mirror.cached)
        found, unavailable = await self._mirror.lookup_many((r.event.measure_id for _, r in reports), requests.contexts)
        self._observer.looked_up(reports, requests, started, time.time_ns())
        if unavailable:
            for d, report in reports:
                if report.event.measure_id in unavailable:
                    d.fail(Fault(FaultKind.catalog, unavailable[report.event.measure_id]))
        return found

    async def decide(
        self, todo: list[Delivery], measures: dict[str, Measure | None], *, recheck: bool
    ) -> tuple[list[Delivery], BatchDecision]:
        """The messages that can be decided now (the others failed, for a fact that cannot be had now) and their
        decision. A store error is raised: the batch is then put back as a whole."""
        started = time.perf_counter()
        facts = await self._commands.gather(todo)
        decidable = [d for d in todo if d.fault is None]
        reported = (
            [(d.read.subject_agency, d.read.event_id) for d in decidable if isinstance(d.read, Report | Command)]
            if recheck
            else []
        )
        priors = await self._load_priors(reported)
        batch = _decide(decidable, measures, priors, facts)
        if not recheck:
            unclaimed = batch.unclaimed_event_ids()
            if unclaimed and (priors := await self._load_priors(unclaimed)):
                batch = _decide(decidable, measures, priors, facts)
        self._observer.read_records(time.perf_counter() - started)
        return decidable, batch

    async def _load_priors(self, keys: list[ClaimKey]) -> dict[ClaimKey, PriorRecord]:
        if not keys:
            return {}
        return await in_thread(repository.load_priors, self._engine, keys=keys)


def _decide(
    decidable: list[Delivery],
    measures: dict[str, Measure | None],
    priors: dict[ClaimKey, PriorRecord],
    facts: CommandFacts,
) -> BatchDecision:
    return decide_batch(
        decidable, measures=measures, priors=priors, reports=facts.reports, closed=facts.closed, senders=facts.senders
    )
