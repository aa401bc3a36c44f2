"""`shinchoku rollup FY Q`: a quarter's rollup from the reporting service, as tables, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from shinchoku.commands.agencyarg import require_agency
from shinchoku.rollup_view import RollupSliceNotFound, render_rollup, select_slice
from shinchoku.stack import Stack
from shinchoku.stackhttp import StackUnavailable, detail, get, load_stack

err = Console(stderr=True, highlight=False)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def fetch_rollup(stack: Stack, fiscal_year: int, quarter: int, token: str | None = None) -> dict[str, Any]:
    """GET /rollups/{fy}/{q}; StackUnavailable when the stack does not answer, ValueError on a 4xx."""
    response = get(stack, "reporting", f"/rollups/{fiscal_year}/{quarter}", token=token)
    if response.status_code != 200:
        raise ValueError(f"reporting answered {response.status_code}: {detail(response)}")
    body: dict[str, Any] = response.json()
    return body


def filter_csv(content: bytes, scope: str, key: str) -> bytes:
    """The header and the rows of one scope (`agency`/`section` and its key) of the rollup CSV, same encoding."""
    bom = content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    if not rows:
        return content
    header = rows[0]
    try:
        scope_col, key_col = header.index("scope"), header.index("key")
    except ValueError:
        return content
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(r for r in rows[1:] if len(r) > key_col and r[scope_col] == scope and r[key_col] == key)
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8")


def check_agency(agency: str | None) -> str | None:
    if agency is not None:
        require_agency(agency)
    return agency


def rollup(
    fiscal_year: Annotated[int, typer.Argument(help="Japanese fiscal year (April start), e.g. 2025")],
    quarter: Annotated[int, typer.Argument(min=1, max=4, help="Quarter 1–4 (Q1 = Apr–Jun)")],
    agency: Annotated[str | None, typer.Option(help="Only this agency's measures (agency code, e.g. mof)")] = None,
    section: Annotated[int | None, typer.Option(min=1, max=6, help="Only this section of the plan (1–6)")] = None,
    output: Annotated[Format, typer.Option("--format", help="table, json (raw API answer) or csv")] = Format.table,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token (default $SHINCHOKU_TOKEN, else one minted from the data directory)"),
    ] = None,
) -> None:
    """Show the rollup of a fiscal quarter: status counts, coverage and on-time rates, by agency and by section."""
    check_agency(agency)
    if agency is not None and section is not None:
        err.print("[red]Give --agency or --section, not both.[/]")
        raise typer.Exit(2)
    try:
        stack = load_stack(data_dir)
        if output is Format.csv:
            params = {"format": "csv"}
            response = get(stack, "reporting", f"/rollups/{fiscal_year}/{quarter}", params=params, token=token)
            if response.status_code != 200:
                raise ValueError(f"reporting answered {response.status_code}: {detail(response)}")
            # Byte for byte, BOM included: `> rollup.csv` opens in Excel as the service meant it.
            content = response.content
            if agency is not None or section is not None:
                content = filter_csv(content, "agency" if agency else "section", agency or str(section))
            sys.stdout.flush()
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
            return
        body = fetch_rollup(stack, fiscal_year, quarter, token)
    except StackUnavailable as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    except ValueError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    try:
        if output is Format.json:
            part = select_slice(body, agency=agency, section=str(section) if section else None)
            sys.stdout.write(json.dumps(part, ensure_ascii=False, indent=2) + "\n")
            return
        out = Console(highlight=False)
        view = render_rollup(body, agency=agency, section=str(section) if section else None, width=out.width)
    except RollupSliceNotFound as e:
        err.print(f"[red]{e.args[0]}[/]")
        raise typer.Exit(1) from None
    out.print(view)


def register(app: typer.Typer) -> None:
    app.command("rollup")(rollup)
