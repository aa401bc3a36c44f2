"""Every agency against every other: inboxes and streams are refused by the broker, for all 17 of them.

test_broker_permissions.py checks publishing for every pair and listening for one agency; this completes the
matrix for listening: each agency subscribing to each other agency's inbox, and each agency trying to create a
JetStream consumer on STATUS, ACCEPTED and REJECTED.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client

from contracts.agencies import Agency
from contracts.streams import agency_inbox_prefix
from shinchoku_runtime.natsserver import NatsServer

AGENCIES = [a.value for a in Agency]


async def _connect(server: NatsServer, agency: str, errors: list[str]) -> Client:
    async def error_cb(e: Exception) -> None:
        errors.append(str(e))

    return await nats.connect(
        server.plain_url,
        user=agency,
        password=server.passwords[agency],
        inbox_prefix=agency_inbox_prefix(agency),
        error_cb=error_cb,
        max_reconnect_attempts=0,
    )


async def _violations(errors: list[str], expected: int, timeout: float = 5.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if sum("permissions violation for subscription" in e for e in errors) >= expected:
            break
        await asyncio.sleep(0.02)
    return sum("permissions violation for subscription" in e for e in errors)


async def test_no_agency_can_listen_on_another_agencys_inbox(nats_server: NatsServer) -> None:
    async def one(agency: str) -> tuple[str, int, int]:
        errors: list[str] = []
        nc = await _connect(nats_server, agency, errors)
        others = [a for a in AGENCIES if a != agency]
        for other in others:
            await nc.subscribe(f"{agency_inbox_prefix(other)}.>")
        await nc.subscribe(f"{agency_inbox_prefix(agency)}.>")  # its own: allowed
        await nc.flush()
        refused = await _violations(errors, len(others))
        await nc.close()
        return agency, refused, len(others)

    results = await asyncio.gather(*(one(a) for a in AGENCIES))
    assert [(a, r) for a, r, n in results if r != n] == []
    assert sum(r for _, r, _ in results) == 17 * 16


@pytest.mark.parametrize("stream", ["STATUS", "ACCEPTED", "REJECTED"])
async def test_no_agency_can_create_a_consumer(nats_server: NatsServer, admin_nc: Client, stream: str) -> None:
    subject = {"STATUS": "status.>", "ACCEPTED": "accepted.>", "REJECTED": "rejected.>"}[stream]

    async def one(agency: str) -> str | None:
        errors: list[str] = []
        nc = await _connect(nats_server, agency, errors)
        try:
            await nc.jetstream(timeout=1.0).pull_subscribe(subject, durable=f"snoop-{agency}", stream=stream)
        except Exception:
            return None  # refused (no response to a denied API request, or an API error)
        finally:
            await nc.close()
        return agency

    created = [a for a in await asyncio.gather(*(one(a) for a in AGENCIES)) if a is not None]
    assert created == [], f"agencies that could create a consumer on {stream}: {created}"
    info = await admin_nc.jetstream().stream_info(stream)
    assert info.state.consumer_count == 0
