"""`shinchoku rebuild`: rebuild the reporting store by replaying ACCEPTED from the start.

The CLI never imports a service: it runs `python -m reporting rebuild` with the settings `up` gives the
reporting service (a setting the user made explicitly, `SHINCHOKU_REPORTING_*`, always wins). The rebuild
is safe while the stack runs: the store is rebuilt beside the live one and swapped in at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shinchoku.launch import service_settings
from shinchoku.stack import Stack, StackNotFound

err = Console(stderr=True, highlight=False)

PREFIX = "SHINCHOKU_REPORTING_"


def rebuild_env(stack: Stack, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `python -m reporting rebuild` needs to reach this stack's NATS and reporting store."""
    env = dict(os.environ if base is None else base)
    explicit = service_settings("reporting").model_fields_set
    fill = {
        "data_dir": str(stack.data_dir.resolve()),
        "database_url": f"sqlite:///{(stack.db_dir / 'reporting.sqlite').resolve()}",
        "nats_url": stack.nats_plain_url,
        "nats_user": "reporting",
    }
    for name, value in fill.items():
        if name not in explicit:
            env[PREFIX + name.upper()] = value
    if "nats_password" not in explicit:
        env[PREFIX + "NATS_PASSWORD"] = stack.password("reporting")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def rebuild(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
    force: Annotated[
        bool,
        typer.Option(
            help="Swap the replay in even when ACCEPTED does not start at sequence 1 or holds fewer events than the "
            "live store (without it such a rebuild is refused and the store left as it was)"
        ),
    ] = False,
) -> None:
    """Rebuild the reporting store by replaying ACCEPTED from the start (safe while the stack runs)."""
    try:
        stack = Stack.load(data_dir)
        env = rebuild_env(stack)
    except StackNotFound as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    argv = [sys.executable, "-m", "reporting", "rebuild"]
    if not progress:
        argv.append("--no-progress")
    if force:
        argv.append("--force")
    err.print(f"rebuilding the reporting store from ACCEPTED on {stack.nats_plain_url} …")
    code = subprocess.call(argv, env=env)
    if code != 0:
        err.print(f"[red]rebuild failed[/] (exit status {code}); the live store was left as it was")
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("rebuild")(rebuild)
