"""`shinchoku token PRINCIPAL`: a bearer token for the running embedded stack, signed with its key."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shinchoku.issuer import (
    DEFAULT_TTL,
    MAX_TTL,
    EmbeddedIssuer,
    IssuerNotFound,
    UnknownPrincipal,
    default_subject,
    parse_duration,
    principal_named,
)
from shinchoku.stack import Stack, StackNotFound
from shinchoku_runtime.auth.settings import EMBEDDED_ISSUER

err = Console(stderr=True, highlight=False)


def _ttl(text: str) -> timedelta:
    try:
        ttl = parse_duration(text)
    except ValueError as e:
        err.print(f"[red]--ttl:[/] {e}")
        raise typer.Exit(2) from None
    if ttl > MAX_TTL:
        err.print(f"[red]--ttl:[/] at most {MAX_TTL} (tokens are short-lived: mint another when it expires)")
        raise typer.Exit(2)
    return ttl


def token(
    principal: Annotated[
        str, typer.Argument(help="An agency code (e.g. mof), secretariat or operator", show_default=False)
    ],
    sub: Annotated[
        str | None, typer.Option("--sub", help="The person the token names (default: your user name)")
    ] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime, e.g. 15m, 1h, 8h (at most 24h)")] = "1h",
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
) -> None:
    """Print a bearer token for the running embedded stack (Authorization: Bearer TOKEN)."""
    try:
        who = principal_named(principal, sub or default_subject())
    except UnknownPrincipal as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    lifetime = _ttl(ttl) if ttl else DEFAULT_TTL
    try:
        stack = Stack.load(data_dir)
    except StackNotFound as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    if stack.auth_issuer not in (None, EMBEDDED_ISSUER):
        err.print(
            f"[red]This stack trusts the tokens of {stack.auth_issuer}[/]: sign in there for a token "
            "(`shinchoku token` mints only for the embedded issuer)."
        )
        raise typer.Exit(1)
    try:
        issuer = EmbeddedIssuer.load(stack.data_dir)
    except (IssuerNotFound, ValueError) as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    if stack.running_pid() is None:
        err.print(f"[yellow]note:[/] no stack is running on {stack.data_dir} right now (start it with `shinchoku up`)")
    # The token alone on stdout, so that `TOKEN=$(shinchoku token mof)` works in scripts.
    print(issuer.mint(who, ttl=lifetime))  # noqa: T201
    until = (datetime.now().astimezone() + lifetime).isoformat(timespec="seconds")
    err.print(f"[dim]{who.label} ({who.subject}), valid until {until}: send it as 'Authorization: Bearer <token>'[/]")


def register(app: typer.Typer) -> None:
    app.command("token")(token)
