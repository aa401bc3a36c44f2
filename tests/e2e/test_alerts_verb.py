"""`shinchoku alerts` against a data directory and a stand-in reporting service: the filters and a bearer token go
out, the alerts come back as a table a clerk can read (or as the API's JSON)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from shinchoku.cli import app
from shinchoku.issuer import EmbeddedIssuer
from shinchoku.stack import Stack

runner = CliRunner()

ALERT = {
    "alert_id": "report_due.mof.1-25.2024.3.-",
    "kind": "report_due",
    "state": "raised",
    "agency": "mof",
    "measure_id": "1-25",
    "fiscal_year": 2024,
    "quarter": 3,
    "target_index": None,
    "raised_at": "2025-01-17T00:00:01+09:00",
    "resolved_at": None,
    "message_ja": "【報告期限間近】施策 1-25「e-Taxの利用促進」の進捗報告が未提出です。2025-01-30 までに報告してください。",
    "message_en": "Report due: measure 1-25 has no FY2024Q3 progress report from mof yet. Send it by 2025-01-30.",
    "refs": [],
}


@pytest.fixture
def reporting() -> Iterator[tuple[str, list[tuple[str, dict[str, list[str]], str | None]]]]:
    calls: list[tuple[str, dict[str, list[str]], str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            calls.append((url.path, parse_qs(url.query), self.headers.get("Authorization")))
            body: dict[str, Any] = {"items": [ALERT], "total": 3}
            self.send_response(200 if url.path == "/alerts" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", calls
    server.shutdown()
    server.server_close()


def test_alerts_sends_filters_and_a_token_and_shows_what_to_do(
    tmp_path: Path, reporting: tuple[str, list[tuple[str, dict[str, list[str]], str | None]]]
) -> None:
    stack = Stack(data_dir=tmp_path / "var", nats_port=4333)
    stack.http["reporting"] = reporting[0]
    stack.save()
    EmbeddedIssuer.prepare(stack.data_dir)
    result = runner.invoke(
        app,
        ["alerts", "--agency", "mof", "--kind", "report_due", "--state", "raised", "--data-dir", str(stack.data_dir)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    path, query, authorization = reporting[1][-1]
    assert path == "/alerts"
    assert query == {"agency": ["mof"], "kind": ["report_due"], "state": ["raised"], "limit": ["100"]}
    assert (authorization or "").startswith("Bearer ")
    assert "2025-01-30 までに報告してください" in result.output
    assert "1 of 3 alert(s)" in result.output

    result = runner.invoke(app, ["alerts", "--format", "json", "--data-dir", str(stack.data_dir)])
    assert json.loads(result.output)["items"] == [ALERT]


def test_alerts_refuses_an_unknown_agency_or_kind(tmp_path: Path) -> None:
    assert runner.invoke(app, ["alerts", "--agency", "nasa", "--data-dir", str(tmp_path)]).exit_code != 0
    assert runner.invoke(app, ["alerts", "--kind", "bored", "--data-dir", str(tmp_path)]).exit_code == 2
