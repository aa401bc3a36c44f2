"""`shinchoku streams apply`: declare the shared streams as the administrator (the services only check them)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shinchoku.stack import Stack, StackNotFound
from shinchoku_runtime.streamdefs import apply_as

err = Console(stderr=True, highlight=False)
streams_app = typer.Typer(help="The shared JetStream streams (STATUS, ACCEPTED, REJECTED, PUBLICATIONS).")


@streams_app.command("apply")
def apply(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    url: Annotated[
        str | None,
        typer.Option(help="NATS URL(s) instead of the stack's; the password from SHINCHOKU_NATS_ADMIN_PASSWORD"),
    ] = None,
    user: Annotated[str, typer.Option(help="The administrative NATS user")] = "admin",
    replicas: Annotated[int, typer.Option(min=1, max=5, help="Replicas of each stream (3 on a cluster)")] = 1,
) -> None:
    """Create each shared stream, or bring a live one to the definition in `contracts` (limits, replicas,
    deny delete/purge), as the administrator. Services never do this: they refuse to start on a stream that
    differs, saying which field."""
    if url is None:
        try:
            stack = Stack.load(data_dir)
        except StackNotFound as e:
            err.print(f"[red]{e}[/]")
            raise typer.Exit(1) from None
        url, password = stack.nats_plain_url, stack.password(user)
    else:
        password = os.environ.get("SHINCHOKU_NATS_ADMIN_PASSWORD", "")
        if not password:
            err.print("[red]set SHINCHOKU_NATS_ADMIN_PASSWORD to the administrator's NATS password[/]")
            raise typer.Exit(2)
    try:
        changes = asyncio.run(apply_as(url, user, password, replicas))
    except Exception as e:
        err.print(f"[red]could not apply the streams on {url}: {type(e).__name__}: {e}[/]")
        raise typer.Exit(1) from None
    print("\n".join(changes) if changes else "every stream is as defined")  # noqa: T201 - the command's output


def register(app: typer.Typer) -> None:
    app.add_typer(streams_app, name="streams")
