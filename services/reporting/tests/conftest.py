"""Reporting against a real nats-server and both databases; the catalog and ingest are stood in for."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.natsserver import NatsServer


@pytest.fixture
async def reporting_nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A connection as the `reporting` user (what `rebuild` uses)."""
    nc = await connect(
        nats_server.plain_url, name="test-reporting", user="reporting", password=nats_server.passwords["reporting"]
    )
    try:
        yield nc
    finally:
        await nc.close()
