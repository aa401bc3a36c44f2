"""The ministry side on the command line: `shinchoku report` and `shinchoku import`, against real NATS and ingest.

The catalog's HTTP API (for `import --dry-run`) is stood in for by a tiny HTTP server answering
`GET /measures/{id}` with the sample measures.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from typer.testing import CliRunner, Result

from ingest.testing import SAMPLE_MEASURES, wait_for_count, wait_for_event
from shinchoku.cli import app
from shinchoku.stack import Stack
from shinchoku_client.cells import parse_fiscal_year, parse_measure_id, parse_quarter, parse_status
from shinchoku_client.csvfile import decode, read_sheet
from shinchoku_client.rows import Sheet, build_event, derived_event_id
from shinchoku_runtime.natsserver import NatsServer

JAPANESE_CSV = (
    "施策番号,年度,四半期,状況,進捗率,備考,報告日時,報告者\n"
    "1-25,2024年度,第3四半期,順調,45%,申告手続の利用率は前年同期比で上昇,2024/12/20 17:00,財務省 国税庁 企画課\n"
    "１－２５,令和6年度,Q2,遅延,３０,,2024-09-30T12:00:00+09:00,\n"
    "1-25,2024,3,たぶん順調,50,,2024-12-20T18:00:00+09:00,\n"
    "1-25,2024,5,完了,100,,2024-12-20T18:00:00+09:00,\n"
    ",2024,3,完了,100,,2024-12-20T18:00:00+09:00,\n"
    "2-3,2024,3,完了,100,厚労省の施策,2024-12-20T18:00:00+09:00,\n"
    "1-25,2024年度,第3四半期,順調,45%,申告手続の利用率は前年同期比で上昇,2024/12/20 17:00,財務省 国税庁 企画課\n"
)


@pytest.fixture
def stack(nats_server: NatsServer, tmp_path: Path) -> Stack:
    """A stack file pointing at the test's nats-server (its secrets live under tmp_path/nats)."""
    assert nats_server.directory == tmp_path / "nats"
    stack = Stack(data_dir=tmp_path, nats_port=nats_server.options.port)
    stack.save()
    return stack


@pytest.fixture
def catalog_http(stack: Stack) -> Iterator[str]:
    measures = {m.id: m for m in SAMPLE_MEASURES}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            measure = measures.get(self.path.removeprefix("/measures/"))
            body = measure.model_dump_json().encode() if measure else json.dumps({"detail": "no such measure"}).encode()
            self.send_response(200 if measure else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    stack.http["catalog"] = url
    stack.save()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


async def cli(*args: str) -> Result:
    """Run the CLI in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


# --- shinchoku report ----------------------------------------------------------------------------------------


async def test_report_publishes_one_report_that_ingest_admits(ingest: Any, stack: Stack, admin_nc: Client) -> None:
    result = await cli(
        "report", "--agency", "mof", "--measure", "1-25", "--fy", "2024", "--quarter", "3", "--status", "順調",
        "--progress", "45", "--kpi", "0=62.5@2024-11-30", "--note", "前年同期比で上昇",
        "--reported-at", "2024-12-20T17:00:00+09:00", "--data-dir", str(stack.data_dir),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    event_id = result.stdout.strip().splitlines()[0]
    assert uuid.UUID(event_id)
    assert "STATUS_mof seq 1" in result.output
    assert f"/events/{event_id}" in result.output
    decided = await wait_for_event(ingest.http, event_id)
    assert decided["outcome"] == "admitted"
    # The client's span is the root of the report's trace (written where `shinchoku trace` reads).
    spans = (stack.data_dir / "spans" / "shinchoku-cli.jsonl").read_text("utf-8").splitlines()
    assert any(json.loads(line)["trace_id"] == decided["trace_id"] for line in spans)


async def test_report_resent_with_the_same_event_id_is_counted_once(
    ingest: Any, stack: Stack, admin_nc: Client
) -> None:
    event_id = str(uuid.uuid4())
    args = ["report", "--agency", "mof", "--measure", "1-25", "--fy", "2024", "--quarter", "3", "--status",
            "on_track", "--reported-at", "2024-12-20T17:00:00+09:00", "--event-id", event_id,
            "--data-dir", str(stack.data_dir)]  # fmt: skip
    assert (await cli(*args)).exit_code == 0
    assert (await cli(*args)).exit_code == 0
    await wait_for_count(admin_nc, "STATUS", 2)
    decided = await wait_for_event(ingest.http, event_id)
    for _ in range(100):
        if decided["attempts"]:
            break
        await asyncio.sleep(0.05)
        decided = await wait_for_event(ingest.http, event_id)
    assert [a["outcome"] for a in decided["attempts"]] == ["duplicate"]
    assert (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--agency", "treasury"], "Unknown agency"),
        (["--measure", "one"], "--measure"),
        (["--status", "great"], "--status"),
        (["--progress", "120"], "progress"),
        (["--kpi", "target zero"], "--kpi"),
        (["--event-id", "123"], "--event-id"),
    ],
)
async def test_report_explains_a_bad_report_without_sending_it(
    args: list[str], says: str, stack: Stack, admin_nc: Client
) -> None:
    base = {"--agency": "mof", "--measure": "1-25", "--fy": "2024", "--quarter": "3", "--status": "on_track"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = await cli("report", *[x for kv in base.items() for x in kv], "--data-dir", str(stack.data_dir))
    assert result.exit_code == 2
    assert says in result.output
    assert (await admin_nc.jetstream().stream_info("STATUS")).state.messages == 0


async def test_report_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    result = await cli(
        "report", "--agency", "mof", "--measure", "1-25", "--fy", "2024", "--quarter", "3", "--status", "on_track",
        "--data-dir", str(tmp_path / "nowhere"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "shinchoku up" in result.output


# --- shinchoku import ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-8", "cp932"])
async def test_import_reads_japanese_exports_and_lists_row_errors(
    encoding: str, ingest: Any, stack: Stack, admin_nc: Client, tmp_path: Path
) -> None:
    csv_file = tmp_path / f"reports-{encoding}.csv"
    csv_file.write_bytes(JAPANESE_CSV.encode(encoding))
    result = await cli("import", str(csv_file), "--agency", "mof", "--data-dir", str(stack.data_dir))
    assert result.exit_code == 1, result.output
    output = result.output
    assert {"utf-8-sig": "UTF-8 (BOM)", "utf-8": "UTF-8", "cp932": "Shift_JIS (CP932)"}[encoding] in output
    # Rows 4, 5 and 6 fail, each naming its column; row 8 is row 2 again (sent once).
    assert "たぶん順調" in output
    assert "状況 (status)" in output
    assert "四半期 (quarter)" in output
    assert "施策番号 (measure_id)" in output
    assert "row 8 is the same report as row 2" in output
    assert "published 3 report(s) as mof; 3 row(s) failed" in output
    # Ingest decides what was sent: rows 2 and 3 admitted, row 7 (2-3, not led by mof) rejected.
    assert await wait_for_count(admin_nc, "ACCEPTED", 2) == 2
    assert await wait_for_count(admin_nc, "REJECTED", 1) == 1

    # Importing the same file again sends the same event ids: nothing new is admitted.
    again = await cli("import", str(csv_file), "--agency", "mof", "--data-dir", str(stack.data_dir))
    assert again.exit_code == 1
    await wait_for_count(admin_nc, "STATUS", 6)
    await asyncio.sleep(0.5)
    assert (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages == 2


async def test_import_dry_run_checks_the_catalog_and_sends_nothing(
    catalog_http: str, stack: Stack, admin_nc: Client, tmp_path: Path
) -> None:
    csv_file = tmp_path / "reports.csv"
    csv_file.write_bytes(
        b"measure_id,fiscal_year,quarter,status,reported_at,kpis\n"
        b"1-25,2024,3,on_track,2024-12-20T17:00:00+09:00,0=62.5@2024-11-30\n"
        b"6-99,2024,3,on_track,2024-12-20T17:00:00+09:00,\n"
        b"2-3,2024,3,on_track,2024-12-20T17:00:00+09:00,\n"
        b"1-25,2024,4,on_track,2024-12-20T17:00:00+09:00,\n"
        b"1-25,2024,3,on_track,2024-12-20T17:00:00+09:00,5=1@2024-11-30\n"
    )
    result = await cli("import", str(csv_file), "--agency", "mof", "--dry-run", "--data-dir", str(stack.data_dir))
    assert result.exit_code == 1, result.output
    output = result.output
    assert "unknown_measure" in output
    assert "not_lead" in output
    assert "future_period" in output
    assert "target 5 does not exist" in output
    assert "dry run: 1 row(s) would be admitted, 4 row(s) have errors; nothing was sent" in output
    assert (await admin_nc.jetstream().stream_info("STATUS")).state.messages == 0

    clean = tmp_path / "clean.csv"
    clean.write_bytes(b"measure_id,fiscal_year,quarter,status,reported_at\n1-25,2024,3,on_track,2024-12-20\n")
    result = await cli("import", str(clean), "--agency", "mof", "--dry-run", "--data-dir", str(stack.data_dir))
    assert result.exit_code == 0, result.output


# --- the parsing itself --------------------------------------------------------------------------------------


def test_cells_are_read_as_clerks_write_them() -> None:
    assert parse_measure_id("１－２５") == "1-25"
    assert parse_measure_id("No.1-025") == "1-25"
    assert parse_measure_id("[No.6-17]") == "6-17"
    assert parse_fiscal_year("令和6年度") == 2024
    assert parse_fiscal_year("ＦＹ２０２５") == 2025
    assert parse_fiscal_year("令和元年度") == 2019
    assert parse_quarter("第３四半期") == 3
    assert parse_quarter("Q1") == 1
    assert parse_status("遅延") == "delayed"
    assert parse_status("ON_TRACK") == "on_track"
    assert parse_status("中断") == "suspended"


def test_a_row_without_event_id_gets_the_same_derived_id_every_time() -> None:
    sheet = read_sheet(decode(JAPANESE_CSV.encode("cp932"))[0])
    assert isinstance(sheet, Sheet)
    headers = {c.field: c.header for c in sheet.columns}
    (line, row), *_ = sheet.rows
    first = build_event(row, agency="mof", default_reported_at=None, columns=headers)  # type: ignore[arg-type]
    second = build_event(dict(row), agency="mof", default_reported_at=None, columns=headers)  # type: ignore[arg-type]
    assert first.event_id == second.event_id == derived_event_id(first)
    assert line == 2
    assert first.reported_at.isoformat() == "2024-12-20T17:00:00+09:00"
    assert first.note == "申告手続の利用率は前年同期比で上昇"
