"""`creds` and `rollup` against a data directory and a stand-in reporting service (no real stack needed)."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts.agencies import Agency
from shinchoku.cli import app
from shinchoku.rollup_view import STATUSES
from shinchoku.stack import Stack
from shinchoku_runtime.natsconf import load_or_create_secrets

runner = CliRunner()


def _part(total: int, reported: int, on_time: int, **statuses: int) -> dict[str, Any]:
    by_status = dict.fromkeys(STATUSES, 0) | statuses
    by_status["unreported"] = total - reported
    return {
        "measures_total": total,
        "reported": reported,
        "coverage": reported / total,
        "on_time": on_time,
        "by_status": by_status,
    }


ROLLUP = {
    "fiscal_year": 2025,
    "quarter": 1,
    "label": "FY2025Q1",
    "period_start": "2025-04-01",
    "period_end": "2025-06-30",
    **_part(320, 300, 270, on_track=200, at_risk=50, delayed=30, completed=20),
    "by_agency": {"mof": _part(10, 9, 8, on_track=9), "digital": _part(100, 90, 80, on_track=80, delayed=10)},
    "by_section": {str(n): _part(50, 45, 40, on_track=45) for n in range(1, 7)},
}
CSV = (
    "\ufeffquarter,scope,key,name,measures_total\r\n"
    "FY2025Q1,government,all,全体,320\r\n"
    "FY2025Q1,section,3,地域,50\r\n"
    "FY2025Q1,agency,mof,財務省,10\r\n"
)


@pytest.fixture
def reporting() -> Iterator[tuple[str, list[str]]]:
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            if self.path.startswith("/rollups/2025/1?") and "format=csv" in self.path:
                body, kind, code = CSV.encode(), "text/csv; charset=utf-8", 200
            elif self.path == "/rollups/2025/1":
                body, kind, code = json.dumps(ROLLUP).encode(), "application/json", 200
            else:
                body, kind, code = b'{"detail": "no such quarter"}', "application/json", 404
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", paths
    server.shutdown()
    server.server_close()


@pytest.fixture
def stack_dir(tmp_path: Path, reporting: tuple[str, list[str]]) -> Path:
    stack = Stack(data_dir=tmp_path / "var", nats_port=4333)
    stack.http["reporting"] = reporting[0]
    stack.save()
    load_or_create_secrets(stack.nats_dir)
    return stack.data_dir


def test_creds_prints_the_agency_url(stack_dir: Path) -> None:
    result = runner.invoke(app, ["creds", "mof", "--data-dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    password = Stack.load(stack_dir).password("mof")
    assert result.stdout.strip() == f"nats://mof:{password}@127.0.0.1:4333"


def test_creds_file_is_private(stack_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "mof.json"
    path.write_text("old")
    path.chmod(0o644)
    result = runner.invoke(app, ["creds", "mof", "--data-dir", str(stack_dir), "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body["user"] == "mof"
    assert body["url"] == "nats://127.0.0.1:4333"
    assert body["inbox_prefix"] == "_INBOX_mof"
    assert body["password"] == Stack.load(stack_dir).password("mof")


def test_creds_unknown_agency_names_the_valid_codes(stack_dir: Path) -> None:
    result = runner.invoke(app, ["creds", "mofa", "--data-dir", str(stack_dir)])
    assert result.exit_code == 2
    assert "mofa" in result.stderr
    assert all(a.value in result.stderr for a in Agency)


def test_creds_without_a_stack(tmp_path: Path) -> None:
    result = runner.invoke(app, ["creds", "mof", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "shinchoku up" in result.stderr


def test_rollup_table_shows_status_names_counts_and_rates(stack_dir: Path) -> None:
    result = runner.invoke(app, ["rollup", "2025", "1", "--data-dir", str(stack_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "FY2025Q1 (2025-04-01 – 2025-06-30) · government-wide" in out
    for status in STATUSES:
        assert status in out, "every status is named, never colour alone"
    assert "coverage 93.8%" in out
    assert "84.4% of all measures" in out  # 270 on time of 320: the on-time rate the API publishes
    assert "by agency" in out
    assert "財務省" in out
    assert "by section" in out


def test_rollup_for_one_agency(stack_dir: Path) -> None:
    result = runner.invoke(app, ["rollup", "2025", "1", "--agency", "mof", "--data-dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    assert "Ministry of Finance" in result.stdout
    assert "coverage 90.0%" in result.stdout
    assert "by agency" not in result.stdout


def test_rollup_json_and_csv(stack_dir: Path, reporting: tuple[str, list[str]]) -> None:
    result = runner.invoke(app, ["rollup", "2025", "1", "--format", "json", "--data-dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == ROLLUP
    result = runner.invoke(
        app, ["rollup", "2025", "1", "--section", "3", "--format", "json", "--data-dir", str(stack_dir)]
    )
    assert json.loads(result.stdout) == ROLLUP["by_section"]["3"]
    result = runner.invoke(app, ["rollup", "2025", "1", "--format", "csv", "--data-dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == CSV.encode()
    result = runner.invoke(
        app, ["rollup", "2025", "1", "--format", "csv", "--agency", "mof", "--data-dir", str(stack_dir)]
    )
    assert result.exit_code == 0, result.output
    assert (
        result.stdout_bytes
        == "\ufeffquarter,scope,key,name,measures_total\r\nFY2025Q1,agency,mof,財務省,10\r\n".encode()
    )


def test_rollup_errors(stack_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["rollup", "2030", "1", "--data-dir", str(stack_dir)])
    assert result.exit_code == 1
    assert "no such quarter" in result.stderr
    result = runner.invoke(app, ["rollup", "2025", "1", "--agency", "xx", "--data-dir", str(stack_dir)])
    assert result.exit_code == 2
    result = runner.invoke(app, ["rollup", "2025", "1", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "shinchoku up" in result.stderr


def test_rollup_when_the_stack_is_stopped(tmp_path: Path) -> None:
    from shinchoku_runtime.natsserver import free_port

    stack = Stack(data_dir=tmp_path / "stopped")
    stack.http["reporting"] = f"http://127.0.0.1:{free_port()}"
    stack.save()
    result = runner.invoke(app, ["rollup", "2025", "1", "--data-dir", str(stack.data_dir)])
    assert result.exit_code == 1
    assert "the stack is not running" in result.stderr
