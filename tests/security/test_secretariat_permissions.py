"""The secretariat's NATS user on a real nats-server: it publishes its commands and nothing else, hears its own
inbox and the alerts; nobody else publishes its commands; the shared streams take them in one order."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.streams import ACCEPTED_STREAM, STATUS_STREAM, agency_inbox_prefix
from shinchoku_runtime.natsclient import connect, ensure_streams, stream_config
from shinchoku_runtime.natsconf import SECRETARIAT_USER
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import status_sequence

COMMANDS = ("review.mof.1-25", "close.2024.3", "backfill.mof.1-25")


async def _connect(server: NatsServer, user: str, errors: list[str]) -> Client:
    async def error_cb(e: Exception) -> None:
        errors.append(str(e))

    return await nats.connect(
        server.plain_url,
        user=user,
        password=server.passwords[user],
        inbox_prefix=agency_inbox_prefix(user),
        error_cb=error_cb,
        max_reconnect_attempts=0,
    )


async def _violations(errors: list[str], kind: str, count: int) -> list[str]:
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        found = [e for e in errors if f"permissions violation for {kind}" in e]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    return [e for e in errors if f"permissions violation for {kind}" in e]


async def test_the_secretariat_publishes_its_commands_on_status(nats_server: NatsServer, admin_nc: Client) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, SECRETARIAT_USER, errors)
    js = nc.jetstream()
    acks = [
        await js.publish(subject, b"{}", stream="STATUS")
        for subject in ("review.mof.1-25", "close.2024.3", "backfill.mof.1-25")
    ]
    assert [a.seq for a in acks] == [1, 2, 3]
    await nc.close()
    info = await admin_nc.jetstream().stream_info("STATUS", subjects_filter=">")
    assert dict(info.state.subjects or {}) == {"review.mof.1-25": 1, "close.2024.3": 1, "backfill.mof.1-25": 1}


async def test_the_secretariat_publishes_nothing_else(nats_server: NatsServer, admin_nc: Client) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, SECRETARIAT_USER, errors)
    forbidden = ["status.mof.1-25", "accepted.mof.1-25", "reviewed.mof.1-25", "closed.2024.3", "rejected.mof"]
    for subject in forbidden:
        await nc.publish(subject, b"{}")
    await nc.flush()
    assert len(await _violations(errors, "publish", len(forbidden))) == len(forbidden), errors
    await nc.close()
    for stream in ("STATUS", "ACCEPTED", "REJECTED"):
        assert (await admin_nc.jetstream().stream_info(stream)).state.messages == 0


@pytest.mark.parametrize("subject", ["_INBOX_secretariat.>", "alert.>", "alert.mof.returned"])
async def test_the_secretariat_hears_its_inbox_and_the_alerts(nats_server: NatsServer, subject: str) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, SECRETARIAT_USER, errors)
    await nc.subscribe(subject)
    await nc.flush()
    await asyncio.sleep(0.2)
    assert not await _violations(errors, "subscription", 0), errors
    await nc.close()


@pytest.mark.parametrize("subject", ["_INBOX.>", "_INBOX_mof.>", "status.>", "accepted.>", "review.>"])
async def test_the_secretariat_hears_nothing_else(nats_server: NatsServer, subject: str) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, SECRETARIAT_USER, errors)
    await nc.subscribe(subject)
    await nc.flush()
    assert await _violations(errors, "subscription", 1), errors
    await nc.close()


@pytest.mark.parametrize("user", ["mof", "digital", "catalog", "ingest", "reporting"])
async def test_nobody_else_publishes_the_secretariats_commands(
    nats_server: NatsServer, admin_nc: Client, user: str
) -> None:
    """Reporting is the one exception, for reviews only: the dashboard's review form publishes the signed-in
    secretariat's reviews (each with that person's own token, which ingest verifies:
    tests/security/test_dashboard_reviews.py); it never publishes a close or a backfill."""
    errors: list[str] = []
    nc = await _connect(nats_server, user, errors)
    js = nc.jetstream()
    refused = ("close.2024.3", "backfill.mof.1-25") if user == "reporting" else COMMANDS
    for subject in refused:
        with pytest.raises(NatsTimeoutError):
            await js.publish(subject, b"{}", stream="STATUS", timeout=0.3)
    await nc.close()
    assert (await admin_nc.jetstream().stream_info("STATUS")).state.messages == 0


async def test_reporting_publishes_reviews_for_the_dashboard(nats_server: NatsServer, admin_nc: Client) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, "reporting", errors)
    ack = await nc.jetstream().publish("review.mof.1-25", b"{}", stream="STATUS", timeout=2)
    assert ack.stream == "STATUS"
    await nc.close()
    info = await admin_nc.jetstream().stream_info("STATUS", subjects_filter=">")
    assert dict(info.state.subjects or {}) == {"review.mof.1-25": 1}


async def test_ensure_streams_brings_streams_from_before_the_cycle_to_their_subjects(
    bare_nats_server: NatsServer,
) -> None:
    """A deployment's STATUS and ACCEPTED from before the reporting cycle (reports only) gain the commands'
    subjects when the admin declares the streams again, keeping what they hold."""
    nc = await connect(
        bare_nats_server.plain_url, name="test-admin", user="admin", password=bare_nats_server.passwords["admin"]
    )
    try:
        js = nc.jetstream()
        for spec in (STATUS_STREAM, ACCEPTED_STREAM):
            await js.add_stream(replace(stream_config(spec), subjects=[spec.subjects[0]], sources=None))
        await js.publish("status.mof.1-25", b"{}", stream="STATUS")
        await ensure_streams(js)
        for spec in (STATUS_STREAM, ACCEPTED_STREAM):
            info = await js.stream_info(spec.name)
            assert info.config.subjects == list(spec.listened)
        assert (await js.stream_info("STATUS")).state.messages == 1
        ack = await js.publish("review.mof.1-25", b"{}", stream="STATUS")
        assert ack.seq == 2
        # The reports now go to the agency's own stream first, and STATUS copies them in after what it held.
        ack = await js.publish("status.mof.1-25", b"{}", stream="STATUS_mof")
        assert ack.seq == 1
        assert await status_sequence(js, "status.mof.1-25", ack) == 3
    finally:
        await nc.close()
