"""What each page needs, gathered from the rollup API: one function per page, returning the template context."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from contracts.agencies import AGENCIES
from contracts.catalog import measure_sort_key
from contracts.periods import FiscalQuarter
from reporting.dashboard import view
from reporting.dashboard.i18n import TEXT
from reporting.dashboard.models import HistoryEntry, MeasureInfo, MeasureRow, Rollup, TargetRow
from reporting.dashboard.source import RollupSource, SourceError
from reporting.dashboard.state import FIRST_FISCAL_YEAR, ViewState, fiscal_years

#: How far back the overview looks for the latest quarter with data when the URL names none.
_LOOKBACK_QUARTERS = 12


def fingerprint(last_admitted: str | None, rollup: Rollup) -> str:
    """Changes whenever a report is admitted anywhere, or the quarter's counts change."""
    digest = hashlib.sha256(f"{last_admitted}|".encode())
    digest.update(rollup.model_dump_json().encode())
    return digest.hexdigest()[:16]


async def latest_quarter(source: RollupSource, now: datetime) -> FiscalQuarter:
    """The latest quarter (not after the current one) with at least one report that the viewer may read (the
    public: closed quarters only); the current one when none has."""
    current = FiscalQuarter.of_moment(now)
    quarter = current
    for _ in range(_LOOKBACK_QUARTERS):
        try:
            if (await source.rollup(quarter, as_of=None)).reported > 0:
                return quarter
        except SourceError as e:
            if e.status not in (401, 403):  # not the viewer's to read: look further back
                break
        if quarter.fiscal_year <= FIRST_FISCAL_YEAR and quarter.quarter == 1:
            break
        quarter = quarter.previous()
    return current


def _lang_toggle(path: str, state: ViewState) -> str:
    return path + state.query(lang="en" if state.lang == "ja" else "ja")


def _csv_links(quarter: FiscalQuarter, state: ViewState, as_of: datetime | None) -> dict[str, str]:
    base = f"/rollups/{quarter.fiscal_year}/{quarter.quarter}"
    params: list[tuple[str, str]] = [("format", "csv")]
    params += list(state.api_filters().items())
    if as_of is not None:
        params.append(("as_of", as_of.isoformat()))
    rollup_params = [("format", "csv")] + ([("as_of", as_of.isoformat())] if as_of is not None else [])
    return {
        "measures": f"{base}/measures?{urlencode(params)}",
        "rollup": f"{base}?{urlencode(rollup_params)}",
    }


async def _rollup_or_none(source: RollupSource, quarter: FiscalQuarter, as_of: datetime | None) -> Rollup | None:
    try:
        return await source.rollup(quarter, as_of=as_of)
    except SourceError:
        return None


async def publication_of(source: RollupSource, quarter: FiscalQuarter, rollup: Rollup) -> dict[str, Any] | None:
    """A closed quarter's publication card: its revisions (the latest's digest), and what each restatement changed."""
    if not rollup.closed:
        return None
    revisions = await source.revisions(quarter)
    latest = revisions[-1] if revisions else None
    return {
        "revision": rollup.revision,
        "published_at": rollup.published_at,
        "restated_at": rollup.restated_at,
        "sha256": latest.sha256 if latest else "",
        "restatements": [r for r in revisions if r.revision > 1],
        "first_sha256": revisions[0].sha256 if revisions else "",
        "review": rollup.review,
    }


async def overview_page(source: RollupSource, state: ViewState, now: datetime) -> dict[str, Any]:
    # Read the admission mark first: a report admitted while the page renders then only causes one more refresh.
    last_admitted = await source.last_admitted()
    quarter = state.quarter or await latest_quarter(source, now)
    as_of = state.as_of
    rollup = await source.rollup(quarter, as_of=as_of)
    publication = await publication_of(source, quarter, rollup) if as_of is None else None
    if state.mode == "published" and as_of is None and rollup.closed and rollup.revision is not None:
        # "As published": the quarter's latest published document itself (the live rows equal its figures).
        rollup = await source.published(quarter, rollup.revision)
    filters = state.api_filters()
    rows = await source.measures(quarter, as_of=as_of, filters=filters)
    group = view.headline(rollup, rows, state)

    previous = quarter.previous()
    prev_as_of = state.as_of
    prev_rollup = await _rollup_or_none(source, previous, prev_as_of)
    prev_group = None
    changes = view.StatusChanges()
    if prev_rollup is not None and prev_rollup.reported > 0:
        if state.agency:
            # Under an agency filter a move is the agency's own status moving, so compare its own reports.
            prev_rows = await source.measures(previous, as_of=prev_as_of, filters=filters)
            prev_group = view.headline(prev_rollup, prev_rows, state)
            changes = view.status_changes(rows, prev_rows, state.agency)
        else:
            prev_group = view.headline(prev_rollup, [], state)
            changes = view.movements(rows)

    coverage = view.rate(group.reported, group.measures_total)
    on_time = view.on_time_share(group)
    deltas: dict[str, view.Delta | None] = {"coverage": None, "on_time": None, "reported": None}
    if prev_group is not None:
        deltas = {
            "coverage": view.delta_points(coverage, view.rate(prev_group.reported, prev_group.measures_total)),
            "on_time": view.delta_points(on_time, view.on_time_share(prev_group)),
            "reported": view.delta_count(group.reported, prev_group.reported),
        }
    published_pending = state.mode == "published" and state.as_of is None and not rollup.closed
    shown = ViewState(
        quarter=quarter, agency=state.agency, section=state.section, mode=state.mode, as_of=state.as_of, lang=state.lang
    )
    t = TEXT[state.lang]
    return {
        "lang": state.lang,
        "t": t,
        "state": state,
        "shown": shown,
        "quarter": quarter,
        "previous": previous,
        "as_of": as_of,
        "published_pending": published_pending,
        "deadline": quarter.on_time_deadline,
        "rollup": rollup,
        "publication": publication,
        "group": group,
        "headline_title": view.headline_title(state),
        "bar": view.bar(group.by_status, state.lang),
        "coverage": view.percent(coverage),
        "on_time": view.percent(on_time),
        "deltas": deltas,
        "has_previous": prev_group is not None,
        "changes": changes,
        "grid": view.grid(rows, state),
        "grid_count": len(rows),
        "version": fingerprint(last_admitted, rollup),
        "agency_rows": view.agency_table(rollup, state),
        "section_rows": view.section_table(rollup, state),
        "years": fiscal_years(now),
        "agencies": AGENCIES,
        "csv": _csv_links(quarter, state, as_of),
        "lang_toggle": _lang_toggle("/dashboard", shown),
        "live_query": shown.query(),
        "measure_query": ViewState(quarter=quarter, mode=state.mode, as_of=state.as_of, lang=state.lang).query(),
    }


def _entry_quarter(entry: HistoryEntry) -> FiscalQuarter:
    return FiscalQuarter(entry.fiscal_year, entry.quarter)


async def measure_page(
    source: RollupSource, state: ViewState, measure_id: str, now: datetime, *, ingest_url: str
) -> dict[str, Any]:
    history = await source.history(measure_id)
    entries = sorted(history.quarters, key=_entry_quarter)
    quarter = state.quarter or (_entry_quarter(entries[-1]) if entries else await latest_quarter(source, now))
    as_of = state.as_of
    info = history.measure
    section = info.section if info is not None else int(measure_id.split("-")[0])
    entry = next((e for e in entries if _entry_quarter(e) == quarter), None)
    row: MeasureRow | None = None
    if as_of is not None or entry is None or info is None:
        # The history answers as known now; a past moment (or a quarter without data) needs the quarter's rows.
        rows = await source.measures(quarter, as_of=as_of, filters={"section": str(section)})
        row = next((r for r in rows if r.measure_id == measure_id), None)
    if info is None:
        info = MeasureInfo(
            id=measure_id,
            section=section,
            title=row.title if row else measure_id,
            lead_agencies=[lead.agency for lead in row.leads] if row else [],
            targets=row.targets if row else [],
        )
    targets = _targets(info, row)
    if row is not None:
        status, leads = row.status, row.leads
    elif entry is not None:
        status, leads = entry.status, entry.leads
    else:
        status, leads = "unreported", []
    lead_history = {
        agency: [
            (_entry_quarter(e), lead)
            for e in reversed(entries)
            for lead in e.leads
            if lead.agency == agency and lead.status is not None
        ]
        for agency in info.lead_agencies
    }
    shown = ViewState(quarter=quarter, mode=state.mode, as_of=state.as_of, lang=state.lang)
    timeline = [
        {
            "quarter": _entry_quarter(e),
            "status": e.status,
            "current": _entry_quarter(e) == quarter,
            "query": shown.query(quarter=_entry_quarter(e)),
        }
        for e in entries
    ]
    return {
        "lang": state.lang,
        "t": TEXT[state.lang],
        "state": state,
        "shown": shown,
        "quarter": quarter,
        "as_of": as_of,
        "info": info,
        "status": status,
        "targets": targets,
        "timeline": timeline,
        "leads": leads,
        "lead_history": lead_history,
        "shown_query": shown.query,
        "ingest_url": ingest_url,
        "lang_toggle": _lang_toggle(f"/dashboard/measures/{measure_id}", shown),
        "back_query": shown.query(),
        "history_csv": f"/measures/{measure_id}/history?format=csv",
        "sort_key": measure_sort_key,
    }


def _targets(info: MeasureInfo, row: MeasureRow | None) -> list[TargetRow]:
    """The catalog's targets, completed by what the rollup says of them (overdue, rating, observation)."""
    known = {t.index: t for t in (row.targets if row is not None else [])}
    out: list[TargetRow] = []
    for target in info.targets or list(known.values()):
        extra = known.get(target.index)
        if extra is None or extra is target:
            out.append(target)
            continue
        merged = target.model_dump() | {k: v for k, v in extra.model_dump().items() if v is not None and v != ""}
        out.append(TargetRow.model_validate(merged))
    return out
