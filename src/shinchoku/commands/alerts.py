"""`shinchoku alerts [--agency A] [--kind K] [--state raised|resolved]`: what needs doing, from reporting's
`GET /alerts` (as the secretariat by default: a token minted from the data directory, or `--token` /
`SHINCHOKU_TOKEN`)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from contracts.alerts import AlertKind
from shinchoku.commands.agencyarg import require_agency
from shinchoku.issuer import bearer_headers
from shinchoku.stackhttp import StackUnavailable, detail, get, load_stack

err = Console(stderr=True, highlight=False)


class State(StrEnum):
    raised = "raised"
    resolved = "resolved"


class Format(StrEnum):
    table = "table"
    json = "json"


def fetch_alerts(
    data_dir: Path | None, *, agency: str | None, kind: str | None, state: str | None, token: str | None, limit: int
) -> dict[str, Any]:
    stack = load_stack(data_dir)
    params = {"agency": agency, "kind": kind, "state": state, "limit": limit}
    response = get(stack, "reporting", "/alerts", params=params, headers=bearer_headers(stack.data_dir, token))
    if response.status_code != 200:
        raise ValueError(f"reporting answered {response.status_code} for /alerts: {detail(response)}")
    body: dict[str, Any] = response.json()
    return body


def alerts_table(items: list[dict[str, Any]], *, english: bool) -> Table:
    table = Table(show_lines=False, expand=True)
    for name in ("state", "kind", "agency", "measure", "quarter", "since", "what to do"):
        table.add_column(name, overflow="fold", ratio=4 if name == "what to do" else None)
    for a in items:
        quarter = f"FY{a['fiscal_year']}Q{a['quarter']}" if a["quarter"] else ""
        since = (a["resolved_at"] or a["raised_at"])[:16].replace("T", " ")
        style = "bold red" if a["state"] == "raised" else "dim"
        table.add_row(
            a["state"],
            a["kind"],
            a["agency"],
            a["measure_id"] or "",
            quarter,
            since,
            a["message_en"] if english else a["message_ja"],
            style=style,
        )
    return table


def alerts(
    agency: Annotated[str | None, typer.Option(help="Only this agency's alerts (agency code, e.g. mof)")] = None,
    kind: Annotated[AlertKind | None, typer.Option(help="Only this kind")] = None,
    state: Annotated[State | None, typer.Option(help="raised (still to do) or resolved")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, latest first")] = 100,
    english: Annotated[bool, typer.Option("--english", help="Messages in English (default: Japanese)")] = False,
    output: Annotated[Format, typer.Option("--format", help="table, or json (the API's answer)")] = Format.table,
    token: Annotated[str | None, typer.Option(help="Bearer token (default: $SHINCHOKU_TOKEN, else minted)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
) -> None:
    """List alerts: reports due or missing, returned reports, overdue targets, silent measures, disagreements."""
    if agency is not None:
        require_agency(agency)
    try:
        body = fetch_alerts(
            data_dir,
            agency=agency,
            kind=kind.value if kind else None,
            state=state.value if state else None,
            token=token,
            limit=limit,
        )
    except (StackUnavailable, ValueError) as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    if output is Format.json:
        sys.stdout.write(json.dumps(body, ensure_ascii=False, indent=2) + "\n")
        return
    out = Console(highlight=False)
    out.print(alerts_table(body["items"], english=english))
    shown = len(body["items"])
    out.print(f"{shown} of {body['total']} alert(s)" + (" (use --limit for more)" if shown < body["total"] else ""))


def register(app: typer.Typer) -> None:
    app.command("alerts")(alerts)
