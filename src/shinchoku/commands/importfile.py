"""`shinchoku import FILE --agency A [--dry-run] [--backfill]`: bulk status reports from a workbook or a CSV export.

The reading, checking and sending are the ministry client's (`shinchoku_client.importing`): a workbook
(.xlsx, e.g. `shinchoku template`'s, filled in) or a CSV export (UTF-8 with or without BOM, or
Shift_JIS/CP932) with Japanese or English headers and labels. Every row is checked against contract v1
before anything is sent, and every error names its sheet, row and column (`報告!E7 状況 (status): …`);
`--dry-run` also judges each row with ingest's own admission rules against the catalog and sends nothing.
The exit code is 1 when any row failed. This command adds what the platform's CLI knows: the running stack's
addresses and credentials, a progress bar, and `--backfill`.

`--backfill` migrates an agency's history: the same rows are sent by the secretariat (its NATS user and its
bearer token) on `backfill.{agency}.{measure_id}`; ingest admits them under the same rules, marked
`backfilled` wherever they appear.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from contracts.agencies import Agency
from shinchoku.commands.agencyarg import require_agency

if TYPE_CHECKING:  # the NATS, HTTP and workbook libraries load when the verb runs (every other verb starts faster)
    from shinchoku_client.importing import Loaded
    from shinchoku_client.publisher import AgencyPublisher, SecretariatPublisher
    from shinchoku_client.rows import Outcome

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

#: A backfill's locally minted token lasts the whole import (ingest judges it when each row arrives).
BACKFILL_TOKEN_TTL = timedelta(hours=1)


def print_errors(outcome: Outcome, file: Path) -> None:
    """One line per failing row, in row order: `sheet!cell column: problem`."""
    err.print(f"[bold]{escape(file.name)}: rows that failed[/]")
    for e in sorted(outcome.errors, key=lambda e: e.line):
        err.print(f"  {escape(str(e))}", soft_wrap=True)


async def _publish_all(
    loaded: Loaded,
    outcome: Outcome,
    publisher: AgencyPublisher | SecretariatPublisher,
    token: str | None,
) -> int:
    from shinchoku_client.importing import send
    from shinchoku_client.publisher import Sent

    with Progress(
        TextColumn("[bold]publishing[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task("publish", total=len(outcome.events))

        def sent(_: Sent) -> None:
            progress.advance(task)

        async with publisher:
            return await send(loaded, outcome, publisher, token=token, on_sent=sent)


def import_reports(
    file: Annotated[
        Path,
        typer.Argument(help="Workbook (.xlsx) or CSV export (UTF-8 with or without BOM, or Shift_JIS)", exists=True),
    ],
    agency: Annotated[str, typer.Option(help="Agency code the reports are sent as, e.g. mof")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every row against the contract and the catalog; send nothing")
    ] = False,
    reported_at: Annotated[
        str | None,
        typer.Option(
            help="reported_at for rows without one (RFC 3339; no offset = Japan time; a workbook's default: when "
            "it was saved)"
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    nats_url: Annotated[
        str | None, typer.Option(help="NATS URL (nats://AGENCY:PASSWORD@host:port) instead of the stack's")
    ] = None,
    backfill: Annotated[
        bool,
        typer.Option("--backfill", help="Migrate AGENCY's history: sent by the secretariat, marked backfilled"),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token (default $SHINCHOKU_TOKEN, else minted locally): the agency's, or with "
            "--backfill the secretariat's"
        ),
    ] = None,
) -> None:
    """Send one status report per row of a workbook or CSV file as AGENCY (Japanese headers and labels accepted);
    every error names its sheet, row and column. With --backfill, the secretariat sends them as AGENCY's past
    reports."""
    from shinchoku_client.cells import CellError, parse_reported_at
    from shinchoku_client.csvfile import ImportFileError
    from shinchoku_client.importing import load_reports, validate

    code = require_agency(agency)
    try:
        explicit = parse_reported_at(reported_at) if reported_at else None
        loaded = load_reports(file)
    except (ImportFileError, CellError) as e:
        err.print(f"[red]{escape(str(e.args[0] if isinstance(e, CellError) else e))}[/]")
        raise typer.Exit(2) from None
    err.print(
        f"{file.name}: {loaded.kind}, {len(loaded.sheet.rows)} row(s); columns: "
        + ", ".join(f"{c.header}→{c.field}" for c in loaded.sheet.columns)
    )
    if loaded.sheet.ignored_headers:
        err.print(f"[yellow]ignored columns:[/] {escape(', '.join(loaded.sheet.ignored_headers))}")
    outcome = validate(loaded, agency=code, reported_at=explicit)
    for line, same in outcome.duplicates:
        err.print(f"[dim]row {line} is the same report as row {same}: sent once[/]")
    if dry_run:
        _dry_run(loaded, outcome, code, data_dir, token)
    _send(loaded, outcome, code, data_dir=data_dir, nats_url=nats_url, backfill=backfill, token=token)


def _dry_run(loaded: Loaded, outcome: Outcome, code: Agency, data_dir: Path | None, token: str | None) -> None:
    from shinchoku.stackhttp import StackUnavailable, agency_api
    from shinchoku_client.api import ApiError
    from shinchoku_client.importing import judge

    async def check() -> None:
        async with agency_api(data_dir, code.value, token) as api:
            await judge(loaded, outcome, api)

    try:
        asyncio.run(check())
    except (StackUnavailable, ApiError) as e:
        if outcome.errors:
            print_errors(outcome, loaded.path)
        err.print(f"[red]cannot check against the catalog: {escape(str(e))}[/]")
        raise typer.Exit(1) from None
    if outcome.errors:
        print_errors(outcome, loaded.path)
    console.print(
        f"dry run: {len(outcome.events)} row(s) would be admitted, {outcome.failed_rows} row(s) have errors; "
        "nothing was sent"
    )
    raise typer.Exit(1 if outcome.errors else 0)


def _send(
    loaded: Loaded,
    outcome: Outcome,
    code: Agency,
    *,
    data_dir: Path | None,
    nats_url: str | None,
    backfill: bool,
    token: str | None,
) -> None:
    from shinchoku.stack import Stack, StackNotFound
    from shinchoku_client.publisher import AgencyPublisher, SecretariatPublisher

    publisher: AgencyPublisher | SecretariatPublisher
    backfill_token: str | None = None
    if backfill:
        from shinchoku.commands.secretariat import secretariat

        sender = secretariat(data_dir, nats_url, token, ttl=BACKFILL_TOKEN_TTL)
        publisher = SecretariatPublisher(sender.url, password=sender.password)
        backfill_token = sender.token
    else:
        password: str | None = None
        url = nats_url
        if url is None:
            try:
                stack = Stack.load(data_dir)
                url, password = stack.nats_plain_url, stack.password(code.value)
            except StackNotFound as e:
                err.print(f"[red]{escape(str(e))}[/]")
                raise typer.Exit(1) from None
        publisher = AgencyPublisher(url, agency=code, password=password)
    published = asyncio.run(_publish_all(loaded, outcome, publisher, backfill_token)) if outcome.events else 0
    if outcome.errors:
        print_errors(outcome, loaded.path)
    sent_as = f"backfilled report(s) of {code.value} as the secretariat" if backfill else f"report(s) as {code.value}"
    console.print(
        f"published {published} {sent_as}; {outcome.failed_rows} row(s) failed. Ingest decides each one: "
        f"rejections are listed at GET /rejections?agency={code.value} on the ingest service"
    )
    raise typer.Exit(1 if outcome.errors else 0)


def register(app: typer.Typer) -> None:
    app.command("import")(import_reports)
