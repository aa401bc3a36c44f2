"""The reporting cycle end to end, on a running stack (as `shinchoku up` starts it) on each database: reports,
reviews (one returned and answered), the close and its publication, a late correction and its restatement, the
secretariat's mistakes rejected with their reasons, and a rebuild that reproduces every revision and review state."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from typer.testing import CliRunner, Result

from contracts.cycle import Published, Restated, canonical_json
from contracts.periods import FiscalQuarter
from contracts.streams import PUBLICATIONS_STREAM
from reporting.cycle.documents import document_of_rollup
from shinchoku.cli import app
from shinchoku.issuer import local_token
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.testing import fresh_postgres_database, postgres_reachable
from tests.faults.stack import RunningStack, environment, running_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp(f"cycle-{request.param}") / "var"
    if request.param == "sqlite":
        with running_stack(data_dir) as running:
            yield running
        return
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    with fresh_postgres_database() as ingest_db, fresh_postgres_database() as reporting_db:
        overrides = {"SHINCHOKU_INGEST_DATABASE_URL": ingest_db, "SHINCHOKU_REPORTING_DATABASE_URL": reporting_db}
        with running_stack(data_dir, overrides) as running:
            yield running


def cli(stack: RunningStack, *args: str) -> Result:
    with environment(stack.env):
        return CliRunner().invoke(app, [*args, "--data-dir", str(stack.data_dir)])


def reporting(stack: RunningStack, path: str, **params: str) -> Any:
    token = local_token(stack.data_dir, "secretariat")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(stack.url("reporting") + path, params=params, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json() if not params.get("revision") else response.content


def wait(condition: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def publications(stack: RunningStack) -> list[tuple[str, dict[str, Any]]]:
    async def read() -> list[tuple[str, dict[str, Any]]]:
        nc = await connect(stack.nats_url, name="test-cycle", user="admin", password=stack.password("admin"))
        try:
            js = nc.jetstream()
            count = (await js.stream_info(PUBLICATIONS_STREAM.name)).state.messages
            if not count:
                return []
            sub = await js.subscribe(
                ">", stream=PUBLICATIONS_STREAM.name, ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )  # fmt: skip
            out = []
            for _ in range(count):
                msg = await sub.next_msg(timeout=5)
                out.append((msg.subject, json.loads(msg.data)))
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def mof_measures(stack: RunningStack) -> list[str]:
    def found() -> list[str]:
        body = httpx.get(stack.url("catalog") + "/measures", params={"agency": "mof", "limit": 20}, timeout=5).json()
        return [m["id"] for m in body["items"] if m["lead_agencies"] == ["mof"]]

    ids: list[str] = wait(lambda: len(found()) >= 2 and found(), "the catalog")
    return ids


def report(stack: RunningStack, measure: str, status: str, reported_at: str) -> str:
    result = cli(
        stack, "report", "--agency", "mof", "--measure", measure, "--fy", "2024", "--quarter", "3",
        "--status", status, "--reported-at", reported_at, "--wait",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


def leads(stack: RunningStack) -> dict[str, dict[str, Any]]:
    items = reporting(stack, "/rollups/2024/3/measures", agency="mof", limit="1000")["items"]
    return {i["measure_id"]: next(x for x in i["leads"] if x["agency"] == "mof") for i in items}


def test_the_reporting_cycle(stack: RunningStack) -> None:
    first, second = mof_measures(stack)[:2]
    accepted = report(stack, first, "on_track", "2024-12-20T17:00:00+09:00")
    returned = report(stack, second, "delayed", "2024-12-21T17:00:00+09:00")
    assert cli(stack, "review", accepted, "--accept", "--wait").exit_code == 0
    result = cli(stack, "review", returned, "--return", "--comment", "KPIの時点が異なります。", "--wait")
    assert result.exit_code == 0, result.output
    answer = report(stack, second, "at_risk", "2025-01-10T17:00:00+09:00")
    state = wait(lambda: (s := leads(stack)) and s[second]["event_id"] == answer and s, "the answer")
    assert state[first]["review"] == "accepted"
    assert (state[second]["review"], state[second]["answers"]) == ("pending", returned)

    # The secretariat's mistakes, each rejected with its reason.
    current = FiscalQuarter.of_moment(datetime.now(UTC))
    early = cli(stack, "close", str(current.fiscal_year), str(current.quarter), "--wait")
    assert (early.exit_code, "rejected: period_open" in early.stdout) == (1, True), early.output
    other = cli(stack, "review", accepted, "--accept", "--agency", "digital", "--wait")
    assert other.exit_code == 1, other.output
    assert f"ingest knows no report {accepted} of digital" in other.output
    token = local_token(stack.data_dir, "mof")
    assert token is not None
    by_agency = cli(stack, "review", accepted, "--accept", "--token", token, "--wait")
    assert (by_agency.exit_code, "rejected: not_permitted" in by_agency.stdout) == (1, True), by_agency.output

    # Close: revision 1 published, equal to the live rollup at that moment.
    assert cli(stack, "close", "2024", "3", "--wait").exit_code == 0
    [(subject, body)] = wait(lambda: publications(stack), "the publication")
    published = Published.model_validate(body)
    assert subject == "published.2024.3"
    assert published.sha256 == hashlib.sha256(canonical_json(body["rollup"])).hexdigest()
    live = reporting(stack, "/rollups/2024/3")
    assert hashlib.sha256(canonical_json(document_of_rollup(live))).hexdigest() == published.sha256
    again = cli(stack, "close", "2024", "3", "--wait")
    assert (again.exit_code, "rejected: already_closed" in again.stdout) == (1, True), again.output

    # A late correction: exactly one restatement with the right change; revision 1 as it was.
    late = report(stack, first, "delayed", "2025-03-10T17:00:00+09:00")
    messages = wait(lambda: len(m := publications(stack)) >= 2 and m, "the restatement")
    time.sleep(2)
    messages = publications(stack)
    assert [s for s, _ in messages] == ["published.2024.3", "restated.2024.3"]
    restated = Restated.model_validate(messages[1][1])
    [change] = restated.changes
    assert (change.measure_id, change.agency, change.event_ids) == (first, "mof", [late])
    assert (change.before.status, change.before.review, change.after.status, change.after.review) == (
        "on_track", "accepted", "delayed", "pending",
    )  # fmt: skip
    assert hashlib.sha256(reporting(stack, "/rollups/2024/3", revision="1")).hexdigest() == published.sha256
    assert hashlib.sha256(reporting(stack, "/rollups/2024/3", revision="2")).hexdigest() == restated.sha256

    # Rebuild: the same revisions, digest for digest, and the same review states; nothing published again.
    revisions = reporting(stack, "/rollups/2024/3/revisions")["items"]
    before = leads(stack)
    rebuilt = cli(stack, "rebuild", "--no-progress")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert reporting(stack, "/rollups/2024/3/revisions")["items"] == revisions
    assert leads(stack) == before
    time.sleep(2)
    assert len(publications(stack)) == 2
