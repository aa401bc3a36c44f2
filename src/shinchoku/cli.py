"""The `shinchoku` command line: one verb per module in `shinchoku.commands`."""

from __future__ import annotations

import typer

from shinchoku.commands import (
    alerts,
    asyncapi,
    close,
    creds,
    demo,
    importfile,
    natsconfig,
    rebuild,
    report,
    review,
    rollup,
    streams,
    template,
    token,
    trace,
    up,
)

app = typer.Typer(
    name="shinchoku",
    help="Shinchoku (進捗): status reporting on the Priority Policy Program for Realizing a Digital Society.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Shinchoku (進捗): status reporting on the Priority Policy Program for Realizing a Digital Society."""


for module in (
    natsconfig,
    up,
    creds,
    token,
    demo,
    rollup,
    trace,
    report,
    importfile,
    template,
    review,
    close,
    rebuild,
    streams,
    asyncapi,
    alerts,
):
    module.register(app)


def main() -> None:
    app()
