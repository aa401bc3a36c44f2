"""Ingest against a real nats-server: the catalog is only a KV bucket (and optionally a request-reply answerer)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.catalog import Measure
from contracts.streams import CATALOG_MEASURE_GET
from ingest.app import IngestRuntime, create_app
from ingest.config import IngestSettings
from ingest.testing import SAMPLE_MEASURES, put_measures
from shinchoku.client import AgencyPublisher
from shinchoku.issuer import EmbeddedIssuer, StackAuth
from shinchoku_runtime.auth import AuthSettings
from shinchoku_runtime.natsserver import NatsServer


@pytest.fixture
async def catalog_kv(admin_nc: Client) -> list[Measure]:
    """The catalog as ingest sees it: the CATALOG bucket holding a few measures."""
    await put_measures(admin_nc, SAMPLE_MEASURES)
    return SAMPLE_MEASURES


@pytest.fixture
async def catalog_answerer(admin_nc: Client) -> dict[str, Measure]:
    """The catalog's request-reply side on real NATS: answers `catalog.measure.get` from this (mutable) dict."""
    measures = {m.id: m for m in SAMPLE_MEASURES}

    async def answer(msg: Msg) -> None:
        measure = measures.get(msg.data.decode())
        if measure is None:
            await msg.respond(json.dumps({"error": "not_found", "message": "no such measure"}).encode())
        else:
            await msg.respond(measure.model_dump_json().encode())

    await admin_nc.subscribe(CATALOG_MEASURE_GET, cb=answer)
    return measures


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@dataclass
class RunningIngest:
    app: FastAPI
    runtime: IngestRuntime
    http: httpx.AsyncClient
    settings: IngestSettings


def ingest_settings(nats_server: NatsServer, database_url: str, tmp_path: Path, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "nats_url": nats_server.plain_url,
        "nats_user": "ingest",
        "nats_password": nats_server.passwords["ingest"],
        "database_url": database_url,
        "data_dir": tmp_path / "ingest",
        "batch_wait": 0.02,
        "catalog_timeout": 0.5,
    }
    values.update(overrides)
    return IngestSettings(**values)


StartIngest = Callable[..., Awaitable[RunningIngest]]


@pytest.fixture
def ingest_db_url(sqlite_url: str) -> str:
    """SQLite unless a test module overrides this with `database_url` (SQLite and PostgreSQL)."""
    return sqlite_url


@pytest.fixture
async def start_ingest(
    nats_server: NatsServer, admin_nc: Client, ingest_db_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> AsyncIterator[StartIngest]:
    """Start ingest (as `python -m ingest` would, in-process) with settings overrides; stopped at the end."""
    running: list[tuple[Any, httpx.AsyncClient]] = []

    # The same key as test_commands' `issuer` fixture (prepare keeps the key it finds).
    issuer = EmbeddedIssuer.prepare(tmp_path / "issuer")

    async def start(*, auth: AuthSettings | None = None, **overrides: Any) -> RunningIngest:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        settings = ingest_settings(nats_server, ingest_db_url, tmp_path, **overrides)
        auth = auth or AuthSettings(_env_file=None, mode="embedded", jwks_url=issuer.jwks_path.as_uri())
        app = create_app(settings, tracer_provider=provider, auth=auth)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        runtime: IngestRuntime = app.state.runtime
        await asyncio.wait_for(runtime.consuming.wait(), 20)
        # The secretariat reads every agency's events and rejections; /metrics goes as the operator.
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest", auth=StackAuth(issuer)
        )
        running.append((lifespan, http))
        return RunningIngest(app=app, runtime=runtime, http=http, settings=settings)

    yield start
    for lifespan, http in reversed(running):
        await http.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def ingest(start_ingest: StartIngest, catalog_kv: list[Measure]) -> RunningIngest:
    running = await start_ingest()
    assert running.runtime.mirror is not None
    await asyncio.wait_for(running.runtime.mirror.loaded.wait(), 10)
    return running


@pytest.fixture
async def publisher_for(nats_server: NatsServer) -> AsyncIterator[Callable[[str], Awaitable[AgencyPublisher]]]:
    opened: list[AgencyPublisher] = []

    async def open_(agency: str) -> AgencyPublisher:
        publisher = AgencyPublisher(
            nats_server.plain_url, agency=agency, password=nats_server.passwords[agency], timeout=2, retries=1
        )
        await publisher.connect()
        opened.append(publisher)
        return publisher

    yield open_
    for p in opened:
        await p.close()
