"""The agency a command acts as or filters by: a known code, or exit 2 with the valid codes."""

from __future__ import annotations

import typer
from rich.console import Console

from contracts.agencies import Agency

_err = Console(stderr=True, highlight=False)


def require_agency(agency: str) -> Agency:
    """The Agency for a code given on the command line; an unknown code exits 2 naming the valid ones."""
    if agency not in Agency.__members__:
        _err.print(f"[red]Unknown agency {agency!r}.[/] Valid codes: {', '.join(a.value for a in Agency)}")
        raise typer.Exit(2)
    return Agency(agency)
