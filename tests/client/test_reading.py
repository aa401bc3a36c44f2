"""Reading a workbook or CSV as a clerk leaves it, without a stack: cells as Excel stores them (a typed 1-25 that
Excel made a date, 45% stored as 0.45, full-width digits), blank template rows left out, every error placed on
its sheet, row and column, and a file that is no workbook refused with a message."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from openpyxl import Workbook

from contracts.agencies import Agency
from contracts.catalog import Measure
from contracts.events import Status
from contracts.periods import FiscalQuarter
from shinchoku_client.cells import STATUS_LABELS, STATUS_LABELS_JA, parse_status
from shinchoku_client.csvfile import ImportFileError
from shinchoku_client.importing import load_reports, validate
from shinchoku_client.rows import RowError, column_letter, sheet_ref
from shinchoku_client.workbook import COLUMNS, REPORT_SHEET, TemplateData, read_workbook, write_template

COLUMN = {c.header: i for i, c in enumerate(COLUMNS, start=1)}
SAVED = datetime(2025, 1, 20, 8, 0, tzinfo=UTC)


def measure(measure_id: str, leads: list[str]) -> Measure:
    return Measure.model_validate(
        {"id": measure_id, "section": int(measure_id[0]), "section_title": "s", "title": f"=施策 {measure_id}",
         "description": [], "lead_agencies": leads, "targets": []}
    )  # fmt: skip


def template(tmp_path: Path) -> Path:
    data = TemplateData(
        agency=Agency.mof,
        quarter=FiscalQuarter(2024, 3),
        measures=[measure("1-25", ["mof"]), measure("1-26", ["mof", "digital"]), measure("2-3", ["mof"])],
        previous={"1-25": {"status": "at_risk", "progress": 20.0}},
    )
    path = tmp_path / "reports.xlsx"
    path.write_bytes(write_template(data))
    return path


def test_the_drop_down_offers_labels_the_import_reads_back() -> None:
    assert list(STATUS_LABELS_JA) == list(Status)
    for status, label in STATUS_LABELS_JA.items():
        assert parse_status(label) is status
        assert STATUS_LABELS[label] is status
    assert parse_status("懸念") is Status.at_risk


def test_a_template_row_left_empty_is_not_sent_and_cells_are_read_as_excel_stores_them(tmp_path: Path) -> None:
    from openpyxl import load_workbook

    path = template(tmp_path)
    wb = load_workbook(path)
    ws = wb[REPORT_SHEET]
    assert ws.cell(row=2, column=COLUMN["施策名"]).value == "=施策 1-25"  # text, not a formula
    assert ws.cell(row=2, column=COLUMN["施策名"]).data_type == "s"
    assert ws.cell(row=2, column=COLUMN["前期の状況"]).value == "要注意"
    ws.cell(row=2, column=COLUMN["状況"], value="順調")
    ws.cell(row=2, column=COLUMN["進捗率"], value=0.455).number_format = "0.0%"
    ws.cell(row=3, column=COLUMN["状況"], value="遅延")
    ws.cell(row=3, column=COLUMN["進捗率"], value="３０．５")
    # Row 4 (2-3) left as the template wrote it. A clerk adds a row and types 1-27, which Excel makes 27 January.
    ws.cell(row=5, column=COLUMN["施策番号"], value=datetime(2025, 1, 27))
    ws.cell(row=5, column=COLUMN["年度"], value="令和６年度")
    ws.cell(row=5, column=COLUMN["四半期"], value="第３四半期")
    ws.cell(row=5, column=COLUMN["状況"], value="完了")
    ws.cell(row=5, column=COLUMN["報告日時"], value=datetime(2025, 1, 10, 17, 30))
    wb.save(path)

    sheet, saved = read_workbook(path)
    assert sheet.name == REPORT_SHEET
    assert [line for line, _ in sheet.rows] == [2, 3, 5]
    assert saved is not None
    loaded = load_reports(path)
    outcome = validate(loaded, agency=Agency.mof, reported_at=None)
    assert outcome.errors == []
    events = {e.measure_id: e for _, e in outcome.events}
    assert (events["1-25"].status, events["1-25"].progress) == (Status.on_track, 45.5)
    assert events["1-26"].progress == 30.5
    assert events["1-27"].fiscal_year == 2024
    assert events["1-27"].quarter == 3
    assert events["1-27"].reported_at.isoformat() == "2025-01-10T17:30:00+09:00"  # Excel's times are Japan time
    assert events["1-25"].reported_at == saved  # no time of report: when the workbook was saved
    # The same file read again gives the same reports (and so the same event ids).
    again = validate(load_reports(path), agency=Agency.mof, reported_at=None)
    assert [e.event_id for _, e in again.events] == [e.event_id for _, e in outcome.events]


def test_each_error_names_sheet_row_and_column(tmp_path: Path) -> None:
    from openpyxl import load_workbook

    path = template(tmp_path)
    wb = load_workbook(path)
    ws = wb[REPORT_SHEET]
    ws.cell(row=2, column=COLUMN["状況"], value="ちょっと遅れ")
    ws.cell(row=3, column=COLUMN["状況"], value="順調")
    ws.cell(row=3, column=COLUMN["進捗率"], value=120)
    ws.cell(row=4, column=COLUMN["状況"], value="順調")
    ws.cell(row=4, column=COLUMN["KPI"], value="目標0は62.5")
    ws.cell(row=4, column=COLUMN["府省庁"], value="総務省")
    wb.save(path)
    outcome = validate(load_reports(path), agency=Agency.mof, reported_at=SAVED)
    assert sorted(e.cell for e in outcome.errors) == ["報告!E2", "報告!F3", "報告!M4"]
    first = next(e for e in outcome.errors if e.line == 2)
    assert str(first).startswith(
        "報告!E2 状況 (status): 'ちょっと遅れ' is not a status; use one of 未着手, 順調, 要注意"
    )


def test_csv_errors_are_placed_as_excel_opens_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mof 2024-Q3.csv"
    path.write_bytes("施策番号,年度,四半期,状況\r\n1-25,2024,3,順調\r\n1-25,2024,5,順調\r\n".encode("cp932"))
    outcome = validate(load_reports(path), agency=Agency.mof, reported_at=SAVED)
    (error,) = outcome.errors
    assert error.cell == "'mof 2024-Q3'!C3"
    assert RowError(4, "(publish)", "x", sheet="報告").cell == "報告!4:4"


def test_references_are_spelled_as_excel_spells_them() -> None:
    assert [column_letter(i) for i in (0, 4, 25, 26, 27, 701, 702)] == ["A", "E", "Z", "AA", "AB", "ZZ", "AAA"]
    assert sheet_ref("報告") == "報告!"
    assert sheet_ref("Reports FY2024") == "'Reports FY2024'!"
    assert sheet_ref("it's") == "'it''s'!"


@pytest.mark.parametrize("content", [b"not a workbook", b"PK\x03\x04broken zip"])
def test_a_file_that_is_no_workbook_is_refused_with_a_message(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "reports.xlsx"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=r"not a readable \.xlsx workbook"):
        load_reports(path)
    with pytest.raises(ImportFileError, match="no such file"):
        load_reports(tmp_path / "missing.xlsx")
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(ImportFileError, match=r"save the workbook from Excel as \.xlsx"):
        load_reports(tmp_path / "old.xls")


def test_a_workbook_that_is_not_a_template_is_read_from_its_first_sheet_with_a_measure_column() -> None:
    wb = Workbook()
    notes = wb.active
    assert notes is not None
    notes.title = "メモ"
    notes.append(["何か"])
    data = wb.create_sheet("Q3")
    data.append(["measure_id", "fiscal_year", "quarter", "status", "progress"])
    data.append(["1-25", 2024, 3, "delayed", 10])
    data.append([None, None, None, None, None])
    data.append(["1-26", 2024, 3, "completed", date(2025, 1, 1)])
    out = io.BytesIO()
    wb.save(out)
    sheet, _ = read_workbook(out.getvalue())
    assert sheet.name == "Q3"
    assert [line for line, _ in sheet.rows] == [2, 4]
