"""The dashboard's view models: pure functions from rollup API answers and URL state (`state.ViewState`) to what a
page shows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from contracts.agencies import AGENCIES
from contracts.catalog import measure_sort_key
from contracts.cycle import on_time_rate
from contracts.events import SEVERITY_ORDER, UNREPORTED
from contracts.periods import TOKYO, FiscalQuarter
from reporting.dashboard.i18n import (
    DISPLAY_ORDER,
    STATUS_GLYPHS,
    STATUS_LABELS,
    TEXT,
    Lang,
    agency_name,
    section_title,
)
from reporting.dashboard.models import Group, MeasureRow, Rollup
from reporting.dashboard.state import ViewState

#: Higher is worse; `unreported` has no rank (silence is neither better nor worse).
_WORSENESS: dict[str, int] = {s.value: len(SEVERITY_ORDER) - i for i, s in enumerate(SEVERITY_ORDER)}


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def on_time_share(group: Group) -> float | None:
    """The group's on-time rate as the API publishes it (`contracts.cycle.on_time_rate`); None (shown as —) when the group
    has no measure."""
    return on_time_rate(group.on_time, group.measures_total) if group.measures_total else None


def percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def status_label(status: str, lang: Lang) -> str:
    return STATUS_LABELS[lang].get(status, status)


@dataclass(frozen=True)
class Segment:
    status: str
    count: int
    share: float
    label: str
    glyph: str

    @property
    def width(self) -> str:
        """CSS width of the segment, with a floor so that a non-zero count is always visible."""
        return f"{max(self.share * 100, 0.6) if self.count else 0:.3f}%"


@dataclass(frozen=True)
class Bar:
    total: int
    segments: list[Segment]
    aria: str


def bar(by_status: Mapping[str, int], lang: Lang) -> Bar:
    """The stacked bar of a status distribution, best to worst, with a sentence for screen readers."""
    total = sum(by_status.get(s, 0) for s in DISPLAY_ORDER)
    segments = [
        Segment(
            status=s,
            count=by_status.get(s, 0),
            share=(by_status.get(s, 0) / total) if total else 0.0,
            label=status_label(s, lang),
            glyph=STATUS_GLYPHS[s],
        )
        for s in DISPLAY_ORDER
    ]
    sep = "、" if lang == "ja" else ", "
    unit = "件" if lang == "ja" else ""
    aria = sep.join(f"{seg.label} {seg.count}{unit}" for seg in segments)
    return Bar(total=total, segments=segments, aria=aria)


@dataclass(frozen=True)
class Delta:
    """A change from the previous quarter; `points` for rates (percentage points), `count` for counts."""

    value: float
    text: str
    direction: Literal["up", "down", "same"]


def delta_points(now: float | None, before: float | None) -> Delta | None:
    if now is None or before is None:
        return None
    d = (now - before) * 100
    if abs(d) < 0.05:
        return Delta(0.0, "±0.0pt", "same")
    return Delta(d, f"{'+' if d > 0 else '−'}{abs(d):.1f}pt", "up" if d > 0 else "down")


def delta_count(now: int, before: int) -> Delta:
    d = now - before
    if d == 0:
        return Delta(0, "±0", "same")
    return Delta(d, f"{'+' if d > 0 else '−'}{abs(d)}", "up" if d > 0 else "down")


def row_status(row: MeasureRow, agency: str | None) -> str:
    """The status a grid cell shows: the combined status, or the agency's own report under an agency filter."""
    if agency is None:
        return row.status
    for lead in row.leads:
        if lead.agency == agency:
            return lead.status or UNREPORTED
    return UNREPORTED


@dataclass(frozen=True)
class StatusChanges:
    improved: list[str] = field(default_factory=list)
    worsened: list[str] = field(default_factory=list)


def status_changes(
    current: Iterable[MeasureRow], previous: Iterable[MeasureRow], agency: str | None = None
) -> StatusChanges:
    """Measures whose status moved to a better or a worse one since the previous quarter (both reported)."""
    before = {r.measure_id: row_status(r, agency) for r in previous}
    improved: list[str] = []
    worsened: list[str] = []
    for r in current:
        now_s, prev_s = row_status(r, agency), before.get(r.measure_id)
        if prev_s is None or now_s not in _WORSENESS or prev_s not in _WORSENESS:
            continue
        if _WORSENESS[now_s] < _WORSENESS[prev_s]:
            improved.append(r.measure_id)
        elif _WORSENESS[now_s] > _WORSENESS[prev_s]:
            worsened.append(r.measure_id)
    key = measure_sort_key
    return StatusChanges(improved=sorted(improved, key=key), worsened=sorted(worsened, key=key))


def movements(rows: Iterable[MeasureRow]) -> StatusChanges:
    """The API's own judgement of each measure's move since the previous quarter (combined status)."""
    improved = [r.measure_id for r in rows if r.movement == "better"]
    worsened = [r.measure_id for r in rows if r.movement == "worse"]
    key = measure_sort_key
    return StatusChanges(improved=sorted(improved, key=key), worsened=sorted(worsened, key=key))


def group_from_rows(rows: Sequence[MeasureRow], agency: str | None) -> Group:
    """A rollup over a filtered list of measures (for filter combinations the API does not roll up)."""
    by_status = dict.fromkeys(DISPLAY_ORDER, 0)
    reported = on_time = 0
    overdue = 0
    for r in rows:
        s = row_status(r, agency)
        by_status[s] = by_status.get(s, 0) + 1
        leads = [lead for lead in r.leads if lead.status and (agency is None or lead.agency == agency)]
        if leads:
            reported += 1
            if all(lead.on_time for lead in leads):
                on_time += 1
        overdue += overdue_of(r) or 0
    total = len(rows)
    return Group(
        measures_total=total,
        reported=reported,
        coverage=reported / total if total else 0.0,
        on_time=on_time,
        by_status=by_status,
        overdue_targets=overdue,
    )


def overdue_of(row: MeasureRow) -> int | None:
    """Overdue targets of a measure, when the API says which are overdue."""
    if row.overdue_targets is not None:
        return row.overdue_targets
    flags = [t.overdue for t in row.targets if t.overdue is not None]
    return sum(1 for f in flags if f) if flags else None


def headline(rollup: Rollup, rows: Sequence[MeasureRow], state: ViewState) -> Group:
    """The group the summary shows: the API's own rollup for a single filter, else one computed from the rows."""
    if state.agency and state.section is None:
        return rollup.by_agency.get(state.agency, Group())
    if state.section is not None and not state.agency:
        return rollup.by_section.get(str(state.section), Group())
    if state.agency and state.section is not None:
        return group_from_rows(rows, state.agency)
    return rollup


def headline_title(state: ViewState) -> str:
    t = TEXT[state.lang]
    if state.agency and state.section is not None:
        return t["distribution_both"].format(name=agency_name(state.agency, state.lang), n=state.section)
    if state.agency:
        return t["distribution_agency"].format(name=agency_name(state.agency, state.lang))
    if state.section is not None:
        return t["distribution_section"].format(n=state.section)
    return t["distribution"]


@dataclass(frozen=True)
class Cell:
    measure_id: str
    status: str
    label: str
    glyph: str
    title: str
    leads: str
    aria: str


@dataclass(frozen=True)
class GridSection:
    number: int
    title: str
    cells: list[Cell]


def grid(rows: Iterable[MeasureRow], state: ViewState) -> list[GridSection]:
    """The measures grouped by section in document order, each cell labelled (colour is never the only signal)."""
    lang = state.lang
    sections: dict[int, list[Cell]] = {}
    for r in sorted(rows, key=lambda r: measure_sort_key(r.measure_id)):
        s = row_status(r, state.agency)
        label = status_label(s, lang)
        leads = ("、" if lang == "ja" else ", ").join(agency_name(lead.agency, lang) for lead in r.leads)
        title = r.title or r.measure_id
        aria = f"{r.measure_id} {title} — {label}"
        sections.setdefault(r.section, []).append(
            Cell(r.measure_id, s, label, STATUS_GLYPHS.get(s, "?"), title, leads, aria)
        )
    return [GridSection(n, section_title(n, lang), cells) for n, cells in sorted(sections.items())]


@dataclass(frozen=True)
class TableRow:
    key: str
    name_ja: str
    name_en: str
    group: Group
    bar: Bar
    coverage: str
    on_time: str
    overdue: str
    href_query: str


def _table_row(key: str, name_ja: str, name_en: str, group: Group, href_query: str, lang: Lang) -> TableRow:
    return TableRow(
        key=key,
        name_ja=name_ja,
        name_en=name_en,
        group=group,
        bar=bar(group.by_status, lang),
        coverage=percent(rate(group.reported, group.measures_total)),
        on_time=percent(on_time_share(group)),
        overdue="—" if group.overdue_targets is None else str(group.overdue_targets),
        href_query=href_query,
    )


def agency_table(rollup: Rollup, state: ViewState) -> list[TableRow]:
    """One row per agency leading at least one measure, in the plan's agency order."""
    return [
        _table_row(
            info.code.value,
            info.name_ja,
            info.name_en,
            group,
            state.query(agency=info.code.value, section=None),
            state.lang,
        )
        for info in AGENCIES
        if (group := rollup.by_agency.get(info.code.value)) is not None and group.measures_total
    ]


def section_table(rollup: Rollup, state: ViewState) -> list[TableRow]:
    """One row per section of the plan."""
    return [
        _table_row(
            str(n),
            section_title(n, "ja"),
            section_title(n, "en"),
            group,
            state.query(section=n, agency=None),
            state.lang,
        )
        for n in range(1, 7)
        if (group := rollup.by_section.get(str(n))) is not None
    ]


def tokyo_time(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(TOKYO).strftime("%Y-%m-%d %H:%M")


def quarter_label(quarter: FiscalQuarter, lang: Lang) -> str:
    return TEXT[lang]["quarter_label"].format(fy=quarter.fiscal_year, q=quarter.quarter)
