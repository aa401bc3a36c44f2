"""Excel workbooks: the report template of one agency and quarter, and reading a filled workbook back.

Written and read with openpyxl: it both writes and reads .xlsx (XlsxWriter only writes, python-calamine
only reads), it writes what a template needs (data validation lists, sheet protection with unlocked input
cells, frozen panes, number formats), and it is pure Python with one small dependency (et-xmlfile), so a
ministry's Windows PC installs it from a wheel without a compiler.

The template's sheet `報告` has one prefilled row per measure the agency leads: reference columns (locked:
the measure, last quarter's status and progress, its targets, the deadline, the agency, the fiscal year and
quarter) and input columns (unlocked: status with a drop-down of the six statuses, progress, KPIs, note,
reporter, time of report). The header row is frozen and the sheet protected without a password (a guide,
not a lock: the platform judges every report anyway). A second sheet explains it in Japanese and English.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

from openpyxl import Workbook, load_workbook
from openpyxl.styles import Alignment, Font, PatternFill, Protection
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import InvalidFileException
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet

from contracts.agencies import AGENCY_INFO, Agency
from contracts.catalog import Measure
from contracts.events import Status
from contracts.periods import TOKYO, FiscalQuarter
from shinchoku_client.cells import STATUS_LABELS_JA, header_key
from shinchoku_client.csvfile import ImportFileError, map_header
from shinchoku_client.rows import Sheet

REPORT_SHEET = "報告"
INSTRUCTIONS_SHEET = "説明 (Instructions)"


@dataclass(frozen=True)
class TemplateColumn:
    header: str
    english: str
    width: float
    #: Whether the clerk fills it in (unlocked); reference columns are locked.
    input: bool = False


#: The template's columns, in order: what the clerk reads first, then what they fill in, then the rest.
COLUMNS: tuple[TemplateColumn, ...] = (
    TemplateColumn("施策番号", "Measure", 10),
    TemplateColumn("施策名", "Title", 48),
    TemplateColumn("前期の状況", "Last quarter's status", 12),
    TemplateColumn("前期の進捗率", "Last quarter's progress (%)", 12),
    TemplateColumn("状況", "Status (drop-down)", 12, input=True),
    TemplateColumn("進捗率", "Progress (%) 0–100", 10, input=True),
    TemplateColumn("KPI", "KPIs: TARGET=VALUE@DATE", 24, input=True),
    TemplateColumn("備考", "Note (≤ 4000 characters)", 40, input=True),
    TemplateColumn("報告者", "Reporter (not public)", 16, input=True),
    TemplateColumn("報告日時", "Time of report (empty: when the file was saved)", 18, input=True),
    TemplateColumn("目標", "Targets ([index] text)", 60),
    TemplateColumn("報告期限", "On-time deadline", 17),
    TemplateColumn("府省庁", "Agency", 12),
    TemplateColumn("年度", "Fiscal year", 8),
    TemplateColumn("四半期", "Quarter", 8),
)
_INDEX = {c.header: i for i, c in enumerate(COLUMNS)}
#: Fields of a report that the clerk supplies: a template row with none of them filled in is left blank (not sent).
INPUT_FIELDS = ("status", "progress", "kpis", "note", "reporter", "event_id")

_HEADER_FONT = Font(bold=True)
_LOCKED_FILL = PatternFill("solid", fgColor="E7E6E6")
_INPUT_FILL = PatternFill("solid", fgColor="FFF2CC")
_WRAP = Alignment(wrap_text=True, vertical="top")
_TOP = Alignment(vertical="top")


@dataclass(frozen=True)
class TemplateData:
    """What a template is made of: the agency, the quarter, its measures and last quarter's own reports."""

    agency: Agency
    quarter: FiscalQuarter
    measures: Sequence[Measure]
    #: measure id → the agency's effective report last quarter (`status`, `progress`, …), where it had one.
    previous: Mapping[str, Mapping[str, Any]]


def _targets_text(measure: Measure) -> str:
    lines = []
    for target in measure.targets:
        due = f"（期限 {target.due_date.isoformat()}）" if target.due_date else ""
        lines.append(f"[{target.index}] {target.text}{due}")
    return "\n".join(lines)


def _text(cell: Any, value: str | None) -> None:
    """A text cell that stays text: openpyxl would take a string starting with '=' for a formula."""
    cell.value = value
    if value is not None:
        cell.data_type = "s"


def write_template(data: TemplateData) -> bytes:
    """The template workbook (.xlsx bytes) for `data`."""
    wb = Workbook()
    ws = wb.active
    assert isinstance(ws, Worksheet)
    ws.title = REPORT_SHEET
    for i, column in enumerate(COLUMNS, start=1):
        head = ws.cell(row=1, column=i, value=column.header)
        head.font = _HEADER_FONT
        head.fill = _INPUT_FILL if column.input else _LOCKED_FILL
        ws.column_dimensions[get_column_letter(i)].width = column.width
    deadline = data.quarter.on_time_deadline.astimezone(TOKYO).replace(tzinfo=None)
    agency_name = AGENCY_INFO[data.agency].name_ja
    for r, measure in enumerate(data.measures, start=2):
        previous = data.previous.get(measure.id, {})
        status = str(previous.get("status"))
        values: dict[str, Any] = {
            "施策番号": measure.id,
            "施策名": measure.title,
            "前期の状況": STATUS_LABELS_JA.get(Status(status), status) if status in Status.__members__ else None,
            "前期の進捗率": previous.get("progress"),
            "目標": _targets_text(measure) or None,
            "報告期限": deadline,
            "府省庁": agency_name,
            "年度": data.quarter.fiscal_year,
            "四半期": data.quarter.quarter,
        }
        for i, column in enumerate(COLUMNS, start=1):
            cell: Any = ws.cell(row=r, column=i)
            value = values.get(column.header)
            if isinstance(value, str):
                _text(cell, value)
            else:
                cell.value = value
            cell.alignment = _WRAP if column.header in ("施策名", "目標", "備考") else _TOP
            if column.input:
                cell.protection = Protection(locked=False)
                cell.fill = _INPUT_FILL
        ws.cell(row=r, column=_INDEX["施策番号"] + 1).number_format = "@"
        ws.cell(row=r, column=_INDEX["報告期限"] + 1).number_format = "yyyy-mm-dd hh:mm"
        ws.cell(row=r, column=_INDEX["報告日時"] + 1).number_format = "yyyy-mm-dd hh:mm"
    last = max(2, len(data.measures) + 1)
    _validations(ws, last)
    ws.freeze_panes = "C2"
    ws.auto_filter.ref = f"A1:{get_column_letter(len(COLUMNS))}{last}"
    # Locked cells stay as they are; column widths, row heights and the filter remain the clerk's to change.
    ws.protection.sheet = True
    ws.protection.formatColumns = False
    ws.protection.formatRows = False
    ws.protection.autoFilter = False
    ws.protection.sort = False
    _instructions(wb, data)
    wb.active = 0
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _column_range(header: str, last: int) -> str:
    letter = get_column_letter(_INDEX[header] + 1)
    return f"{letter}2:{letter}{last}"


def _validations(ws: Worksheet, last: int) -> None:
    labels = ",".join(STATUS_LABELS_JA.values())
    status = DataValidation(
        type="list",
        formula1=f'"{labels}"',
        allow_blank=True,
        showDropDown=False,  # (sic: False shows the in-cell arrow)
        showErrorMessage=True,
        errorTitle="状況 / Status",
        error=f"{labels} のいずれかを選んでください。Choose one of the six statuses.",
        showInputMessage=True,
        promptTitle="状況 / Status",
        prompt="一覧から選択 / choose from the list",
    )
    status.add(_column_range("状況", last))
    progress = DataValidation(
        type="decimal",
        operator="between",
        formula1="0",
        formula2="100",
        allow_blank=True,
        showErrorMessage=True,
        errorTitle="進捗率 / Progress",
        error="0〜100 の数値（％）/ a number from 0 to 100 (percent)",
    )
    progress.add(_column_range("進捗率", last))
    ws.add_data_validation(status)
    ws.add_data_validation(progress)


def _instructions(wb: Workbook, data: TemplateData) -> None:
    ws = wb.create_sheet(INSTRUCTIONS_SHEET)
    info = AGENCY_INFO[data.agency]
    deadline = data.quarter.on_time_deadline.astimezone(TOKYO)
    statuses = "、".join(f"{label}（{status.value}）" for status, label in STATUS_LABELS_JA.items())
    lines: list[tuple[str, str]] = [
        (f"{info.name_ja} {data.quarter.fiscal_year}年度 第{data.quarter.quarter}四半期 報告様式",
         f"{info.name_en}: report template for {data.quarter.label}"),
        (f"期限: {deadline:%Y-%m-%d %H:%M}（日本時間）までに受信された報告が期限内です。",
         f"On time: reports the platform receives by {deadline:%Y-%m-%d %H:%M} (Japan time)."),
        ("", ""),
        ("記入方法", "How to fill it in"),
        ("「報告」シートの黄色の列だけを記入します（灰色の列は参照用で、編集できません）。",
         "Fill in the yellow columns of the sheet 報告 only (the grey columns are for reference and locked)."),
        (f"状況: 一覧から選択します — {statuses}。",
         "Status: choose from the drop-down (the six statuses of the contract, in Japanese)."),
        ("進捗率: 0〜100 の数値（％）。全角数字も可。", "Progress: a number from 0 to 100 (percent); full-width digits are fine."),
        ("KPI: 目標番号=値@日付。例 0=62.5@2025-03-31（複数は ; で区切る）。目標番号は「目標」列の [ ] の番号。",
         "KPIs: TARGET=VALUE@DATE, e.g. 0=62.5@2025-03-31 (several: separate with ;); TARGET is the [index] in the Targets column."),
        ("備考: 4000字以内。報告者: 200字以内（公開されません）。", "Note: at most 4000 characters. Reporter: at most 200 (never public)."),
        ("報告日時: 空欄ならファイルを保存した日時。", "Time of report: leave it empty for the time the file was saved."),
        ("報告しない施策の行は空欄のままにします（送信されません）。",
         "Leave the row of a measure you do not report on empty: it is not sent."),
        ("", ""),
        ("取込み", "Import"),
        (f"確認のみ: shinchoku import reports.xlsx --agency {data.agency.value} --dry-run",
         "Check only (nothing is sent): the command on the left."),
        (f"送信: shinchoku import reports.xlsx --agency {data.agency.value}",
         "Send: each error names its sheet, row and column (e.g. 報告!E7)."),
        ("同じファイルを再度取り込んでも、同じ報告は二重に送信されません。",
         "Importing the same file again sends nothing twice."),
    ]  # fmt: skip
    for row, (ja, en) in enumerate(lines, start=1):
        _text(ws.cell(row=row, column=1), ja or None)
        _text(ws.cell(row=row, column=2), en or None)
        if ja in ("記入方法", "取込み") or row == 1:
            ws.cell(row=row, column=1).font = _HEADER_FONT
            ws.cell(row=row, column=2).font = _HEADER_FONT
    ws.column_dimensions["A"].width = 90
    ws.column_dimensions["B"].width = 90


# --- reading a workbook back ---------------------------------------------------------------------------------


def _cell_text(value: Any, number_format: str, field: str | None) -> str:
    """A cell's value as the text the row parsers read (numbers, dates and percentages as Excel stores them)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        number = float(value) * 100 if "%" in number_format else value
        if isinstance(number, float) and number.is_integer():
            return str(int(number))
        return str(number)
    if isinstance(value, datetime):
        if field == "measure_id":
            # Excel turns a typed 1-25 into 25 January: the month and day are the measure's number.
            return f"{value.month}-{value.day}"
        return (
            value.isoformat(sep=" ") if value.time() != time(0) or field == "reported_at" else value.date().isoformat()
        )
    if isinstance(value, date):
        return f"{value.month}-{value.day}" if field == "measure_id" else value.isoformat()
    return str(value)


def _report_sheet(wb: Any) -> Any:
    """The sheet the reports are on: `報告`, else the first sheet whose first row names a measure column."""
    if REPORT_SHEET in wb.sheetnames:
        return wb[REPORT_SHEET]
    for ws in wb.worksheets:
        first = next(ws.iter_rows(min_row=1, max_row=1, values_only=True), ())
        if any(header_key(str(v)) in ("施策番号", "measure_id", "measureid") for v in first if v is not None):
            return ws
    return wb.worksheets[0]


def read_workbook(source: Path | bytes) -> tuple[Sheet, datetime | None]:
    """The report sheet of a workbook (rows numbered as Excel shows them; a template row with no input left out)
    and when the file was last saved (UTC; None when it does not say)."""
    try:
        wb = load_workbook(io.BytesIO(source) if isinstance(source, bytes) else source, data_only=True)
    except (InvalidFileException, BadZipFile, KeyError, OSError, TypeError, ValueError) as e:
        raise ImportFileError(
            f"not a readable .xlsx workbook ({type(e).__name__}: {e}); save it from Excel as .xlsx"
        ) from None
    ws = _report_sheet(wb)
    rows = ws.iter_rows()
    try:
        header_cells = next(rows)
    except StopIteration:
        raise ImportFileError(
            f"the sheet {ws.title!r} is empty: expected a header row and one report per row"
        ) from None
    columns, ignored = map_header(["" if c.value is None else str(c.value) for c in header_cells])
    fields = [c.field if c is not None else None for c in columns]
    out: list[tuple[int, dict[str, str]]] = []
    for cells in rows:
        row: dict[str, str] = {}
        for cell, field in zip(cells, fields, strict=False):
            if field is not None:
                row[field] = _cell_text(cell.value, cell.number_format or "", field)
        if not any(row.get(f, "").strip() for f in INPUT_FIELDS):
            continue  # a measure the clerk did not report on (or an empty row)
        out.append((cells[0].row, row))
    modified = wb.properties.modified
    saved = modified.replace(tzinfo=UTC) if isinstance(modified, datetime) and modified.tzinfo is None else modified
    sheet = Sheet(columns=[c for c in columns if c is not None], rows=out, ignored_headers=ignored, name=str(ws.title))
    return sheet, saved if isinstance(saved, datetime) else None
