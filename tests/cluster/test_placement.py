"""Declaring replicated streams on a cluster that is still forming (real 3-node nats-server cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import BadRequestError

from contracts.streams import STATUS_STREAM
from shinchoku_runtime.harness import NatsCluster
from shinchoku_runtime.streamdefs import apply_streams


@asynccontextmanager
async def two_of_three(tmp_path: Path) -> AsyncIterator[tuple[NatsCluster, Client]]:
    """A 3-node cluster with nodes 1 and 2 up (the third not started), and the admin connected to them."""
    cluster = NatsCluster.create(tmp_path / "nats").start(only=(0, 1))
    try:
        admin = await nats.connect(cluster.urls("admin", running_only=True).split(","))
        try:
            yield cluster, admin
        finally:
            await admin.close()
    finally:
        cluster.stop()


async def test_streams_wait_for_a_peer_that_has_not_reported_in_yet(tmp_path: Path) -> None:
    """Right after a cluster starts, the meta leader may not count every node as a peer yet: creating a stream of
    three replicas then fails with "no suitable peers for placement" (seen in CI as "…, peer offline") until it
    does. The administrator's declaration waits for the peers instead of failing the start of the stack."""
    async with two_of_three(tmp_path) as (cluster, admin):
        later = asyncio.get_running_loop().call_later(1.0, cluster.nodes[2].start)
        try:
            changes = await apply_streams(admin.jetstream(), replicas=3)
        finally:
            later.cancel()
        assert f"{STATUS_STREAM.name}: created" in changes
        assert (await admin.jetstream().stream_info(STATUS_STREAM.name)).config.num_replicas == 3


async def test_a_stream_that_cannot_be_placed_still_fails(tmp_path: Path) -> None:
    """Two nodes of three and no third coming: after the wait, the broker's refusal is what the caller gets."""
    async with two_of_three(tmp_path) as (_, admin):
        with pytest.raises(BadRequestError, match="no suitable peers"):
            await apply_streams(admin.jetstream(), replicas=3, placement_wait=1.0)
