"""Reading a CSV export as ministries save it: UTF-8 (with or without BOM, as Excel's "CSV UTF-8" writes it) or
Shift_JIS/CP932 (Excel's plain "CSV" on a Japanese Windows), one header row, one report per row."""

from __future__ import annotations

import csv
import io

from shinchoku_client.cells import HEADER_INDEX, INFORMATIONAL_KEYS, header_key
from shinchoku_client.rows import Column, Sheet


class ImportFileError(Exception):
    """The file as a whole cannot be read (encoding, no header, no measure column)."""


def decode(data: bytes) -> tuple[str, str]:
    """The text of an export and its encoding: UTF-8 (BOM or not), else Shift_JIS/CP932."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "UTF-8 (BOM)"
    try:
        return data.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp932"), "Shift_JIS (CP932)"
    except UnicodeDecodeError as e:
        raise ImportFileError(
            f"the file is neither UTF-8 nor Shift_JIS/CP932 (undecodable byte at offset {e.start}); "
            "save it from Excel as 'CSV UTF-8'"
        ) from None


def map_header(header: list[str]) -> tuple[list[Column | None], list[str]]:
    """Each header cell's field (None for a column that is not part of a report) and the headers ignored
    (reference columns of the template are read past without a word). ImportFileError without a measure column."""
    columns: list[Column | None] = []
    ignored: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(header):
        key = header_key(raw)
        name = HEADER_INDEX.get(key)
        if name is None or name in seen:
            columns.append(None)
            if raw.strip() and key not in INFORMATIONAL_KEYS:
                ignored.append(raw.strip())
            continue
        seen.add(name)
        columns.append(Column(name, raw.strip(), index))
    if "measure_id" not in seen:
        raise ImportFileError(f"no measure column among the headers {header!r}: name one 施策番号 or measure_id")
    return columns, ignored


def read_sheet(text: str, *, name: str = "") -> Sheet:
    """Map the header row to contract fields; keep each data row with its row number (the header is row 1)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("the file is empty: expected a header row and one report per row") from None
    columns, ignored = map_header(header)
    rows: list[tuple[int, dict[str, str]]] = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        row = {c.field: v for c, v in zip(columns, values, strict=False) if c is not None}
        rows.append((line, row))
    return Sheet(columns=[c for c in columns if c is not None], rows=rows, ignored_headers=ignored, name=name)
