"""`shinchoku nats-config`: write the nats-server configuration with per-agency users and secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shinchoku_runtime.natsconf import ServerOptions, write_config


def nats_config(
    directory: Annotated[Path, typer.Argument(help="Directory for nats.conf and secrets.json (mode 0600)")],
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Client port")] = 4222,
    store_dir: Annotated[Path | None, typer.Option(help="JetStream store (default DIRECTORY/jetstream)")] = None,
) -> None:
    """Write nats.conf: one user per agency (publish status.{agency}.> only), least-privilege services."""
    options = ServerOptions(host=host, port=port, store_dir=store_dir or directory / "jetstream")
    path = write_config(directory, options)
    Console().print(f"wrote [bold]{path}[/] (secrets in {directory / 'secrets.json'}, mode 0600)")


def register(app: typer.Typer) -> None:
    app.command("nats-config")(nats_config)
