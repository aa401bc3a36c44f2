"""Running the demo against a stack: publish as the 17 agencies, wait for the services, show the latest rollup.

The history (reports for quarters whose on-time deadline has passed) goes in as the secretariat's backfill, the
marked path for migrating past reports (DESIGN.md "The reporting cycle"): on-time is judged by when the platform
received a report, so history sent today as ordinary reports would all count late. Each backfilled report is
judged by its `reported_at` and marked `backfilled`. The open quarter's reports, and every rejection, go as
the agencies themselves.

Kept apart from `shinchoku.commands.demo` so that every other verb starts without importing NATS and the
OpenTelemetry SDK.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import typer
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.catalog import Measure
from contracts.events import StatusEvent
from contracts.periods import FiscalQuarter, last_completed_quarter
from contracts.streams import ACCEPTED_STREAM, INGEST_DURABLE, REPORTING_DURABLE, STATUS_STREAM
from shinchoku.commands.rollup import fetch_rollup
from shinchoku.demo_cycle import (
    CyclePlan,
    CycleSummary,
    admitted_ids,
    already_rejected,
    closed_quarters,
    plan_cycle,
    play_cycle,
)
from shinchoku.demo_plan import ADMITTED, DUPLICATE, DemoMessage, expected_outcomes, plan_demo
from shinchoku.issuer import local_token
from shinchoku.rollup_view import render_rollup
from shinchoku.stack import Stack, StackNotFound
from shinchoku.stackhttp import StackUnavailable, detail, get, load_stack
from shinchoku_client.publisher import AgencyPublisher, PublishError, SecretariatPublisher
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.telemetry import init_tracing

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

#: Reports in flight at once (each waits for its JetStream ack).
WINDOW = 256


def fetch_measures(stack: Stack) -> list[Measure]:
    """The registry from the catalog's HTTP API."""
    response = get(stack, "catalog", "/measures", params={"limit": 1000})
    if response.status_code != 200:
        raise StackUnavailable(f"catalog answered {response.status_code}: {detail(response)}")
    return [Measure.model_validate(item) for item in response.json()["items"]]


@dataclass(frozen=True)
class _History:
    """The secretariat's publisher and token for backfilling reports of quarters past their deadline."""

    publisher: SecretariatPublisher
    token: str
    now: datetime

    def takes(self, message: DemoMessage) -> StatusEvent | None:
        """The report, when the message is a well-formed report of a quarter past its on-time deadline."""
        if message.expect not in (ADMITTED, DUPLICATE):
            return None
        event = StatusEvent.model_validate_json(message.payload)
        deadline = FiscalQuarter(event.fiscal_year, event.quarter).on_time_deadline
        return event if deadline < self.now else None


async def _publish_phase(
    publishers: dict[str, AgencyPublisher],
    messages: Sequence[DemoMessage],
    advance: Callable[[], None],
    history: _History | None,
) -> None:
    window = asyncio.Semaphore(WINDOW)

    async def one(message: DemoMessage) -> None:
        publisher = publishers[message.agency]
        async with window:
            past = history.takes(message) if history is not None else None
            if history is not None and past is not None:
                await history.publisher.publish_backfill(past, token=history.token)
            elif message.expect in (ADMITTED, DUPLICATE):
                # A well-formed report goes through the client's own path (trace attributes and all);
                # its bytes are the plan's bytes (the plan encodes as the client does).
                await publisher.publish(StatusEvent.model_validate_json(message.payload))
            else:
                await publisher.publish_raw(message.subject, message.payload)
        advance()

    await asyncio.gather(*(one(m) for m in messages))


async def publish(
    stack: Stack,
    messages: Sequence[DemoMessage],
    advance: Callable[[], None],
    tracer_provider: TracerProvider,
    *,
    now: datetime | None = None,
) -> None:
    """Each agency publishes its own messages with its own credentials, the history backfilled by the secretariat
    (module docstring); originals before resends and rejections."""
    publishers: dict[str, AgencyPublisher] = {}
    history: _History | None = None
    token = local_token(stack.data_dir)
    if token is None:
        err.print("[yellow]no embedded issuer here: the history goes in as ordinary reports (judged late)[/]")
    try:
        if token is not None:
            secretariat = SecretariatPublisher(
                stack.nats_plain_url, password=stack.password("secretariat"), timeout=10.0
            )
            await secretariat.connect()
            history = _History(secretariat, token, now or datetime.now(UTC))
        for agency in sorted({m.agency for m in messages}):
            publisher = AgencyPublisher(
                stack.nats_plain_url,
                agency=agency,
                password=stack.password(agency),
                timeout=10.0,
                tracer_provider=tracer_provider,
            )
            await publisher.connect()
            publishers[agency] = publisher
        # A resend must arrive after what it resends, or it would be the original.
        await _publish_phase(publishers, [m for m in messages if m.expect == ADMITTED], advance, history)
        await _publish_phase(publishers, [m for m in messages if m.expect != ADMITTED], advance, history)
    finally:
        for publisher in publishers.values():
            await publisher.close()
        if history is not None:
            await history.publisher.close()


async def pending_work(stack: Stack) -> dict[str, int] | None:
    """Messages ingest and reporting have yet to process (None while their consumers do not exist yet)."""
    nc = await connect(stack.nats_plain_url, name="shinchoku-demo-wait", user="admin", password=stack.password("admin"))
    try:
        js = nc.jetstream()
        out = {}
        for service, stream, durable in (
            ("ingest", STATUS_STREAM.name, INGEST_DURABLE),
            ("reporting", ACCEPTED_STREAM.name, REPORTING_DURABLE),
        ):
            try:
                info = await js.consumer_info(stream, durable)
            except NotFoundError:
                return None
            out[service] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return out
    finally:
        await nc.close()


def wait_caught_up(stack: Stack, progress: Progress, timeout: float = 180.0) -> bool:
    """Until ingest and reporting have nothing pending, twice in a row."""
    task = progress.add_task("ingest and reporting catching up", total=None)
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        pending = asyncio.run(pending_work(stack))
        if pending is not None:
            progress.update(
                task, description=f"catching up: ingest {pending['ingest']}, reporting {pending['reporting']}"
            )
            quiet = quiet + 1 if not any(pending.values()) else 0
            if quiet >= 2:
                progress.update(task, total=1, completed=1, description="ingest and reporting caught up")
                return True
        time.sleep(0.3)
    return False


async def settled(stack: Stack, timeout: float = 180.0) -> bool:
    """Until ingest and reporting have nothing pending, twice in a row (from inside a running loop)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        pending = await pending_work(stack)
        quiet = quiet + 1 if pending is not None and not any(pending.values()) else 0
        if quiet >= 2:
            return True
        await asyncio.sleep(0.3)
    return False


def _cycle_summary(summary: CycleSummary, plan: CyclePlan) -> Table:
    table = Table(title="the reporting cycle, as the secretariat (sent this run)", title_justify="left", box=None)
    table.add_column("what")
    table.add_column("", justify="right")
    table.add_row("history backfilled (FY2023Q4, marked)", str(summary.backfilled))
    table.add_row("first reports of the open quarter", str(summary.open_reports))
    table.add_row("reports accepted", str(summary.accepted))
    table.add_row("reports returned (差戻し), each answered", f"{summary.returned} / {summary.answered}")
    table.add_row("quarters closed and published", ", ".join(summary.closed) or "none")
    table.add_row("corrections after the close (restatements)", str(summary.restated))
    if summary.already:
        table.add_row(
            "already on the platform (an earlier run): not sent again", f"{summary.already} of {len(plan.ids())}"
        )
    return table


def _summary(messages: Sequence[DemoMessage]) -> Table:
    kinds = Counter(m.kind for m in messages)
    outcomes = expected_outcomes(messages)
    table = Table(title="published", title_justify="left", box=None)
    table.add_column("what")
    table.add_column("messages", justify="right")
    table.add_row("reports", str(kinds["report"]))
    table.add_row("corrections (a later report, another status)", str(kinds["correction"]))
    table.add_row("identical resends (admitted once)", str(outcomes[DUPLICATE]))
    for reason in sorted(k for k in outcomes if k not in (ADMITTED, DUPLICATE)):
        table.add_row(f"rejected as {reason}", str(outcomes[reason]))
    table.add_row("agencies", str(len({m.agency for m in messages})))
    return table


def not_yet_sent(stack: Stack, messages: Sequence[DemoMessage]) -> list[DemoMessage]:
    """The demo's messages the platform does not hold yet: a report (or resend) whose event_id is not on ACCEPTED, a
    deliberate rejection whose bytes ingest has not rejected on that subject. A second run on the same day
    sends nothing (every message of the demo has fixed bytes); without the embedded issuer (no token to ask
    with) everything is sent, and ingest admits nothing twice all the same."""
    token = local_token(stack.data_dir)
    admitted = asyncio.run(admitted_ids(stack))
    if token is None or admitted is None:
        return list(messages)
    rejected = already_rejected(stack, token) if any(m.kind == "rejection" for m in messages) else set()
    return [
        m
        for m in messages
        if ((m.subject, m.payload) not in rejected if m.kind == "rejection" else m.event_id not in admitted)
    ]


def _play(
    stack: Stack, measures: list[Measure], messages: Sequence[DemoMessage], seed: int, now: datetime
) -> tuple[CyclePlan, CycleSummary]:
    """Plan the cycle, ask the platform what of it is done, play the rest."""
    token = local_token(stack.data_dir)
    if token is None:
        raise RuntimeError("this data directory has no embedded issuer: the demo cannot act as the secretariat")
    plan = plan_cycle(measures, messages, seed=seed, now=now)
    done = asyncio.run(admitted_ids(stack)) or set()
    quarters = [FiscalQuarter(c.fiscal_year, c.quarter) for c in plan.closes]
    closed = closed_quarters(stack, quarters, token)
    summary = asyncio.run(play_cycle(stack, plan, wait=lambda: settled(stack), done=done, closed=closed))
    return plan, summary


def run_demo(data_dir: Path | None, seed: int, *, cycle: bool = True) -> None:
    """Publish FY2024Q1 → last completed quarter (reproducible), wait until caught up, then (`cycle`) play the
    reporting cycle (`shinchoku.demo_cycle`), and print the latest rollup. Idempotent: a second run on the same
    day adds nothing (same ids, same bytes; the cycle sends only what the platform has not decided)."""
    now = datetime.now(UTC)
    try:
        stack = load_stack(data_dir)
        measures = fetch_measures(stack)
        stack.password("admin")
    except (StackUnavailable, StackNotFound) as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    messages = plan_demo(measures, seed=seed, now=now)
    latest = last_completed_quarter(now)
    try:
        pending = not_yet_sent(stack, messages)
    except (httpx.HTTPError, StackUnavailable) as e:
        err.print(f"[red]cannot tell what the platform already holds: {e}[/] (is the stack running? `shinchoku up`)")
        raise typer.Exit(1) from None
    known = len(messages) - len(pending)
    console.print(
        f"Publishing {len(pending)} messages on {len(measures)} measures, FY2024Q1 → {latest.label} (seed {seed})"
        + (f"; {known} of the demo's {len(messages)} are on the platform already (an earlier run)" if known else "")
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("publishing as the 17 agencies", total=len(pending))
        # Each report's trace starts here: DATA_DIR/spans/shinchoku-demo.jsonl (or OTLP), for `shinchoku trace`.
        provider = init_tracing("shinchoku-demo", stack.data_dir)
        try:
            asyncio.run(publish(stack, pending, lambda: progress.advance(task), provider, now=now))
        except (OSError, NatsError, PublishError) as e:
            err.print(f"[red]publishing failed: {e}[/] (is the stack running? `shinchoku up`)")
            raise typer.Exit(1) from None
        finally:
            provider.shutdown()
        caught_up = wait_caught_up(stack, progress)
        played: tuple[CyclePlan, CycleSummary] | None = None
        if cycle:
            task = progress.add_task("the reporting cycle: backfill, reviews, closes, restatements", total=None)
            try:
                played = _play(stack, measures, messages, seed, now)
            except (OSError, NatsError, PublishError, RuntimeError, httpx.HTTPError, StackUnavailable) as e:
                err.print(f"[yellow]the reporting cycle was not played: {e}[/]")
            progress.update(task, total=1, completed=1)
    console.print(_summary(messages))
    if played is not None:
        console.print(_cycle_summary(played[1], played[0]))
    if not caught_up:
        err.print("[yellow]ingest or reporting is still busy: the rollup below may be incomplete[/]")
    try:
        rollup = fetch_rollup(stack, latest.fiscal_year, latest.quarter)
    except (StackUnavailable, ValueError) as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    console.print()
    console.print(render_rollup(rollup, breakdowns=False))
    dd = f" --data-dir {data_dir}" if data_dir else ""
    console.print(
        f"\n[dim]More: shinchoku rollup {latest.fiscal_year} {latest.quarter}{dd}  ·  "
        f"{stack.http['ingest']}/rejections  ·  {stack.http['reporting']}/[/]"
    )
