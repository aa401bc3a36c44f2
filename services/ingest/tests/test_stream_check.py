"""Ingest checks the shared streams at start-up and never rewrites them: a live stream that differs from the
definition (its limits, its replicas) makes ingest refuse to consume, say which field and why (a CRITICAL log and
/healthz 503), and leaves the stream exactly as it found it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from contracts.streams import ACCEPTED_STREAM
from ingest.app import create_app
from shinchoku_runtime.natsclient import stream_config
from shinchoku_runtime.natsserver import NatsServer

from .conftest import ingest_settings


async def _refusal(
    nats_server: NatsServer,
    sqlite_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    stream: str,
    **overrides: object,
) -> dict[str, object]:
    """Start ingest, wait for its refusal, and return /healthz's body (asserting a 503 and a CRITICAL log)."""
    app = create_app(ingest_settings(nats_server, sqlite_url, tmp_path, **overrides))
    lifespan = app.router.lifespan_context(app)
    with caplog.at_level(logging.CRITICAL, logger="ingest"):
        await lifespan.__aenter__()
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while app.state.runtime.refused is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as http:
                health = await http.get("/healthz")
        finally:
            await lifespan.__aexit__(None, None, None)
    assert health.status_code == 503, health.text
    body: dict[str, object] = health.json()
    assert any(r.levelno == logging.CRITICAL and stream in r.getMessage() for r in caplog.records), caplog.text
    return body


async def test_a_stream_with_other_limits_is_refused_and_left_alone(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    js = admin_nc.jetstream()
    shortened = dataclasses.replace(stream_config(ACCEPTED_STREAM), max_msgs=10, max_age=3600.0)
    await js.update_stream(shortened)

    body = await _refusal(nats_server, sqlite_url, tmp_path, caplog, "ACCEPTED")

    refused = str(body.get("refused"))
    assert "ACCEPTED" in refused
    assert "max_msgs" in refused
    assert "max_age" in refused
    live = (await js.stream_info(ACCEPTED_STREAM.name)).config
    assert live.max_msgs == 10  # untouched: ingest did not "update it back"
    assert live.max_age == 3600.0


async def test_a_stream_with_other_replicas_is_refused_and_left_alone(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The deployment says R3 (stream_replicas=3) and the live stream is R1: ingest says so rather than run on a
    stream that does not keep what the deployment promises (and, the other way round, never shrinks an R3)."""
    body = await _refusal(nats_server, sqlite_url, tmp_path, caplog, "STATUS", stream_replicas=3)

    refused = str(body.get("refused"))
    assert "num_replicas" in refused
    for name in ("STATUS", "ACCEPTED", "REJECTED"):
        assert (await admin_nc.jetstream().stream_info(name)).config.num_replicas == 1
