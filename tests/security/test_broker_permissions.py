"""Nobody reports as someone else: the broker itself refuses every publish or subscribe outside a user's rights.

Each check is twofold: the client hears a permissions violation, and nothing reached the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat

import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.agencies import Agency
from contracts.streams import agency_inbox_prefix, status_subject
from shinchoku_runtime.natsconf import CONFIG_FILE, SECRETS_FILE, SERVICE_USERS, all_users
from shinchoku_runtime.natsserver import NatsServer

AGENCIES = list(Agency)


async def _connect(server: NatsServer, user: str, errors: list[str]) -> Client:
    async def error_cb(e: Exception) -> None:
        errors.append(str(e))

    inbox = agency_inbox_prefix(user) if user in {a.value for a in AGENCIES} else "_INBOX"
    return await nats.connect(
        server.plain_url,
        user=user,
        password=server.passwords[user],
        inbox_prefix=inbox,
        error_cb=error_cb,
        max_reconnect_attempts=0,
    )


async def _wait_for(errors: list[str], count: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(errors) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)


async def _status_subjects(admin: Client, expected: int = 17, timeout: float = 10.0) -> dict[str, int]:
    """STATUS's subjects once it holds `expected` messages (it copies the agencies' streams in), or at `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await admin.jetstream().stream_info("STATUS", subjects_filter=">")
        if info.state.messages >= expected or asyncio.get_running_loop().time() > deadline:
            return dict(info.state.subjects or {})
        await asyncio.sleep(0.05)


async def test_each_agency_publishes_only_as_itself(nats_server: NatsServer, admin_nc: Client) -> None:
    refused = 0
    for agency in AGENCIES:
        errors: list[str] = []
        nc = await _connect(nats_server, agency.value, errors)
        others = [a for a in AGENCIES if a is not agency]
        for other in others:
            await nc.publish(status_subject(other, "1-1"), b'{"forged": true}')
        await nc.publish(status_subject(agency, "1-1"), b"{}")  # its own subject: allowed
        await nc.flush()
        await _wait_for(errors, len(others))
        violations = [e for e in errors if "permissions violation for publish" in e]
        assert len(violations) == len(others), (agency, errors)
        refused += len(violations)
        await nc.close()
    subjects = await _status_subjects(admin_nc)
    # Only each agency's own message reached the stream: 17 subjects, one message each.
    assert subjects == {status_subject(a, "1-1"): 1 for a in AGENCIES}
    assert refused == 17 * 16


async def test_agency_jetstream_publish_elsewhere_is_refused(nats_server: NatsServer, admin_nc: Client) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, "moj", errors)
    js = nc.jetstream()
    ack = await js.publish(status_subject("moj", "1-1"), b"{}", stream="STATUS_moj")
    assert ack.seq == 1
    with pytest.raises(NatsTimeoutError):
        await js.publish(status_subject("digital", "1-1"), b"{}", stream="STATUS_digital", timeout=0.5)
    assert any("status.digital.1-1" in e for e in errors)
    await nc.close()
    assert await _status_subjects(admin_nc, 1) == {status_subject("moj", "1-1"): 1}


@pytest.mark.parametrize(
    "subject",
    [f"{agency_inbox_prefix('digital')}.>", "_INBOX.>", "accepted.>", "rejected.>", "status.>", ">"],
)
async def test_agency_cannot_listen_elsewhere(nats_server: NatsServer, subject: str) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, "mof", errors)
    await nc.subscribe(subject)
    await nc.flush()
    await _wait_for(errors, 1)
    assert any("permissions violation for subscription" in e for e in errors), errors
    await nc.close()


async def test_agency_cannot_consume_the_streams(nats_server: NatsServer, admin_nc: Client) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, "mhlw", errors)
    js = nc.jetstream(timeout=0.5)
    for stream, subject in (("ACCEPTED", "accepted.>"), ("REJECTED", "rejected.>"), ("STATUS", "status.>")):
        with pytest.raises((NatsTimeoutError, nats.js.errors.Error, nats.errors.Error)):
            await js.pull_subscribe(subject, durable="snoop", stream=stream)
    await nc.close()
    for stream in ("ACCEPTED", "REJECTED", "STATUS"):
        info = await admin_nc.jetstream().stream_info(stream)
        assert info.state.consumer_count == 0


@pytest.mark.parametrize("user", ["catalog", "ingest", "reporting"])
async def test_services_cannot_publish_status(nats_server: NatsServer, admin_nc: Client, user: str) -> None:
    errors: list[str] = []
    nc = await _connect(nats_server, user, errors)
    await nc.publish(status_subject("digital", "1-1"), b"{}")
    await nc.flush()
    await _wait_for(errors, 1)
    assert any("permissions violation for publish" in e for e in errors), errors
    await nc.close()
    assert await _status_subjects(admin_nc, expected=1, timeout=1.0) == {}


async def test_only_ingest_writes_accepted_and_rejected(nats_server: NatsServer, admin_nc: Client) -> None:
    for user in ("catalog", "reporting", "digital"):
        errors: list[str] = []
        nc = await _connect(nats_server, user, errors)
        await nc.publish("accepted.digital.1-1", b"{}")
        await nc.publish("rejected.digital", b"{}")
        await nc.flush()
        await _wait_for(errors, 2)
        assert sum("permissions violation for publish" in e for e in errors) == 2, (user, errors)
        await nc.close()
    for stream in ("ACCEPTED", "REJECTED"):
        assert (await admin_nc.jetstream().stream_info(stream)).state.messages == 0


def test_secrets_are_generated_and_private(nats_server: NatsServer) -> None:
    directory = nats_server.directory
    secrets = json.loads((directory / SECRETS_FILE).read_text())
    assert set(secrets) == set(all_users())
    assert len(set(secrets.values())) == len(secrets), "every user has its own secret"
    assert all(len(s) >= 24 for s in secrets.values())
    assert not {"password", "secret", "changeme", "nats", ""} & set(secrets.values())
    for name in (SECRETS_FILE, CONFIG_FILE):
        mode = stat.S_IMODE(os.stat(directory / name).st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert set(SERVICE_USERS) <= set(secrets)


async def test_no_anonymous_access(nats_server: NatsServer) -> None:
    with pytest.raises(Exception, match=r"[Aa]uthorization"):
        await nats.connect(nats_server.plain_url, max_reconnect_attempts=0, allow_reconnect=False)
    with pytest.raises(Exception, match=r"[Aa]uthorization"):
        await nats.connect(
            nats_server.plain_url, user="digital", password="wrong", max_reconnect_attempts=0, allow_reconnect=False
        )
