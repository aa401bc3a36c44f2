"""Tables as Excel workbooks (`?format=xlsx`): the same rows as the CSV, typed.

Numbers stay numbers, dates and times become Excel dates (times in Asia/Tokyo, as Excel has no time zones),
booleans booleans, and text goes through the same `formula_safe` as CSV and is always written as text (never
a formula), with the characters XML cannot hold replaced. Written with openpyxl's write-only mode: one pass,
rows streamed into the file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font

from contracts.periods import TOKYO
from shinchoku_runtime.http import formula_safe

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DATE_FORMAT = "yyyy-mm-dd"
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
_BOLD = Font(bold=True)


def _cell(ws: Any, value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        local = value.astimezone(TOKYO).replace(tzinfo=None) if value.tzinfo is not None else value
        cell = WriteOnlyCell(ws, value=local)
        cell.number_format = DATETIME_FORMAT
        return cell
    if isinstance(value, date):
        # Excel has no date type of its own: a date is a time at midnight, shown as a date.
        cell = WriteOnlyCell(ws, value=datetime(value.year, value.month, value.day))
        cell.number_format = DATE_FORMAT
        return cell
    text = ILLEGAL_CHARACTERS_RE.sub("\ufffd", formula_safe(str(value)))
    cell = WriteOnlyCell(ws, value=text)
    cell.data_type = "s"  # text, whatever it looks like
    return cell


def xlsx_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]], *, sheet: str = "data") -> bytes:
    """One sheet: a bold, frozen header row, then the rows, typed."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(sheet[:31])
    ws.freeze_panes = "A2"
    heads = []
    for name in header:
        cell = _cell(ws, name)
        cell.font = _BOLD
        heads.append(cell)
    ws.append(heads)
    for row in rows:
        ws.append([_cell(ws, v) for v in row])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def xlsx_response(header: Sequence[str], rows: Iterable[Sequence[Any]], *, filename: str) -> Response:
    return Response(
        content=xlsx_bytes(header, rows, sheet=filename.rsplit(".", 1)[0]),
        media_type=XLSX_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
