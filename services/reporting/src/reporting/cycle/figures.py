"""A closed quarter's figures: what each lead's effective report makes of its measure (`contracts.cycle.LeadFigures`).

A revision of a closed quarter freezes the figures of every reported lead; the published document is built from
them and the catalog (`reporting.cycle.documents`). A later fact touches one measure: its leads' figures are
computed again and compared with the latest revision's (the incremental tallies: nothing else of the quarter is
read), and a difference makes the next revision.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from reporting.domain import LeadReport


class Figures(NamedTuple):
    """One lead's figures on one measure in a quarter (reported: `unreported` leads have no entry)."""

    status: str
    on_time: bool
    review: str


#: (measure_id, agency) → figures
FigureMap = dict[tuple[str, str], Figures]


def figures_of(reports: Iterable[LeadReport]) -> FigureMap:
    """The figures of effective reports."""
    return {(r.measure_id, r.agency): Figures(r.status, r.on_time, r.review) for r in reports}


def figures_json(figures: Mapping[tuple[str, str], Figures]) -> str:
    """Stable text of figures (sorted): what a revision stores."""
    rows = [[m, a, f.status, f.on_time, f.review] for (m, a), f in sorted(figures.items())]
    return json.dumps(rows, separators=(",", ":"))


def parse_figures(text: str) -> FigureMap:
    return {(m, a): Figures(status, bool(on_time), review) for m, a, status, on_time, review in json.loads(text)}


def lead_figures(figures: Figures | None) -> dict[str, object]:
    """A lead's figures as `contracts.cycle.LeadFigures` states them (unreported: no report, no review)."""
    if figures is None:
        return {"status": "unreported", "on_time": None, "review": None}
    return {"status": figures.status, "on_time": figures.on_time, "review": figures.review}


def changes_between(
    before: Mapping[tuple[str, str], Figures],
    after: Mapping[tuple[str, str], Figures],
    measure_id: str,
    cause: str,
) -> list[dict[str, object]]:
    """The leads of `measure_id` whose figures differ, as `contracts.cycle.RollupChange` objects."""
    keys = sorted({k for k in (*before, *after) if k[0] == measure_id})
    return [
        {
            "measure_id": m,
            "agency": a,
            "before": lead_figures(before.get((m, a))),
            "after": lead_figures(after.get((m, a))),
            "event_ids": [cause],
        }
        for m, a in keys
        if before.get((m, a)) != after.get((m, a))
    ]
