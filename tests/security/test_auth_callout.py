"""One identity across HTTP and NATS: a person's bearer token, the same the HTTP APIs take, opens a NATS
connection with exactly its principal's rights, through nats-server's auth callout and the responder
(`python -m shinchoku_runtime.authcallout`) on a TLS 3-node cluster. The responder verifies tokens as the
services do; a token from another key, an expired one, none at all or the operator's are refused; an agency
cannot publish another agency's subject; the services keep their passwords.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.streams import agency_inbox_prefix, status_subject
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_client.cli import nats_connect_options
from shinchoku_client.publisher import AgencyPublisher, PublishError
from shinchoku_runtime import natsjwt
from shinchoku_runtime.auth.settings import embedded_jwks_path
from shinchoku_runtime.harness import NatsCluster, ServiceProcess
from shinchoku_runtime.natsclient import ensure_streams
from shinchoku_runtime.natsconf import AUTH_CALLOUT_USER, AuthCallout, ensure_secret, write_private
from shinchoku_runtime.natsserver import free_port


@dataclass
class Callout:
    cluster: NatsCluster
    issuer: EmbeddedIssuer
    responder: ServiceProcess


def _wait_for_responder(process: ServiceProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "auth callout responder ready" not in process.log_tail(200):
        if not process.running:
            raise RuntimeError(f"the responder exited:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the responder is not ready:\n{process.log_tail()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def callout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callout]:
    root = tmp_path_factory.mktemp("callout")
    issuer = EmbeddedIssuer.prepare(root / "idp")
    account = natsjwt.KeyPair.create(natsjwt.PREFIX_ACCOUNT)
    seed_file = root / "callout" / "issuer.nk"
    write_private(seed_file, account.seed + "\n")
    password = ensure_secret(root / "nats", AUTH_CALLOUT_USER)
    cluster = NatsCluster.create(
        root / "nats", secure=True, auth_callout=AuthCallout(issuer=account.public, password=password)
    ).start()
    assert cluster.ca_file is not None
    env = {
        "SHINCHOKU_AUTHCALLOUT_NATS_URL": cluster.urls(),
        "SHINCHOKU_AUTHCALLOUT_NATS_PASSWORD": password,
        "SHINCHOKU_AUTHCALLOUT_NATS_TLS_CA_FILE": str(cluster.ca_file),
        "SHINCHOKU_AUTHCALLOUT_ISSUER_SEED_FILE": str(seed_file),
        "SHINCHOKU_AUTHCALLOUT_DATA_DIR": str(root / "callout"),
        "SHINCHOKU_AUTH_MODE": "embedded",
        "SHINCHOKU_AUTH_JWKS_URL": embedded_jwks_path(root / "idp").resolve().as_uri(),
    }
    responder = ServiceProcess(
        name="authcallout",
        module="shinchoku_runtime.authcallout",
        env=env,
        port=free_port(),
        log_file=root / "callout" / "authcallout.log",
    ).start()
    try:
        _wait_for_responder(responder)
        yield Callout(cluster=cluster, issuer=issuer, responder=responder)
    finally:
        responder.stop()
        cluster.stop()


async def _connect(callout: Callout, *, node: int, errors: list[str], inbox: str = "_INBOX", **auth: Any) -> Client:
    async def error_cb(e: Exception) -> None:
        errors.append(str(e))

    url = callout.cluster.urls().split(",")[node]
    return await nats.connect(
        url,
        inbox_prefix=inbox,
        error_cb=error_cb,
        max_reconnect_attempts=0,
        allow_reconnect=False,
        connect_timeout=10,
        **auth,
        **callout.cluster.tls_options(),
    )


@pytest.fixture
async def admin(callout: Callout) -> AsyncIterator[Client]:
    nc = await nats.connect(callout.cluster.urls("admin").split(",")[0], **callout.cluster.tls_options())
    try:
        yield nc
    finally:
        await nc.close()


async def test_an_agency_token_gets_the_agency_rights_and_no_more(callout: Callout, admin: Client) -> None:
    seen: list[str] = []

    async def on_status(msg: Msg) -> None:
        seen.append(msg.subject)

    sub = await admin.subscribe("status.>", cb=on_status)
    await admin.flush()
    token = callout.issuer.mint(principal_named("mof", "tanaka"))
    errors: list[str] = []
    # Connected to another node than the responder necessarily is: the callout works across the cluster.
    nc = await _connect(callout, node=2, errors=errors, inbox=agency_inbox_prefix("mof"), token=token)
    try:
        await nc.publish(status_subject("mof", "1-1"), b"{}")
        await nc.publish(status_subject("digital", "1-1"), b'{"forged": true}')
        await nc.publish("review.mof.1-1", b'{"forged": true}')
        await nc.flush()
        deadline = asyncio.get_running_loop().time() + 10
        while (len(errors) < 2 or not seen) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
        await sub.unsubscribe()
    assert seen == [status_subject("mof", "1-1")], "only the agency's own subject went through"
    violations = [e for e in errors if "permissions violation" in e.lower()]
    assert any("status.digital" in e for e in violations), errors
    assert any("review.mof" in e for e in violations), errors


async def test_the_secretariat_token_may_review_but_not_report(callout: Callout) -> None:
    token = callout.issuer.mint(principal_named("secretariat", "suzuki"))
    errors: list[str] = []
    nc = await _connect(callout, node=0, errors=errors, inbox=agency_inbox_prefix("secretariat"), token=token)
    try:
        await nc.publish("review.mof.1-1", b"{}")
        await nc.publish(status_subject("mof", "1-1"), b"{}")
        await nc.flush()
        deadline = asyncio.get_running_loop().time() + 10
        while not errors and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert len(errors) == 1, errors
    assert "status.mof" in errors[0], errors


@pytest.mark.parametrize(
    "case", ["another key", "expired", "another audience", "operator", "a guessed password", "nothing"]
)
async def test_a_token_that_does_not_verify_or_has_no_rights_is_refused(
    callout: Callout, tmp_path: Path, case: str
) -> None:
    mof = principal_named("mof", "tanaka")
    auth: dict[str, str] = {}
    if case == "another key":
        auth["token"] = EmbeddedIssuer.prepare(tmp_path / "other").mint(mof)
    elif case == "expired":
        auth["token"] = callout.issuer.mint(mof, ttl=timedelta(seconds=60), now=0)
    elif case == "another audience":
        auth["token"] = callout.issuer.mint(mof, audience="someone-else")
    elif case == "operator":
        auth["token"] = callout.issuer.mint(principal_named("operator", "ops"))
    elif case == "a guessed password":
        auth |= {"user": "mof", "password": "guessed"}
    errors: list[str] = []
    with pytest.raises((nats.errors.Error, OSError, NatsTimeoutError)) as refused:
        await _connect(callout, node=1, errors=errors, **auth)
    said = " ".join([str(refused.value), *errors]).lower()
    assert "authorization violation" in said, said
    reasons = {
        "another key": "does not publish",
        "expired": "expired",
        "another audience": "audience",
        "operator": "operator has no rights on nats",
        "a guessed password": "a bearer token is required",
        "nothing": "a bearer token is required",
    }
    deadline = time.monotonic() + 10
    while reasons[case] not in callout.responder.log_tail(400).lower() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert reasons[case] in callout.responder.log_tail(400).lower(), "the responder says why it refused"


async def test_services_keep_their_passwords(callout: Callout) -> None:
    errors: list[str] = []
    nc = await _connect(callout, node=1, errors=errors, user="ingest", password=callout.cluster.passwords["ingest"])
    try:
        assert nc.is_connected
    finally:
        await nc.close()


async def test_the_responder_logs_no_token(callout: Callout) -> None:
    # A connection of its own (the other tests' may run on another worker): one admission to log.
    token = callout.issuer.mint(principal_named("mof", "tanaka"))
    nc = await _connect(callout, node=1, errors=[], inbox=agency_inbox_prefix("mof"), token=token)
    await nc.close()
    deadline = time.monotonic() + 10
    while "admitted" not in callout.responder.log_tail(400) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    text = callout.responder.log_file.read_text("utf-8", errors="replace")
    assert "admitted" in text
    assert "eyJ" not in text, "a JWT (token or user JWT) was written to the log"
    assert os.stat(callout.responder.env["SHINCHOKU_AUTHCALLOUT_ISSUER_SEED_FILE"]).st_mode & 0o777 == 0o600


async def test_a_ministrys_client_publishes_with_its_token_over_tls(callout: Callout, admin: Client) -> None:
    """`shinchoku-client import --nats-url nats://host:port --nats-ca ca.pem --token …`: no NATS password at all."""
    await ensure_streams(admin.jetstream())
    url = callout.cluster.urls()
    token = callout.issuer.mint(principal_named("mof", "tanaka"))
    options = nats_connect_options(url, token=token, ca_file=callout.cluster.ca_file)
    assert set(options) == {"tls", "token"}
    async with AgencyPublisher(url, agency="mof", connect_options=options) as publisher:
        ack = await publisher.publish_raw(status_subject("mof", "1-1"), b"{}")
        assert ack.stream == "STATUS_mof"  # mof's own share of STATUS
        with pytest.raises(PublishError, match=r"(?i)permission"):
            await publisher.publish_raw(status_subject("digital", "1-1"), b"{}")


async def test_the_nats_session_ends_when_the_token_expires(callout: Callout) -> None:
    """The user JWT expires with the token: the server ends the session then (and a token that is still valid
    keeps its session over the same time)."""
    short = callout.issuer.mint(principal_named("mof", "tanaka"), ttl=timedelta(seconds=4))
    lasting = callout.issuer.mint(principal_named("mof", "tanaka"))
    errors: list[str] = []
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    inbox = agency_inbox_prefix("mof")
    started = time.monotonic()
    nc = await _connect(callout, node=0, errors=errors, inbox=inbox, token=short, closed_cb=on_closed)
    steady = await _connect(callout, node=1, errors=[], inbox=inbox, token=lasting)
    try:
        assert nc.is_connected
        await asyncio.wait_for(closed.wait(), timeout=30)
        lived = time.monotonic() - started
        assert 2.0 <= lived <= 15, f"the session lasted {lived:.1f} s for a 4 s token"
        assert steady.is_connected, "a valid token's session stays"
    finally:
        await steady.close()
