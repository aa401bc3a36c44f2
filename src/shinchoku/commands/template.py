"""`shinchoku template --agency A --fy FY --quarter Q [-o FILE]`: the report workbook of one agency and quarter.

One row per measure the agency leads, prefilled from the catalog (number, title, targets) and from reporting
(the agency's own status and progress of the quarter before), with the quarter's on-time deadline; the clerk
fills in the yellow columns (status from a drop-down of the six statuses in Japanese) and sends it back with
`shinchoku import FILE --agency A` (see `shinchoku_client.workbook`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from contracts.periods import FiscalQuarter
from shinchoku.commands.agencyarg import require_agency

err = Console(stderr=True, highlight=False)


def template(
    agency: Annotated[str, typer.Option(help="Agency code, e.g. mof", show_default=False)],
    fy: Annotated[int, typer.Option(help="Fiscal year (April start), e.g. 2025", show_default=False)],
    quarter: Annotated[int, typer.Option(min=1, max=4, help="Quarter to report on, 1–4", show_default=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Workbook to write (default: standard output)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    token: Annotated[
        str | None, typer.Option(help="The agency's bearer token (default $SHINCHOKU_TOKEN, else minted locally)")
    ] = None,
) -> None:
    """Write AGENCY's report workbook (.xlsx) for a quarter: its measures prefilled, last quarter's status and
    progress, a status drop-down, the deadline, and instructions in Japanese and English."""
    from shinchoku.stackhttp import StackUnavailable, agency_api
    from shinchoku_client.api import ApiError
    from shinchoku_client.importing import template_data
    from shinchoku_client.workbook import write_template

    code = require_agency(agency)
    try:
        period = FiscalQuarter(fy, quarter)
    except ValueError as e:
        err.print(f"[red]--fy {fy} --quarter {quarter}: {escape(str(e))}[/]")
        raise typer.Exit(2) from None
    if output is None and sys.stdout.isatty():
        err.print("[red]A workbook is binary:[/] redirect it (`> reports.xlsx`) or pass -o reports.xlsx")
        raise typer.Exit(2)

    async def fetch() -> bytes:
        async with agency_api(data_dir, code.value, token) as api:
            return write_template(await template_data(api, period))

    try:
        content = asyncio.run(fetch())
    except (StackUnavailable, ApiError) as e:
        err.print(f"[red]{escape(str(e))}[/]")
        raise typer.Exit(1) from None
    if output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(content)
    err.print(
        f"{code.value} {period.label}: template written{f' to {escape(str(output))}' if output else ''}; fill in the "
        f"yellow columns, then `shinchoku import FILE --agency {code.value} --dry-run`"
    )


def register(app: typer.Typer) -> None:
    app.command("template")(template)
