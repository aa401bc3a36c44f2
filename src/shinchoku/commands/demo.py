"""`shinchoku demo`: publish a realistic, reproducible history (past quarters as the secretariat's backfill, the open one
as the 17 agencies), play the reporting cycle (reviews, closes, publications, restatements), then show the latest
rollup. Running it again adds nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shinchoku.demo_plan import DEFAULT_SEED


def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed publishes the same events")] = DEFAULT_SEED,
    cycle: Annotated[
        bool,
        typer.Option(
            "--cycle/--no-cycle",
            help="Play the reporting cycle as the secretariat after the reports (the default; --cycle is kept for "
            "scripts that still pass it): history backfilled, reviews (some returned and answered), past quarters "
            "closed and published, a few restatements; the current quarter stays open. --no-cycle: reports only",
        ),
    ] = True,
) -> None:
    """Publish FY2024Q1 → last completed quarter (reproducible; past quarters backfilled as the secretariat), play the
    reporting cycle (reviewed, closed, published, restated; the current quarter open), then print the latest rollup.
    A second run adds nothing."""
    from shinchoku.demo_run import run_demo  # NATS and the OpenTelemetry SDK only when the demo runs

    run_demo(data_dir, seed, cycle=cycle)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
