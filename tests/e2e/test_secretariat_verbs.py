"""The secretariat's verbs against a running stack (started as `shinchoku up` starts it): `creds secretariat`,
`review`, `close` and `import --backfill`, each publishing as the secretariat with a token minted from the data
directory, and `--wait` showing ingest's decision with words a clerk can act on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from contracts.periods import FiscalQuarter
from shinchoku.cli import app
from shinchoku.issuer import default_subject, local_token
from tests.faults.stack import RunningStack, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("secretariat") / "var") as running:
        yield running


@pytest.fixture(scope="module")
def measure(stack: RunningStack) -> str:
    """A measure agency mof leads, from the stack's own catalog."""
    deadline = time.monotonic() + 60
    while True:
        body = httpx.get(stack.url("catalog") + "/measures", params={"agency": "mof", "limit": 1}, timeout=5).json()
        if body["items"] or time.monotonic() > deadline:
            return str(body["items"][0]["id"])
        time.sleep(0.5)


def cli(stack: RunningStack, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(stack.data_dir)])


def event(stack: RunningStack, event_id: str, **params: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        response = httpx.get(f"{stack.url('ingest')}/events/{event_id}", params=params, timeout=5, auth=stack.auth)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body
        time.sleep(0.2)


def report(stack: RunningStack, measure: str) -> str:
    result = cli(
        stack, "report", "--agency", "mof", "--measure", measure, "--fy", "2024", "--quarter", "3",
        "--status", "on_track", "--reported-at", "2024-12-20T17:00:00+09:00", "--wait",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


def test_creds_for_the_secretariat(stack: RunningStack) -> None:
    result = cli(stack, "creds", "secretariat")
    assert result.exit_code == 0, result.output
    password = stack.password("secretariat")
    assert result.stdout.strip() == f"nats://secretariat:{password}@{stack.stack.nats_host}:{stack.stack.nats_port}"
    assert "review.>, close.> and backfill.>" in result.stderr
    assert "_INBOX_secretariat" in result.stderr


def test_a_report_is_reviewed_from_the_command_line(stack: RunningStack, measure: str) -> None:
    event_id = report(stack, measure)
    result = cli(stack, "review", event_id, "--return", "--comment", "KPIの時点が異なります。", "--wait")
    assert result.exit_code == 0, result.output
    review_id = result.stdout.strip().splitlines()[0]
    assert "admitted" in result.stdout
    assert f"review (returned) of mof's report on {measure} published on review.mof.{measure}" in result.stderr
    decided = event(stack, review_id, agency="secretariat")
    assert (decided["kind"], decided["outcome"], decided["principal"]) == ("review", "admitted", default_subject())

    accepted = cli(stack, "review", event_id, "--accept", "--wait")
    assert accepted.exit_code == 0, accepted.output


def test_review_errors_are_clear(stack: RunningStack, measure: str) -> None:
    event_id = report(stack, measure)
    cases: list[tuple[list[str], int, str]] = [
        ([event_id, "--return"], 2, "--comment is required with --return"),
        ([event_id], 2, "--accept or --return"),
        ([event_id, "--accept", "--return", "--comment", "x"], 2, "--accept or --return"),
        (["not-a-uuid", "--accept"], 2, "EVENT_ID is not a UUID: not-a-uuid"),
        ([event_id, "--accept", "--review-id", "r1"], 2, "--review-id is not a UUID: r1"),
        ([event_id, "--accept", "--agency", "digital"], 1, f"ingest knows no report {event_id} of digital"),
        ([str(uuid.uuid4()), "--accept"], 1, "ingest knows no report"),
        ([event_id, "--accept", "--agency", "nope"], 2, "Unknown agency 'nope'"),
    ]
    for args, code, words in cases:
        result = cli(stack, "review", *args)
        assert result.exit_code == code, (args, result.output)
        assert words in result.output, (args, result.output)


def test_a_review_sent_with_an_agencys_token_is_not_permitted(stack: RunningStack, measure: str) -> None:
    event_id = report(stack, measure)
    token = local_token(stack.data_dir, "mof")
    assert token is not None
    result = cli(stack, "review", event_id, "--accept", "--token", token, "--wait")
    assert result.exit_code == 1, result.output
    assert "rejected: not_permitted" in result.stdout
    assert "its token is agency mof's" in result.stdout.replace("\n", "")


def test_a_quarter_is_closed_once_and_not_before_its_deadline(stack: RunningStack) -> None:
    first = cli(stack, "close", "2024", "3", "--note", "第3四半期の取りまとめ", "--wait")
    assert first.exit_code == 0, first.output
    close_id = first.stdout.strip().splitlines()[0]
    assert event(stack, close_id, agency="secretariat")["kind"] == "close"
    second = cli(stack, "close", "2024", "3", "--wait")
    assert second.exit_code == 1, second.output
    assert "rejected: already_closed" in second.stdout
    assert f"FY2024Q3 was closed already (close {close_id})" in second.stdout.replace("\n", "")
    current = FiscalQuarter.of_moment(datetime.now(UTC))
    early = cli(stack, "close", str(current.fiscal_year), str(current.quarter), "--wait")
    assert early.exit_code == 1, early.output
    assert "rejected: period_open" in early.stdout
    assert f"{current.label} cannot be closed before its on-time deadline" in early.stdout.replace("\n", "")
    assert cli(stack, "close", "2024", "5").exit_code == 2


def test_history_is_backfilled_as_the_secretariat(stack: RunningStack, measure: str, tmp_path: Path) -> None:
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    sheet = tmp_path / "history.csv"
    sheet.write_text(
        "event_id,施策番号,年度,四半期,状況,報告日時\n"
        f"{ids[0]},{measure},2022年度,第2四半期,遅延,2022/10/20 17:00\n"
        f"{ids[1]},{measure},令和4年度,Q3,順調,2023/01/20 17:00\n",
        encoding="utf-8-sig",
    )
    dry = cli(stack, "import", str(sheet), "--agency", "mof", "--backfill", "--dry-run")
    assert dry.exit_code == 0, dry.output
    result = cli(stack, "import", str(sheet), "--agency", "mof", "--backfill")
    assert result.exit_code == 0, result.output
    assert "published 2 backfilled report(s) of mof as the secretariat" in result.stdout
    for event_id in ids:
        decided = event(stack, event_id, agency="mof")
        assert (decided["kind"], decided["outcome"], decided["principal"]) == (
            "backfill",
            "admitted",
            default_subject(),
        )
        assert decided["subject"] == f"backfill.mof.{measure}"
    # A backfilled report is reviewed like any other.
    reviewed = cli(stack, "review", ids[0], "--accept", "--agency", "mof", "--wait")
    assert reviewed.exit_code == 0, reviewed.output
