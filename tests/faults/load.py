"""Load for the fault scenarios: reports planned per scenario, published by every agency with its own credentials.

A report counts as acknowledged once its publisher received a PubAck. A publish that fails (a timeout while
NATS restarts, a refusal while the disk is full) is retried with the very same bytes until a deadline: the
client's contract is that resending is always safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time as clock
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import PubAck

from contracts.streams import agency_inbox_prefix, publish_stream

from .checker import JST, MeasureInfo, Report, quarter_last_day

STATUSES = ("not_started", "on_track", "at_risk", "delayed", "completed", "suspended")


def plan_reports(
    measures: list[MeasureInfo],
    *,
    fiscal_year: int,
    count: int,
    seed: int,
    corrections: float = 0.15,
    measure_ids: list[str] | None = None,
    quarter: int | None = None,
    now: datetime | None = None,
) -> list[Report]:
    """`count` valid reports over the four quarters of `fiscal_year` (or one `quarter`), in random order.

    Past quarters by default; with `now`, reports on the quarter under way, claimed minutes before `now`.

    Most name a (quarter, measure, agency) no other report names; a share are later or earlier reports on
    a slot already used, so which one is effective depends on reported_at, never on arrival.
    """
    rng = random.Random(seed)
    quarters = (quarter,) if quarter is not None else (1, 2, 3, 4)
    slots = [(q, m.id, a) for q in quarters for m in measures for a in m.leads]
    if measure_ids is not None:
        slots = [s for s in slots if s[1] in measure_ids]
    rng.shuffle(slots)
    fresh = max(1, round(count * (1 - corrections)))
    chosen = slots[: min(fresh, len(slots))]
    while len(chosen) < count:
        chosen.append(rng.choice(chosen[:fresh]))
    reports = []
    for q, measure_id, agency in chosen:
        if now is not None:
            # Claimed a few minutes before it is sent (ingest allows no claim ahead of the broker's clock).
            moment = now - timedelta(seconds=rng.randint(60, 900))
        else:
            # A past quarter's report, received long after its on-time deadline (quarter end + 30 days) whatever it
            # claims: its claim is also well after the deadline, so that timeliness never depends on which of the
            # two a reader judges by (the fault suite is about counting; tests/hostile holds backdated claims).
            last = quarter_last_day(fiscal_year, q)
            days = rng.randint(45, 80)
            moment = datetime.combine(last, time(12), JST) + timedelta(days=days, seconds=rng.randint(0, 86_000))
        reports.append(
            Report(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                measure_id=measure_id,
                agency=agency,
                fiscal_year=fiscal_year,
                quarter=q,
                status=rng.choice(STATUSES),
                reported_at=moment,
            )
        )
    rng.shuffle(reports)
    return reports


def clearly_refused(error: BaseException) -> bool:
    """Whether a failed publish told the publisher it was not stored: an error answer of JetStream (a stream full,
    a quorum lost: `APIError`) or no stream to take it at all (no responders). A timeout or a dropped connection
    says nothing: the report may or may not be stored, and only a resend can tell."""
    return isinstance(error, nats.js.errors.APIError | nats.js.errors.NoStreamResponseError | NoRespondersError)


@dataclass
class Outcome:
    """What the publishers got: acknowledged reports, and for the others whether the platform said no clearly."""

    acked: dict[str, Report] = field(default_factory=dict)
    #: When each report was first acknowledged (time.monotonic()).
    acked_at: dict[str, float] = field(default_factory=dict)
    sent: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    duplicates_sent: int = 0
    first_failure: str | None = None
    #: Reports never acknowledged whose last attempt was clearly refused (the publisher knows to send again).
    refused: dict[str, Report] = field(default_factory=dict)
    #: Reports never acknowledged whose last attempt got no clear answer: an availability failure.
    unanswered: dict[str, Report] = field(default_factory=dict)

    def note_failure(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"[:200]
        self.failures[type(error).__name__] += 1
        if self.first_failure is None:
            self.first_failure = text

    def settle(self, reports: list[Report], last_error: dict[str, BaseException]) -> None:
        """Sort the reports of one `publish_all` that were never acknowledged into refused and unanswered."""
        for r in reports:
            if r.event_id in self.acked:
                self.refused.pop(r.event_id, None)
                self.unanswered.pop(r.event_id, None)
                continue
            error = last_error.get(r.event_id)
            if error is not None and clearly_refused(error):
                self.refused[r.event_id] = r
                self.unanswered.pop(r.event_id, None)
            else:
                self.unanswered[r.event_id] = r
                self.refused.pop(r.event_id, None)


class Publishers:
    """One nats-py connection per agency (its own user and inbox), publishing with JetStream PubAcks."""

    def __init__(self, nats_url: str, passwords: dict[str, str], *, timeout: float = 2.0) -> None:
        self.nats_url = nats_url
        self.passwords = passwords
        self.timeout = timeout
        self._connections: dict[str, Client] = {}
        self.errors: list[str] = []

    async def connection(self, agency: str) -> Client:
        nc = self._connections.get(agency)
        if nc is None or nc.is_closed:

            async def error_cb(e: Exception) -> None:
                self.errors.append(f"{agency}: {e}")

            nc = await nats.connect(
                servers=self.nats_url.split(","),
                user=agency,
                password=self.passwords[agency],
                inbox_prefix=agency_inbox_prefix(agency),
                name=f"fault-{agency}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=error_cb,
            )
            self._connections[agency] = nc
        return nc

    async def publish(self, report: Report, *, timeout: float | None = None) -> PubAck:
        nc = await self.connection(report.agency)
        ack: PubAck = await nc.jetstream().publish(
            report.subject, report.body(), stream=publish_stream(report.subject), timeout=timeout or self.timeout
        )
        return ack

    async def close(self) -> None:
        for nc in self._connections.values():
            with contextlib.suppress(Exception):
                await nc.close()
        self._connections.clear()

    async def __aenter__(self) -> Publishers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish_all(
        self,
        reports: list[Report],
        *,
        rate: float,
        concurrency: int = 32,
        deadline: float = 90.0,
        on_progress: Callable[[int], Awaitable[None]] | None = None,
        copies: int = 1,
        first_timeout: float | None = None,
        outcome: Outcome | None = None,
    ) -> Outcome:
        """Publish every report at about `rate`/s (each `copies` times at once); retry failures until `deadline` s.

        `on_progress(acked)` is awaited after each acknowledgement (to inject a fault mid-load). With
        `first_timeout`, a report's first attempt gives up that early (a client impatient for its PubAck), so its
        resend overlaps the copy still in flight.
        """
        out = outcome or Outcome()
        queue: asyncio.Queue[Report] = asyncio.Queue()
        for r in reports:
            queue.put_nowait(r)
        started = clock.monotonic()
        stop_at = started + deadline
        issued = 0
        pending: set[str] = {r.event_id for r in reports}
        attempts: Counter[str] = Counter()
        last_error: dict[str, BaseException] = {}

        async def one(report: Report) -> None:
            nonlocal issued
            # Pace the offered load: report n leaves no earlier than n / rate seconds after the start.
            issued += 1
            delay = started + issued / rate - clock.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            out.sent += copies
            out.duplicates_sent += copies - 1 + (1 if attempts[report.event_id] else 0)
            timeout = first_timeout if first_timeout is not None and not attempts[report.event_id] else None
            attempts[report.event_id] += 1
            results = await asyncio.gather(
                *(self.publish(report, timeout=timeout) for _ in range(copies)), return_exceptions=True
            )
            if any(not isinstance(x, BaseException) for x in results):
                if report.event_id in pending:
                    pending.discard(report.event_id)
                    out.acked[report.event_id] = report
                    out.acked_at.setdefault(report.event_id, clock.monotonic())
                    if on_progress is not None:
                        await on_progress(len(out.acked))
                return
            for x in results:
                if isinstance(x, BaseException):
                    out.note_failure(x)
                    last_error[report.event_id] = x
            if clock.monotonic() < stop_at:
                await asyncio.sleep(0.2)
                queue.put_nowait(report)  # the very same bytes again

        async def worker() -> None:
            while pending and clock.monotonic() < stop_at:
                try:
                    report = queue.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.02)
                    continue
                await one(report)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.settle(reports, last_error)
        return out


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = clock.monotonic() + timeout
    while True:
        if await predicate():
            return
        if clock.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def as_dict(report: Report) -> dict[str, Any]:
    return {"event_id": report.event_id, "measure_id": report.measure_id, "agency": report.agency}
