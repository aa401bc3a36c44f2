"""The `import` verb's steps, shared by `shinchoku-client import` and the platform's `shinchoku import`:
read a file (CSV or workbook) → check every row against the contract → optionally judge each report with
ingest's rules against the catalog (a dry run) → publish, in atomic batches where the server stores them.
Each front end prints the steps' results in its own way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from contracts.agencies import Agency
from contracts.periods import FiscalQuarter
from shinchoku_client.api import AgencyApi
from shinchoku_client.csvfile import ImportFileError, decode, read_sheet
from shinchoku_client.publisher import AgencyPublisher, SecretariatPublisher, Sent
from shinchoku_client.rows import Outcome, RowError, Sheet, check_catalog, validate_rows
from shinchoku_client.workbook import TemplateData, read_workbook

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")


@dataclass(frozen=True)
class Loaded:
    """A file read for import: its sheet of rows, what kind of file it was, and when it was saved (workbooks)."""

    path: Path
    sheet: Sheet
    kind: str
    #: A workbook's last save (the time of report of rows that leave it empty), UTC.
    saved_at: datetime | None = None


def load_reports(path: Path) -> Loaded:
    """Read a CSV export (UTF-8 with or without BOM, or Shift_JIS) or an .xlsx workbook; ImportFileError when the
    file as a whole cannot be read."""
    if not path.is_file():
        raise ImportFileError(f"no such file: {path}")
    if path.suffix.lower() in WORKBOOK_SUFFIXES:
        sheet, saved_at = read_workbook(path)
        return Loaded(path, sheet, f"Excel workbook, sheet {sheet.name}", saved_at)
    if path.suffix.lower() == ".xls":
        raise ImportFileError("the old .xls format is not read: save the workbook from Excel as .xlsx (or CSV UTF-8)")
    text, encoding = decode(path.read_bytes())
    return Loaded(path, read_sheet(text, name=path.stem), encoding)


def validate(loaded: Loaded, *, agency: Agency, reported_at: datetime | None) -> Outcome:
    """Every row against contract v1. Rows without a time of report take `reported_at`, else the workbook's
    save time (stable, so that importing the same file again sends the same reports)."""
    return validate_rows(loaded.sheet, agency=agency, default_reported_at=reported_at or loaded.saved_at)


async def judge(loaded: Loaded, outcome: Outcome, api: AgencyApi, *, now: datetime | None = None) -> None:
    """Judge each valid row as ingest would (the catalog read over HTTP): rows it would reject become errors."""
    measures = await api.catalog_measures([e.measure_id for _, e in outcome.events])
    check_catalog(loaded.sheet, outcome, measures, now=now)


async def send(
    loaded: Loaded,
    outcome: Outcome,
    publisher: AgencyPublisher | SecretariatPublisher,
    *,
    token: str | None = None,
    on_sent: Callable[[Sent], None] | None = None,
    wait: bool = False,
    settled: list[Sent] | None = None,
) -> int:
    """Publish the valid rows' reports (a SecretariatPublisher sends them as backfills with `token`); a report
    that could not be published becomes an error of its row. With `wait`, an AgencyPublisher also waits for
    ingest's decisions. `settled` receives every report's `Sent`. Returns how many were published."""
    events = [e for _, e in outcome.events]
    lines = [line for line, _ in outcome.events]
    if not events:
        return 0
    if isinstance(publisher, SecretariatPublisher):
        if token is None:
            raise ValueError("a backfill is sent with the secretariat's bearer token")
        sent = await publisher.publish_backfills(events, token=token, on_sent=on_sent)
    else:
        sent = await publisher.publish_batch(events, on_sent=on_sent, wait=wait)
    if settled is not None:
        settled.extend(sent)
    for s in sent:
        if not s.ok:
            outcome.errors.append(RowError(lines[s.index], "(publish)", s.error or "", sheet=loaded.sheet.name))
    return sum(1 for s in sent if s.ok)


async def template_data(api: AgencyApi, quarter: FiscalQuarter) -> TemplateData:
    """What a template for `quarter` needs: the agency's measures (catalog) and its own effective reports of the
    quarter before (reporting)."""
    measures = await api.measures()
    before = quarter.previous()
    previous = await api.own_standing(before.fiscal_year, before.quarter)
    return TemplateData(agency=api.agency, quarter=quarter, measures=measures, previous=previous)
