"""HTTP helpers shared by the services: the error hierarchy, paging, CSV for Excel."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

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


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]], *, filename: str) -> Response:
    """CSV as UTF-8 with a BOM, so that Excel opens Japanese text correctly."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return Response(
        content="\ufeff" + buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
