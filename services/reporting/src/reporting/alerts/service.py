"""The alerts' running parts inside the reporting process: when to evaluate, and what to publish and post.

- Evaluation runs when the store changed (`touched`, with the measures each committed batch and kept review
  touched) and on the clock (`tick_seconds`; the clock is injectable, Asia/Tokyo dates come from it), so
  `report_due` fires N days before the deadline with nobody reading anything. It waits until the store has caught
  up with ACCEPTED (the `reporting` consumer has nothing pending), so a restart that is still replaying never
  raises a transient alert; after `max_behind_seconds` of lag it evaluates anyway.
- A change is evaluated for the measures it touched only (every condition belongs to one measure): the cost of an
  evaluation follows the change, not the store. Every measure is evaluated at start, when `notify` says the store
  changed in ways nobody listed (a rebuild), when the Asia/Tokyo date changes (every deadline, due-from day and
  target due date falls at a Tokyo midnight, so that is when the clock alone changes what holds), when a report
  moves where the reports start (`conditions.Start`), and every `full_every_seconds` (what another replica committed and could
  not evaluate before it stopped).
- The secretariat's reviews are the reporting cycle's (its `reviews` table, applied by the `reporting` consumer in the
  log's order): a committed review wakes the evaluation like a report.
- The outbox is published on ALERTS, and posted to the webhook when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import Engine

from contracts.periods import FiscalQuarter, tokyo_date
from contracts.streams import ACCEPTED_STREAM, REPORTING_DURABLE
from reporting.alerts import store
from reporting.alerts.conditions import Start
from reporting.alerts.delivery import WebhookPoster, publish_pending
from reporting.alerts.evaluate import Evaluated, evaluate
from reporting.registry import CatalogView
from shinchoku_runtime.db import in_thread

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def fixed_clock(moment: datetime) -> Clock:
    """A clock stopped at `moment` (ReportingSettings.alert_clock: a demo of a past quarter)."""
    return lambda: moment


@dataclass(frozen=True)
class AlertSettings:
    due_days: int = 14
    tick_seconds: float = 30.0
    since: FiscalQuarter | None = None
    webhook_url: str | None = None
    webhook_first_retry: float = 0.5
    webhook_max_retry: float = 300.0
    max_behind_seconds: float = 60.0
    #: Least seconds between two evaluations (a busy store changes after every batch).
    min_interval: float = 1.0
    #: Every measure is evaluated at least this often, besides at start and when the Tokyo date changes.
    full_every_seconds: float = 300.0


#: At most this share of the process goes to evaluating alerts while the store keeps changing: under a steady load
#: every measure is touched each second, and an evaluation of them reads all their reports.
ALERT_DUTY: Final = 0.1


def pause_after(evaluation_seconds: float, min_interval: float) -> float:
    """How long to wait before the next evaluation: `min_interval`, or longer after a long evaluation, so that
    alerts take at most `ALERT_DUTY` of the time (they may come a little later; the readers and the consumer
    come first)."""
    return max(min_interval, evaluation_seconds * (1 - ALERT_DUTY) / ALERT_DUTY)


def clock_day(moment: datetime) -> date:
    """The Asia/Tokyo day whose conditions hold at `moment`: every clock boundary of the rules is a Tokyo midnight
    that a condition passes strictly after (`now > deadline`), so the instant of midnight still counts as the day
    before, and the first evaluation after it as the next day."""
    return tokyo_date(moment - timedelta(microseconds=1))


class AlertsService:
    def __init__(self, engine: Engine, catalog: CatalogView, settings: AlertSettings, *, clock: Clock = system_clock):
        self.engine = engine
        self.catalog = catalog
        self.settings = settings
        self.clock = clock
        self._changed = asyncio.Event()
        self._to_publish = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._webhook = (
            WebhookPoster(
                engine,
                settings.webhook_url,
                first_retry=settings.webhook_first_retry,
                max_retry=settings.webhook_max_retry,
            )
            if settings.webhook_url
            else None
        )
        #: How many evaluations committed changes (for health and tests).
        self.evaluations = 0
        #: How many evaluations looked at every measure, and at the touched measures only.
        self.full_evaluations = 0
        self.partial_evaluations = 0
        #: The measures changed since the last evaluation, and whether every measure needs evaluating.
        self._touched: set[str] = set()
        self._everything = True
        self._day: date | None = None
        self._last_full = 0.0
        self._start: Start | None = None

    def create_tables(self) -> None:
        store.create_tables(self.engine)

    def touched(self, measure_ids: Iterable[str], *, wake: bool = True) -> None:
        """These measures' reports or reviews changed: evaluate them soon (`wake=False`: at the next wake-up)."""
        self._touched.update(m for m in measure_ids if m)
        if wake:
            self._changed.set()

    def wake(self) -> None:
        """Evaluate what was touched now rather than at the next tick."""
        self._changed.set()

    def notify(self) -> None:
        """The store changed in ways nobody listed (a rebuild swapped it): evaluate every measure soon."""
        self._everything = True
        self._changed.set()

    def start(self, nc: Client) -> None:
        js = nc.jetstream()
        self._tasks += [
            asyncio.create_task(self._evaluate_loop(js), name="alerts-evaluate"),
            asyncio.create_task(self._publish_loop(js), name="alerts-publish"),
        ]
        if self._webhook is not None:
            self._tasks.append(asyncio.create_task(self._webhook_loop(), name="alerts-webhook"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks = []
        if self._webhook is not None:
            await self._webhook.close()

    # --- evaluation ----------------------------------------------------------------------------

    async def _caught_up(self, js: JetStreamContext) -> bool:
        try:
            info = await js.consumer_info(ACCEPTED_STREAM.name, REPORTING_DURABLE)
        except Exception:
            return False
        return not (info.num_pending or info.num_ack_pending)

    async def _evaluate_loop(self, js: JetStreamContext) -> None:
        behind_since: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.settings.tick_seconds)
            self._changed.clear()
            if not self.catalog.loaded or not self.catalog.snapshot.measures:
                continue
            if not await self._caught_up(js):
                behind_since = behind_since or time.monotonic()
                if time.monotonic() - behind_since < self.settings.max_behind_seconds:
                    await asyncio.sleep(0.2)
                    self._changed.set()
                    continue
            behind_since = None
            try:
                started = time.monotonic()
                await self.evaluate_pending()
                await asyncio.sleep(pause_after(time.monotonic() - started, self.settings.min_interval))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert evaluation failed; trying again")
                await asyncio.sleep(1)
                self._changed.set()

    def _full_due(self, now: datetime) -> bool:
        return (
            self._everything
            or self._day != clock_day(now)
            or time.monotonic() - self._last_full >= self.settings.full_every_seconds
        )

    async def evaluate_pending(self) -> int:
        """Evaluate what is due: every measure (see the module's docstring for when), else the touched ones."""
        now = self.clock()
        if self._full_due(now):
            return await self.evaluate_now()
        touched, self._touched = self._touched, set()
        if not touched:
            return 0
        try:
            result = await self._evaluate(now, only=touched)
        except BaseException:
            self._touched |= touched  # evaluated again next time
            raise
        if result is None:  # conflicts all along: leave them for the next round
            self._touched |= touched
            return 0
        if result.widened:
            return await self.evaluate_now()
        self.partial_evaluations += 1
        self._start = result.start
        return len(result.changes)

    async def evaluate_now(self) -> int:
        """Evaluate every measure once (again on a conflict with another replica); returns how many alerts
        changed."""
        now = self.clock()
        self._everything, self._touched = False, set()
        started = time.monotonic()
        try:
            result = await self._evaluate(now, only=None)
        except BaseException:
            self._everything = True
            raise
        if result is None:
            self._everything = True
            return 0
        self.full_evaluations += 1
        self._day, self._last_full, self._start = clock_day(now), started, result.start
        return len(result.changes)

    async def _evaluate(self, now: datetime, *, only: set[str] | None) -> Evaluated | None:
        for _ in range(5):
            result = await in_thread(
                evaluate,
                self.engine,
                measures=self.catalog.snapshot.measures,
                now=now,
                since=self.settings.since,
                due_days=self.settings.due_days,
                only=only,
                start=self._start,
            )
            if not result.conflict:
                if result.changes:
                    self.evaluations += 1
                    self._to_publish.set()
                return result
            await asyncio.sleep(0.1)
        return None

    # --- delivery ------------------------------------------------------------------------------

    async def _publish_loop(self, js: JetStreamContext) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._to_publish.wait(), timeout=1.0)
            self._to_publish.clear()
            try:
                await publish_pending(self.engine, js)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS or the database away: the outbox keeps them
                log.warning("could not publish alerts (%s: %s); retrying", type(e).__name__, e)
                await asyncio.sleep(1)

    async def _webhook_loop(self) -> None:
        assert self._webhook is not None
        while True:
            try:
                await self._webhook.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery failed; retrying")
            await asyncio.sleep(0.25)
