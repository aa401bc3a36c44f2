"""HTTP helpers shared by the services: the error hierarchy, paging, tables for Excel (CSV and .xlsx)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response


class ServiceError(Exception):
    """An error a user can cause; carries its HTTP status."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Unavailable(ServiceError):
    status_code = 503


Limit = Annotated[int, Query(ge=1, le=1000, description="Page size (1–1000)")]
Offset = Annotated[int, Query(ge=0, le=2**63 - 1, description="Items to skip")]  # SQL OFFSET is a 64-bit integer


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Every user error answers `{"detail": message}` with a 4xx; nothing a user sends is a 500."""

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": _describe(exc.errors()), "errors": jsonable_errors(exc.errors())}, status_code=422
        )


def jsonable_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type")} for e in errors]


#: A text cell starting with one of these is read as a formula by spreadsheet programs ("CSV injection"):
#: `=HYPERLINK(...)` in a note would become a live link, `-2+3` a sum.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

TableFormat = Literal["csv", "xlsx"]


def formula_safe(text: str) -> str:
    """Text as a spreadsheet cell shows it and never evaluates it: one that would start a formula gets a leading
    apostrophe (OWASP's advice; Excel shows the rest as typed). The one rule for every table the services write,
    CSV and .xlsx alike."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return formula_safe(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]], *, filename: str) -> Response:
    """CSV as UTF-8 with a BOM, so that Excel opens Japanese text correctly; text cells formula-safe."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([formula_safe(h) for h in header])
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
    return Response(
        content="\ufeff" + buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def table_response(
    format_: TableFormat, header: Sequence[str], rows: Iterable[Sequence[Any]], *, name: str
) -> Response:
    """A table as `name.csv` or `name.xlsx` (one sheet; numbers as numbers, dates as dates), formula-safe."""
    if format_ == "xlsx":
        from shinchoku_runtime.xlsx import xlsx_response  # openpyxl loads only for a workbook

        return xlsx_response(header, rows, filename=f"{name}.xlsx")
    return csv_response(header, rows, filename=f"{name}.csv")
