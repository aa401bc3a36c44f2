"""A rollup (GET /rollups/{fy}/{q}) as rich tables: status by colour AND by name, coverage and on-time rates.

The on-time rate is the one the API publishes and the dashboard shows (`contracts.cycle.on_time_rate`): the
measures reported on time over all the measures of the scope.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from contracts.agencies import AGENCY_INFO, Agency
from contracts.catalog import SECTION_TITLES
from contracts.cycle import on_time_rate
from contracts.events import SEVERITY_ORDER, UNREPORTED

#: Every status with its colour, most severe first, then `unreported`. Colour is never the only signal:
#: the status name is always printed beside it.
STATUS_STYLES: dict[str, str] = {
    "delayed": "bold red",
    "at_risk": "yellow",
    "suspended": "magenta",
    "not_started": "cyan",
    "on_track": "green",
    "completed": "bold blue",
    UNREPORTED: "dim",
}
STATUSES: tuple[str, ...] = (*(s.value for s in SEVERITY_ORDER), UNREPORTED)
_SHORT = {
    "delayed": "delayed",
    "at_risk": "at risk",
    "suspended": "susp.",
    "not_started": "not st.",
    "on_track": "on trk",
    "completed": "done",
    UNREPORTED: "unrep",
}


def status_text(status: str, label: str | None = None) -> Text:
    return Text(label or status, style=STATUS_STYLES.get(status, ""))


def rate(part: int | float, whole: int | float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def on_time_text(part: dict[str, Any]) -> str:
    """The scope's on-time rate (`on_time_rate`: on time over all its measures), or – when it has no measure."""
    total = part["measures_total"]
    return f"{100 * on_time_rate(part['on_time'], total):.1f}%" if total else "–"


def _bar(count: int, total: int, width: int = 30) -> str:
    return "█" * round(width * count / total) if total else ""


class RollupSliceNotFound(KeyError):
    """The rollup has no such agency or section."""


def select_slice(rollup: dict[str, Any], *, agency: str | None = None, section: str | None = None) -> dict[str, Any]:
    """The government-wide rollup, or its part for one agency or section (same shape)."""
    if agency is not None:
        try:
            return dict(rollup["by_agency"][agency])
        except KeyError:
            raise RollupSliceNotFound(f"no agency {agency!r} in this rollup") from None
    if section is not None:
        try:
            return dict(rollup["by_section"][str(section)])
        except KeyError:
            raise RollupSliceNotFound(f"no section {section!r} in this rollup (sections are 1–6)") from None
    return rollup


def _title(rollup: dict[str, Any], agency: str | None, section: str | None) -> str:
    label = rollup.get("label") or f"FY{rollup['fiscal_year']}Q{rollup['quarter']}"
    period = f"{rollup.get('period_start', '')} – {rollup.get('period_end', '')}".strip(" –")
    if agency is not None:
        info = AGENCY_INFO.get(Agency(agency)) if agency in Agency.__members__ else None
        scope = f"{agency} — {info.name_en} ({info.name_ja})" if info else agency
    elif section is not None:
        scope = f"section {section} — {SECTION_TITLES.get(int(section), '')}"
    else:
        scope = "government-wide"
    return f"{label} ({period}) · {scope}" if period else f"{label} · {scope}"


def summary_table(part: dict[str, Any]) -> Table:
    """Counts and rates; with the previous quarter, movements and targets when the service gives them."""
    total, reported, on_time = part["measures_total"], part["reported"], part["on_time"]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    table.add_row("measures", str(total), "")
    table.add_row("reported", str(reported), f"coverage {rate(reported, total)}")
    table.add_row("on time", str(on_time), f"{on_time_text(part)} of all measures")
    previous = part.get("previous")
    if isinstance(previous, dict) and "reported" in previous:
        label = previous.get("label", "previous quarter")
        table.add_row(
            "trend",
            "",
            f"{label}: coverage {rate(previous['reported'], previous['measures_total'])}, "
            f"delayed {previous['by_status'].get('delayed', 0)} → {part['by_status'].get('delayed', 0)}",
        )
    if "moved_worse" in part and "moved_better" in part:
        table.add_row("moved", "", f"{len(part['moved_worse'])} worse, {len(part['moved_better'])} better than before")
    if isinstance(part.get("overdue_targets"), int):
        table.add_row("targets overdue", str(part["overdue_targets"]), "due date passed, target not met")
    return table


def status_table(part: dict[str, Any]) -> Table:
    total = part["measures_total"]
    table = Table(title="by status", title_justify="left", box=None, pad_edge=False)
    table.add_column("status")
    table.add_column("measures", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    for status in STATUSES:
        count = int(part["by_status"].get(status, 0))
        style = STATUS_STYLES[status]
        table.add_row(status_text(status), str(count), rate(count, total), Text(_bar(count, total), style=style))
    return table


def breakdown_table(title: str, rows: dict[str, dict[str, Any]], names: dict[str, str], *, width: int = 120) -> Table:
    """One row per agency or section: coverage, on-time rate and the count of each status."""
    # One space between columns, none at the edges: every count fits in 80 columns; names take what is left.
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=0)

    def number(header: str | Text) -> None:
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))

    table.add_column(title.split()[-1], no_wrap=True)
    counts_width = 76
    name_width = min(26, width - counts_width - 1)
    with_names = name_width >= 8
    if with_names:
        table.add_column("", overflow="ellipsis", no_wrap=True, max_width=name_width, style="dim")
    for header in ("total", "cover.", "on time"):
        number(header)
    for status in STATUSES:
        number(status_text(status, _SHORT[status]))
    for key, part in rows.items():
        cells: list[RenderableType] = [key]
        if with_names:
            cells.append(names.get(key, ""))
        cells += [
            str(part["measures_total"]),
            rate(part["reported"], part["measures_total"]),
            on_time_text(part),
        ]
        for status in STATUSES:
            count = int(part["by_status"].get(status, 0))
            cells.append(Text(str(count), style=STATUS_STYLES[status] if count else "dim"))
        table.add_row(*cells)
    return table


def legend() -> Text:
    """What the short status headers stand for (colour never carries meaning alone)."""
    text = Text("", style="dim")
    for i, status in enumerate(STATUSES):
        text.append(" · " if i else "")
        text.append(_SHORT[status], style=STATUS_STYLES[status])
        if _SHORT[status] != status:
            text.append(f" = {status}")
    return text


def render_rollup(
    rollup: dict[str, Any],
    *,
    agency: str | None = None,
    section: str | None = None,
    breakdowns: bool = True,
    width: int = 120,
) -> Group:
    """The whole view: title, summary, status table, then per-agency and per-section tables (government-wide)."""
    part = select_slice(rollup, agency=agency, section=section)
    items: list[RenderableType] = [
        Text(_title(rollup, agency, section), style="bold underline"),
        summary_table(part),
        Text(""),
        status_table(part),
    ]
    if breakdowns and agency is None and section is None:
        agencies = {a.code.value: a.name_ja for a in AGENCY_INFO.values()}
        order = [a.value for a in Agency]
        by_agency = rollup.get("by_agency", {})
        rows = {k: by_agency[k] for k in order if k in by_agency} | {
            k: v for k, v in by_agency.items() if k not in order
        }
        items += [Text(""), breakdown_table("by agency", rows, agencies, width=width)]
        by_section = rollup.get("by_section", {})
        sections = {str(n): by_section.get(str(n), {}).get("title") or t for n, t in SECTION_TITLES.items()}
        items += [
            Text(""),
            breakdown_table("by section", dict(sorted(by_section.items())), sections, width=width),
        ]
        items += [legend()]
    return Group(*items)
