"""A sheet of rows (from a CSV file or a workbook) → status reports, with an error per failing row that names
its sheet, row and column as Excel does (`報告!D7`).

A row without an event_id gets one derived from its content (uuid5), so importing the same file again sends
the same ids and nothing twice. Every row is checked against contract v1 (`validate_rows`); `check_catalog`
then judges each report with ingest's own admission rules (`contracts.admission`) against the catalog, so a
row fails exactly when ingest would reject it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from contracts.admission import Reject, judge_event
from contracts.agencies import Agency, agency_from_japanese
from contracts.catalog import Measure
from contracts.events import StatusEvent
from shinchoku_client.cells import (
    CellError,
    nfkc,
    parse_fiscal_year,
    parse_kpis,
    parse_measure_id,
    parse_progress,
    parse_quarter,
    parse_reported_at,
    parse_status,
)

#: Namespace of event ids derived from a row: uuid5(namespace, canonical content of the report).
IMPORT_NAMESPACE = uuid.UUID("6f1c2b4e-8a53-5d0e-9b57-5f3e0c6a9d21")


@dataclass(frozen=True)
class Column:
    field: str
    header: str  # as written in the file
    index: int = 0  # 0-based position in the sheet (column A is 0)

    @property
    def label(self) -> str:
        """`状況 (status)` for a header in other words than the field's, else the field."""
        return f"{self.header} ({self.field})" if self.header != self.field else self.field


@dataclass
class Sheet:
    columns: list[Column]
    rows: list[tuple[int, dict[str, str]]]  # (row number as Excel shows it, field → raw text)
    ignored_headers: list[str] = field(default_factory=list)
    #: The sheet's name: a workbook's sheet, or a CSV file's stem (Excel opens it as a sheet so named).
    name: str = ""

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.field == name), None)


def column_letter(index: int) -> str:
    """Excel's letters for a 0-based column index: 0 → A, 25 → Z, 26 → AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def sheet_ref(name: str) -> str:
    """A sheet's name as a cell reference writes it (quoted when Excel would quote it)."""
    if not name:
        return ""
    if re.search(r"[\s!'()+,;.\-&%=<>{}\[\]]", name) or name[0].isdigit():
        return "'" + name.replace("'", "''") + "'!"
    return name + "!"


@dataclass(frozen=True)
class RowError:
    """One failing row: where (sheet, row, column when one cell is at fault), which field, and why."""

    line: int
    field: str  # the column as labelled for the reader: `状況 (status)`, or `(publish)` for what is no cell
    message: str
    sheet: str = ""
    column: int | None = None  # 0-based index of the cell's column

    @property
    def cell(self) -> str:
        """`報告!D7`, or `報告!7:7` (the whole row) when no single cell is at fault."""
        where = f"{column_letter(self.column)}{self.line}" if self.column is not None else f"{self.line}:{self.line}"
        return sheet_ref(self.sheet) + where

    def __str__(self) -> str:
        return f"{self.cell} {self.field}: {self.message}"


def derived_event_id(event: StatusEvent) -> uuid.UUID:
    """The same report (same content) always gets the same id: re-importing a file sends nothing twice."""
    canonical = event.model_dump_json(exclude={"event_id"})
    return uuid.uuid5(IMPORT_NAMESPACE, canonical)


def build_event(
    row: dict[str, str], *, agency: Agency, default_reported_at: datetime | None, columns: dict[str, str]
) -> StatusEvent:
    """A StatusEvent from one row, or CellError naming the column at fault (as headed in the file)."""

    def cell(name: str) -> str | None:
        raw = row.get(name)
        return raw if raw is not None and raw.strip() else None

    def required(name: str) -> str:
        raw = cell(name)
        if raw is None:
            raise CellError(name, "is empty" if name in columns else "no such column in the file")
        return raw

    if (raw_agency := cell("agency")) is not None:
        value = nfkc(raw_agency)
        try:
            named = Agency(value.casefold()) if value.casefold() in Agency.__members__ else agency_from_japanese(value)
        except KeyError:
            raise CellError("agency", f"{raw_agency!r} is not an agency code or name") from None
        if named != agency:
            raise CellError("agency", f"{raw_agency!r} is not {agency.value}: import one agency's reports at a time")
    values: dict[str, Any] = {
        "measure_id": parse_measure_id(required("measure_id")),
        "agency": agency,
        "fiscal_year": parse_fiscal_year(required("fiscal_year")),
        "quarter": parse_quarter(required("quarter")),
        "status": parse_status(required("status")),
    }
    if (raw := cell("reported_at")) is not None:
        values["reported_at"] = parse_reported_at(raw)
    elif default_reported_at is not None:
        values["reported_at"] = default_reported_at
    else:
        raise CellError("reported_at", "is empty (or pass --reported-at for rows without one)")
    if (raw := cell("progress")) is not None:
        values["progress"] = parse_progress(raw)
    if (raw := cell("note")) is not None:
        values["note"] = raw.strip()
    if (raw := cell("reporter")) is not None:
        values["reporter"] = raw.strip()
    if (raw := cell("kpis")) is not None:
        values["kpis"] = parse_kpis(raw)
    raw_id = cell("event_id")
    try:
        values["event_id"] = uuid.UUID(nfkc(raw_id)) if raw_id else uuid.UUID(int=0)
    except ValueError:
        raise CellError("event_id", f"{raw_id!r} is not a UUID (or leave it empty to derive one)") from None
    try:
        event = StatusEvent.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "row"
        raise CellError(name, f"{first['msg']} (got {first.get('input')!r})") from None
    if raw_id is None:
        event = event.model_copy(update={"event_id": derived_event_id(event)})
    return event


@dataclass
class Outcome:
    events: list[tuple[int, StatusEvent]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, same as line)

    @property
    def failed_rows(self) -> int:
        return len({e.line for e in self.errors})


def row_error(sheet: Sheet, line: int, name: str, message: str) -> RowError:
    """The error of one row's field `name`, placed on its column when the sheet has one."""
    column = sheet.column(name)
    label = column.label if column is not None else name
    return RowError(line, label, message, sheet=sheet.name, column=column.index if column is not None else None)


def validate_rows(sheet: Sheet, *, agency: Agency, default_reported_at: datetime | None) -> Outcome:
    """Every row against contract v1: the reports, and an error per failing row naming its cell."""
    outcome = Outcome()
    headers = {c.field: c.header for c in sheet.columns}
    first_line: dict[uuid.UUID, int] = {}
    for line, row in sheet.rows:
        try:
            event = build_event(row, agency=agency, default_reported_at=default_reported_at, columns=headers)
        except CellError as e:
            outcome.errors.append(row_error(sheet, line, e.field, e.message))
            continue
        if event.event_id in first_line:
            outcome.duplicates.append((line, first_line[event.event_id]))
            continue
        first_line[event.event_id] = line
        outcome.events.append((line, event))
    return outcome


def check_catalog(
    sheet: Sheet, outcome: Outcome, measures: Mapping[str, Measure | None], *, now: datetime | None = None
) -> None:
    """Judge each report as ingest would if it were sent now (given the catalog): keep those it would admit."""
    moment = now or datetime.now(UTC)
    kept: list[tuple[int, StatusEvent]] = []
    for line, event in outcome.events:
        decision = judge_event(event, now=moment, measure=measures.get(event.measure_id))
        if isinstance(decision, Reject):
            name = decision.field.split(".")[0] if decision.field else "(row)"
            outcome.errors.append(row_error(sheet, line, name, decision.message))
        else:
            kept.append((line, event))
    outcome.events = kept
