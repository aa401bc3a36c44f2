"""Workbooks in and out, through a running stack: the template of an agency and quarter, filled in by a clerk
(with openpyxl, as Excel would save it), checked by a dry run that names the sheet, row and column of each
error, imported, and seen in the rollup; CSV as Excel and Japanese Windows save it still imports."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime
from pathlib import Path

from openpyxl import load_workbook

from contracts.events import StatusEvent
from shinchoku_client import AgencyApi, AgencyPublisher, Decision
from shinchoku_client.cells import STATUS_LABELS_JA
from shinchoku_client.importing import load_reports, validate
from shinchoku_client.workbook import COLUMNS, INSTRUCTIONS_SHEET, REPORT_SHEET
from tests.client.conftest import (
    cli,
    measure_not_led_by,
    mof_measures,
    token,
    wait_for_leads,
)
from tests.faults.stack import RunningStack

COLUMN = {c.header: i for i, c in enumerate(COLUMNS, start=1)}
LETTER = {c.header: chr(ord("A") + i - 1) for c, i in zip(COLUMNS, COLUMN.values(), strict=True)}


async def publish(stack: RunningStack, event: StatusEvent) -> None:
    """Publish one report as mof with the client and wait until ingest admits it."""
    async with AgencyPublisher(stack.nats_url, agency="mof", password=stack.password("mof")) as publisher:
        await publisher.publish(event)
    decision = (await decide(stack, [event.event_id]))[str(event.event_id)]
    assert decision.admitted, decision


async def decide(stack: RunningStack, event_ids: list[uuid.UUID]) -> dict[str, Decision]:
    async with AgencyApi(agency="mof", token=token(stack, "mof"), ingest_url=stack.url("ingest")) as api:
        return await api.wait_for_decisions(event_ids)


def mof_report(measure: str, fiscal_year: int, quarter: int, status: str, **fields: object) -> StatusEvent:
    return StatusEvent.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "measure_id": measure,
            "agency": "mof",
            "fiscal_year": fiscal_year,
            "quarter": quarter,
            "status": status,
            "reported_at": datetime.now(UTC).isoformat(),
            **fields,
        }
    )


def test_template_filled_by_a_clerk_is_checked_cell_by_cell_then_imported(stack: RunningStack, tmp_path: Path) -> None:
    measures = [m["id"] for m in mof_measures(stack)]
    assert len(measures) >= 4
    m0, m1, m2, m3 = measures[:4]
    # Last quarter (FY2024Q2), mof said m0 was delayed at 30 %.
    asyncio.run(publish(stack, mof_report(m0, 2024, 2, "delayed", progress=30)))
    wait_for_leads(stack, 2024, 2, {m0: "delayed"})

    book = tmp_path / "reports.xlsx"
    made = cli(stack, "template", "--agency", "mof", "--fy", "2024", "--quarter", "3", "-o", str(book))
    assert made.exit_code == 0, made.output

    # `> reports.xlsx` writes the same workbook to standard output.
    piped = cli(stack, "template", "--agency", "mof", "--fy", "2024", "--quarter", "3")
    assert piped.exit_code == 0, piped.output
    as_piped = load_workbook(io.BytesIO(piped.stdout_bytes))
    assert [[c.value for c in r] for r in as_piped[REPORT_SHEET].iter_rows()] == [
        [c.value for c in r] for r in load_workbook(book)[REPORT_SHEET].iter_rows()
    ]

    # --- the template as written ---
    wb = load_workbook(book)
    assert wb.sheetnames == [REPORT_SHEET, INSTRUCTIONS_SHEET]
    ws = wb[REPORT_SHEET]
    assert [c.value for c in ws[1]] == [c.header for c in COLUMNS]
    rows = {ws.cell(row=r, column=1).value: r for r in range(2, ws.max_row + 1)}
    assert list(rows) == measures  # every measure mof leads, in the plan's order
    r0, r1, r2, r3 = (rows[m] for m in (m0, m1, m2, m3))
    assert ws.cell(row=r0, column=COLUMN["前期の状況"]).value == "遅延"
    assert ws.cell(row=r0, column=COLUMN["前期の進捗率"]).value == 30
    assert ws.cell(row=r1, column=COLUMN["前期の状況"]).value is None
    assert ws.cell(row=r0, column=COLUMN["報告期限"]).value == datetime(2025, 1, 31, 0, 0)
    assert (ws.cell(row=r0, column=COLUMN["年度"]).value, ws.cell(row=r0, column=COLUMN["四半期"]).value) == (2024, 3)
    assert ws.cell(row=r0, column=COLUMN["府省庁"]).value == "財務省"
    assert ws.freeze_panes == "C2"
    assert ws.protection.sheet
    for header, column in COLUMN.items():
        locked = ws.cell(row=r0, column=column).protection.locked
        assert locked is not next(c.input for c in COLUMNS if c.header == header), header
        assert ws.cell(row=1, column=column).protection.locked
    (status_list,) = [v for v in ws.data_validations.dataValidation if v.type == "list"]
    assert status_list.formula1 == '"' + ",".join(STATUS_LABELS_JA.values()) + '"'
    assert status_list.formula1 == '"未着手,順調,要注意,遅延,完了,中断"'
    assert str(status_list.sqref) == f"{LETTER['状況']}2:{LETTER['状況']}{ws.max_row}"
    instructions = " ".join(str(c.value) for row in wb[INSTRUCTIONS_SHEET].iter_rows() for c in row if c.value)
    assert "記入方法" in instructions
    assert "How to fill it in" in instructions

    # --- a clerk fills it in ---
    other = measure_not_led_by(stack, "mof")
    status, progress, note = COLUMN["状況"], COLUMN["進捗率"], COLUMN["備考"]
    ws.cell(row=r0, column=status, value="順調")
    ws.cell(row=r0, column=progress, value="４５")  # full-width digits, typed as text
    ws.cell(row=r1, column=status, value="ちょっと遅れ")
    ws.cell(row=r2, column=progress, value=50)  # status forgotten
    ws.cell(row=r3, column=status, value="完了")
    ws.cell(row=r3, column=progress, value=1.0).number_format = "0%"  # typed as 100% in Excel
    ws.cell(row=r3, column=note, value="予定どおり完了")
    added = ws.max_row + 1
    ws.cell(row=added, column=COLUMN["施策番号"], value=other)
    ws.cell(row=added, column=COLUMN["年度"], value=2024)
    ws.cell(row=added, column=COLUMN["四半期"], value=3)
    ws.cell(row=added, column=status, value="順調")
    wb.save(book)

    # --- the dry run names exactly those cells ---
    dry = cli(stack, "import", str(book), "--agency", "mof", "--dry-run")
    assert dry.exit_code == 1, dry.output
    error_lines = sorted(line.strip() for line in dry.stderr.splitlines() if line.startswith(f"  {REPORT_SHEET}!"))
    expected_cells = sorted(
        [f"報告!{LETTER['状況']}{r1} 状況 (status):", f"報告!{LETTER['状況']}{r2} 状況 (status):",
         f"報告!{LETTER['施策番号']}{added} 施策番号 (measure_id):"]
    )  # fmt: skip
    assert [line.split(": ", 1)[0] + ":" for line in error_lines] == expected_cells, dry.stderr
    by_cell = {line.split(" ", 1)[0]: line for line in error_lines}
    assert (
        "'ちょっと遅れ' is not a status; use one of 未着手, 順調, 要注意, 遅延, 完了, 中断"
        in by_cell[f"報告!{LETTER['状況']}{r1}"]
    )
    assert "is empty" in by_cell[f"報告!{LETTER['状況']}{r2}"]
    assert "not_lead" in by_cell[f"報告!{LETTER['施策番号']}{added}"]
    assert "dry run: 2 row(s) would be admitted, 3 row(s) have errors; nothing was sent" in dry.stdout
    # The same through the library: the rows it would send, with the full-width and percent cells read right.
    loaded = load_reports(book)
    outcome = validate(loaded, agency="mof", reported_at=None)  # type: ignore[arg-type]
    sent = {e.measure_id: e for _, e in outcome.events}
    assert sent[m0].progress == 45
    assert sent[m3].progress == 100
    assert set(sent) == {m0, m3, other}  # what the contract allows; the catalog's judgement is ingest's

    # --- the real import sends what the contract allows; ingest admits the rest; the rollup shows it ---
    real = cli(stack, "import", str(book), "--agency", "mof")
    assert real.exit_code == 1, real.output
    assert "published 3 report(s) as mof; 2 row(s) failed" in real.stdout
    decisions = asyncio.run(decide(stack, [e.event_id for e in sent.values()]))
    assert {m: decisions[str(e.event_id)].reason for m, e in sent.items()} == {m0: None, m3: None, other: "not_lead"}
    leads = wait_for_leads(stack, 2024, 3, {m0: "on_track", m3: "completed"})
    assert leads[m0]["progress"] == 45
    assert leads[m3]["note"] == "予定どおり完了"
    assert m1 not in leads
    assert m2 not in leads

    # Importing the same file again sends the same reports: nothing changes.
    again = cli(stack, "import", str(book), "--agency", "mof")
    assert "published 3 report(s)" in again.stdout
    assert wait_for_leads(stack, 2024, 3, {m0: "on_track", m3: "completed"})[m0]["event_id"] == leads[m0]["event_id"]


def test_csv_saved_by_excel_and_by_japanese_windows_still_imports(stack: RunningStack, tmp_path: Path) -> None:
    measures = [m["id"] for m in mof_measures(stack)]
    m4, m5 = measures[0], measures[1]  # reported on for another quarter (Q4) than the template test
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    rows = f"施策番号,年度,四半期,状況,進捗率,備考,報告日時\r\n{m4},令和6年度,第4四半期,遅延,２０,予算要求中,{at}\r\n"
    bom = tmp_path / "excel-utf8.csv"
    bom.write_bytes("\ufeff".encode() + rows.encode("utf-8"))  # Excel's "CSV UTF-8": BOM and CRLF
    sjis = tmp_path / "excel-sjis.csv"
    sjis.write_bytes(
        rows.replace(m4, m5).replace("遅延", "要注意").encode("cp932")
    )  # Excel's "CSV" on Japanese Windows
    for file, encoding in ((bom, "UTF-8 (BOM)"), (sjis, "Shift_JIS (CP932)")):
        result = cli(stack, "import", str(file), "--agency", "mof")
        assert result.exit_code == 0, result.output
        assert encoding in result.stderr
        assert "published 1 report(s) as mof; 0 row(s) failed" in result.stdout
    leads = wait_for_leads(stack, 2024, 4, {m4: "delayed", m5: "at_risk"})
    assert leads[m4]["progress"] == 20
    assert leads[m5]["note"] == "予算要求中"
