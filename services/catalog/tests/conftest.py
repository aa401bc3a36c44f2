"""Catalog fixtures: the parsed plan once per session, a running catalog on a real nats-server and database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from catalog.app import CatalogRuntime, create_app
from catalog.config import CatalogSettings
from catalog.plan import bundled_plan_text, parse_plan
from contracts.catalog import Measure
from shinchoku.issuer import EmbeddedIssuer, StackAuth
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import fresh_postgres_database, postgres_reachable

RunCatalog = Callable[..., AbstractAsyncContextManager[FastAPI]]


@pytest.fixture(scope="session")
def plan() -> list[Measure]:
    return parse_plan(bundled_plan_text())


def catalog_settings(
    data_dir: Path, database_url: str, server: NatsServer | None, **overrides: object
) -> CatalogSettings:
    """Settings as `shinchoku up` gives them: the catalog's own NATS user, never the system NATS on :4222."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "nats_url": server.plain_url if server is not None else "nats://127.0.0.1:1",
        "nats_user": "catalog",
        "nats_password": server.passwords["catalog"] if server is not None else "none",
    }
    values.update(overrides)
    return CatalogSettings(**values)  # type: ignore[arg-type]


async def wait_mirrored(runtime: CatalogRuntime, timeout: float = 20.0) -> None:
    await asyncio.wait_for(runtime.mirrored.wait(), timeout)


@pytest.fixture
def run_catalog(tmp_path: Path, plan: list[Measure]) -> RunCatalog:
    """Start the catalog app (its lifespan: seed, broker, KV mirror) in the test's event loop."""

    @asynccontextmanager
    async def run(
        database_url: str,
        server: NatsServer | None,
        *,
        measures: Sequence[Measure] | None = None,
        wait: bool = True,
        **overrides: object,
    ) -> AsyncIterator[FastAPI]:
        chosen = list(plan if measures is None else measures)
        settings = catalog_settings(tmp_path / "catalog", database_url, server, **overrides)
        app = create_app(settings, load_plan=lambda: chosen)
        async with app.router.lifespan_context(app):
            if wait:
                await wait_mirrored(app.state.runtime)
            yield app

    return run


@pytest.fixture(scope="module")
def module_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server for a module whose tests only read (the root `nats_server`, module-scoped)."""
    server = NatsServer.create(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The root `database_url` (SQLite file and fresh real PostgreSQL), module-scoped so a module seeds once."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'catalog.sqlite'}"
        return
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    with fresh_postgres_database() as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(
    module_database_url: str,
    module_nats_server: NatsServer,
    tmp_path_factory: pytest.TempPathFactory,
    plan: list[Measure],
) -> AsyncIterator[httpx.AsyncClient]:
    """One running catalog per module and database, seeded once, for tests that only read over HTTP."""
    settings = catalog_settings(tmp_path_factory.mktemp("catalog"), module_database_url, module_nats_server)
    app = create_app(settings, load_plan=lambda: plan)
    # Anyone reads the catalog; /metrics is the operator's (a token of the issuer `shinchoku up` would make).
    auth = StackAuth(EmbeddedIssuer.prepare(settings.data_dir))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://catalog", auth=auth) as client,
    ):
        yield client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the target parser's measured accuracy (test_target_accuracy.py) in every run's summary."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for key, lines in getattr(report, "user_properties", ()):
                if key == "target_parser_accuracy":
                    terminalreporter.section("target parser accuracy (hand-checked sample)")
                    for line in lines:
                        terminalreporter.write_line(line)
