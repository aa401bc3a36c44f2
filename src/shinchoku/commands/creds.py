"""`shinchoku creds AGENCY`: the NATS URL with one agency's (or the secretariat's) credentials for the running stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from contracts.agencies import AGENCY_INFO, Agency
from contracts.streams import agency_inbox_prefix
from shinchoku.commands.agencyarg import require_agency
from shinchoku.stack import Stack, StackNotFound
from shinchoku_runtime.natsconf import SECRETARIAT_USER, write_private

err = Console(stderr=True, highlight=False)


def credentials(stack: Stack, agency: Agency | str) -> dict[str, Any]:
    """What a client needs to publish as `agency` (or `secretariat`): user, password, server URL(s) and the inbox
    prefix."""
    user = agency.value if isinstance(agency, Agency) else agency
    return {
        "agency": user,
        "user": user,
        "password": stack.password(user),
        "url": stack.nats_plain_url,
        "inbox_prefix": agency_inbox_prefix(user),
    }


def creds(
    agency: Annotated[str, typer.Argument(help="Agency code, e.g. mof, or secretariat", show_default=False)],
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Also write a JSON credentials file (user, password, url), mode 0600")
    ] = None,
) -> None:
    """Print the NATS URL with AGENCY's credentials (it may publish only on status.AGENCY.>), or the secretariat's
    (review.>, close.>, backfill.>)."""
    code: Agency | str = agency if agency == SECRETARIAT_USER else require_agency(agency)
    user = code.value if isinstance(code, Agency) else code
    try:
        stack = Stack.load(data_dir)
        url = stack.nats_url(user)
        body = credentials(stack, code)
    except StackNotFound as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    if stack.running_pid() is None and not stack.external_nats_url:
        err.print(f"[yellow]note:[/] no stack is running on {stack.data_dir} right now (start it with `shinchoku up`)")
    if file is not None:
        write_private(file, json.dumps(body, indent=2) + "\n")
        whom = AGENCY_INFO[code].name_en if isinstance(code, Agency) else "the secretariat (重点計画事務局)"
        err.print(f"wrote {file} (mode 0600) for {whom}")
    # The URL alone on stdout, so that `$(shinchoku creds mof)` works in scripts.
    print(url)  # noqa: T201
    where = f"status.{user}.<measure>" if isinstance(code, Agency) else "review.>, close.> and backfill.>"
    err.print(f"[dim]publish on {where} with inbox prefix {body['inbox_prefix']}[/]")


def register(app: typer.Typer) -> None:
    app.command("creds")(creds)
