"""`shinchoku report …`: publish one status report as an agency, and say how to follow it.

    shinchoku report --agency mof --measure 1-25 --fy 2024 --quarter 3 --status on_track --progress 45 \\
        --kpi 0=62.5@2024-12-31 --note "申告手続の利用率は前年同期比で上昇"

Credentials come from the running stack (`--data-dir`), or from `--nats-url nats://AGENCY:PASSWORD@host:port`.
The command prints the event id and JetStream's acknowledgement; ingest then admits or rejects the report:
`GET /events/{id}` on the ingest service, or `shinchoku trace {id}`, tells which (`--wait` waits for it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from contracts.agencies import Agency
from contracts.events import StatusEvent
from shinchoku.commands.agencyarg import require_agency
from shinchoku_client.cells import (
    CellError,
    parse_kpi,
    parse_measure_id,
    parse_reported_at,
    parse_status,
)

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def build_report(
    *,
    agency: Agency,
    measure: str,
    fiscal_year: int,
    quarter: int,
    status: str,
    progress: float | None,
    note: str | None,
    kpis: list[str],
    reporter: str | None,
    reported_at: str | None,
    event_id: str | None,
) -> StatusEvent:
    """The report from the command line's words; ValueError with a message naming the option at fault."""
    try:
        values: dict[str, Any] = {
            "event_id": uuid.UUID(event_id) if event_id else uuid.uuid4(),
            "measure_id": parse_measure_id(measure),
            "agency": agency,
            "fiscal_year": fiscal_year,
            "quarter": quarter,
            "status": parse_status(status),
            "progress": progress,
            "kpis": [parse_kpi(k) for k in kpis],
            "note": note,
            "reporter": reporter,
            "reported_at": parse_reported_at(reported_at) if reported_at else datetime.now(UTC),
        }
    except CellError as e:
        option = {"measure_id": "--measure", "kpis": "--kpi"}.get(e.field, f"--{e.field.replace('_', '-')}")
        raise ValueError(f"{option}: {e.message}") from None
    except ValueError:
        raise ValueError(f"--event-id: {event_id!r} is not a UUID") from None
    try:
        return StatusEvent.model_validate(values)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in e.errors())
        raise ValueError(problems) from None


def _cli_tracing(data_dir: Path | None) -> Any:
    """A tracer provider writing this client's spans where `shinchoku trace` finds them (or to OTLP)."""
    from shinchoku_runtime.telemetry import init_tracing

    return init_tracing("shinchoku-cli", data_dir)


async def _publish(url: str, agency: Agency, password: str | None, event: StatusEvent, provider: Any) -> Any:
    from shinchoku_client.publisher import AgencyPublisher

    async with AgencyPublisher(url, agency=agency, password=password, tracer_provider=provider) as publisher:
        return await publisher.publish(event)


def _wait_for_decision(data_dir: Path | None, event_id: str, timeout: float) -> dict[str, Any] | None:
    from shinchoku.stackhttp import StackUnavailable, get, load_stack

    try:
        stack = load_stack(data_dir)
    except StackUnavailable:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = get(stack, "ingest", f"/events/{event_id}")
        except StackUnavailable:
            return None
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        time.sleep(0.2)
    return None


def report(
    agency: Annotated[str, typer.Option(help="Agency code the report is sent as, e.g. mof", show_default=False)],
    measure: Annotated[str, typer.Option(help="Measure number, e.g. 1-25", show_default=False)],
    fy: Annotated[int, typer.Option(help="Fiscal year (April start), e.g. 2024", show_default=False)],
    quarter: Annotated[int, typer.Option(help="Quarter reported on, 1–4", show_default=False)],
    status: Annotated[
        str,
        typer.Option(
            help="not_started, on_track, at_risk, delayed, completed, suspended (or 順調, 遅延, 完了 …)",
            show_default=False,
        ),
    ],
    progress: Annotated[float | None, typer.Option(help="Overall progress in percent, 0–100")] = None,
    note: Annotated[str | None, typer.Option(help="Free text, at most 4000 characters")] = None,
    kpi: Annotated[
        list[str] | None, typer.Option(help="TARGET=VALUE@DATE, e.g. 0=62.5@2024-12-31 (repeatable)")
    ] = None,
    reporter: Annotated[str | None, typer.Option(help="Who reports (at most 200 characters)")] = None,
    reported_at: Annotated[
        str | None, typer.Option(help="RFC 3339 time of the report (default now; no offset = Japan time)")
    ] = None,
    event_id: Annotated[
        str | None, typer.Option(help="Idempotency key (UUID): reuse it to resend the same report safely")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    nats_url: Annotated[
        str | None, typer.Option(help="NATS URL with the agency's credentials instead of the stack's")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for ingest's decision and print it")] = False,
) -> None:
    """Publish one status report as AGENCY and print its event id and JetStream acknowledgement."""
    from shinchoku.stack import Stack, StackNotFound
    from shinchoku_client.publisher import PublishError

    code = require_agency(agency)
    try:
        event = build_report(
            agency=code,
            measure=measure,
            fiscal_year=fy,
            quarter=quarter,
            status=status,
            progress=progress,
            note=note,
            kpis=kpi or [],
            reporter=reporter,
            reported_at=reported_at,
            event_id=event_id,
        )
    except ValueError as e:
        err.print(f"[red]Not a valid report:[/] {escape(str(e))}")
        raise typer.Exit(2) from None

    password: str | None = None
    url = nats_url
    ingest_url = "http://127.0.0.1:8002"
    if url is None:
        try:
            stack = Stack.load(data_dir)
            url, password = stack.nats_plain_url, stack.password(code.value)
            ingest_url = stack.http.get("ingest", ingest_url)
        except StackNotFound as e:
            err.print(f"[red]{escape(str(e))}[/] (or pass --nats-url nats://{code.value}:PASSWORD@host:port)")
            raise typer.Exit(1) from None
    provider = _cli_tracing(data_dir if nats_url is None else None)
    try:
        ack = asyncio.run(_publish(url, code, password, event, provider))
    except (PublishError, OSError) as e:
        err.print(f"[red]Not published:[/] {escape(str(e))}")
        raise typer.Exit(1) from None
    finally:
        provider.shutdown()
    print(event.event_id)  # noqa: T201 - alone on stdout, for scripts
    duplicate = " (duplicate)" if ack.duplicate else ""
    err.print(
        f"published as {code.value} on status.{code.value}.{event.measure_id}: {ack.stream} seq {ack.seq}{duplicate}"
    )
    err.print(
        f"[dim]ingest decides it: GET {ingest_url}/events/{event.event_id}  or  shinchoku trace {event.event_id}[/]"
    )
    if wait:
        decided = _wait_for_decision(data_dir if nats_url is None else None, str(event.event_id), timeout=15)
        if decided is None:
            err.print("[yellow]no decision from ingest yet[/]")
            raise typer.Exit(1)
        if decided["outcome"] == "admitted":
            console.print(f"[green]admitted[/] at {decided.get('admitted_at')}")
        else:
            console.print(f"[red]rejected: {decided.get('reason')}[/] — {escape(str(decided.get('message')))}")
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
