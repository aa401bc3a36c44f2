"""A deployment's NATS transport: a 3-node cluster from the wheel with TLS on the client port, mutual TLS and
route authorization between the nodes. A client that does not speak TLS, one that does not trust the cluster's
CA, and a node that dials the routes without the route password are all refused; a client with the CA works
end to end (an R3 stream acknowledged by the cluster).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig
from prometheus_client import CollectorRegistry

from shinchoku_runtime.broker import make_broker
from shinchoku_runtime.certs import CertificateAuthority
from shinchoku_runtime.harness import NatsCluster
from shinchoku_runtime.natsclient import connect_service
from shinchoku_runtime.natsconf import ROUTE_USER
from shinchoku_runtime.natsserver import NatsServer, free_port
from shinchoku_runtime.settings import ServiceSettings


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    running = NatsCluster.create(tmp_path_factory.mktemp("tls") / "nats", secure=True).start()
    try:
        yield running
    finally:
        running.stop()


def _monitor(node: NatsServer, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.options.monitor_port}/{path}", timeout=5) as answer:
        result: dict[str, Any] = json.load(answer)
        return result


def _remote_names(node: NatsServer) -> set[str]:
    return {r.get("remote_name") for r in _monitor(node, "routez").get("routes", [])}


def test_every_node_requires_tls_and_routes_with_tls(cluster: NatsCluster) -> None:
    names = {n.options.server_name for n in cluster.nodes}
    for node in cluster.nodes:
        varz = _monitor(node, "varz")
        assert varz["tls_required"] is True, node.options.server_name
        assert varz["cluster"].get("tls_required") is True, varz["cluster"]
        assert _remote_names(node) == names - {node.options.server_name}, "a full mesh of routes"


async def test_a_client_with_the_ca_works_end_to_end(cluster: NatsCluster) -> None:
    nc = await nats.connect(
        cluster.urls("admin").split(","), name="tls-check", max_reconnect_attempts=0, **cluster.tls_options()
    )
    try:
        assert nc.connected_url is not None
        node = next(n for n in cluster.nodes if n.options.port == nc.connected_url.port)
        mine = [c for c in _monitor(node, "connz")["connections"] if c.get("name") == "tls-check"]
        assert len(mine) == 1, mine
        assert mine[0]["tls_version"].startswith("1.3"), mine
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="TLSCHECK", subjects=["tls.check"], num_replicas=3))
        ack = await js.publish("tls.check", b"over TLS, replicated over TLS routes")
        assert ack.seq == 1
    finally:
        await nc.close()


async def test_a_service_connects_over_tls_from_its_settings(
    cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cluster.ca_file is not None
    monkeypatch.setenv("SHINCHOKU_CATALOG_NATS_TLS_CA_FILE", str(cluster.ca_file))

    class CatalogSettings(ServiceSettings, env_prefix="SHINCHOKU_CATALOG_"):
        pass

    settings = CatalogSettings(nats_url=cluster.urls(), nats_user="catalog", nats_password=cluster.passwords["catalog"])
    assert settings.nats_tls_ca_file == cluster.ca_file
    nc = await connect_service(settings, name="tls-service", max_reconnect_attempts=0)
    try:
        assert nc.is_connected
    finally:
        await nc.close()
    broker = make_broker(settings, service="catalog", tracer_provider=None, registry=CollectorRegistry())
    connection = await broker.connect()
    try:
        assert connection.is_connected
    finally:
        await broker.stop()

    without_ca = CatalogSettings(
        nats_url=cluster.urls(), nats_user="catalog", nats_password=cluster.passwords["catalog"], nats_tls_ca_file=None
    )
    with pytest.raises(Exception, match=r"(?i)certificate verify failed"):
        await connect_service(without_ca, name="tls-service", max_reconnect_attempts=0, allow_reconnect=False)


def test_a_client_without_tls_is_refused(cluster: NatsCluster) -> None:
    node = cluster.nodes[0]
    password = cluster.passwords["admin"]
    with socket.create_connection(("127.0.0.1", node.options.port), timeout=5) as s:
        info = s.recv(65536).decode()
        assert info.startswith("INFO ")
        assert json.loads(info[5:])["tls_required"] is True
        connect = {"verbose": False, "pedantic": False, "user": "admin", "pass": password, "tls_required": False}
        s.sendall(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        answer = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert b"PONG" not in answer, "a plain-text client was let in"
    assert b"TLS Required" in answer or answer == b"", answer


async def test_a_client_that_does_not_trust_the_ca_is_refused(cluster: NatsCluster) -> None:
    # nats-py upgrades to TLS because the server requires it, with the system's trust store: our CA is not there.
    with pytest.raises(Exception, match=r"(?i)certificate verify failed"):
        await nats.connect(cluster.urls("admin").split(",")[0], max_reconnect_attempts=0, allow_reconnect=False)


def rogue_node(cluster: NatsCluster, directory: Path, *, route_password: str | None) -> NatsServer:
    """A fourth node with a certificate from the cluster's own CA (so TLS passes) that dials every route."""
    assert cluster.ca_file is not None
    ca = CertificateAuthority.from_files(cluster.ca_file, cluster.ca_file.parent / "ca-key.pem")
    tls = ca.issue(directory / "tls", "rogue", dns=["localhost"], ips=["127.0.0.1"], client=True)
    routes = tuple(f"nats-route://127.0.0.1:{n.options.cluster_port}" for n in cluster.nodes)
    return NatsServer.create(
        directory,
        server_name="rogue",
        cluster_name="shinchoku",
        cluster_port=free_port(),
        routes=routes,
        monitor_port=free_port(),
        tls=tls,
        cluster_tls=tls,
        route_password=route_password,
    )


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def test_a_route_without_credentials_is_refused(cluster: NatsCluster, tmp_path: Path) -> None:
    logs = [n.log_file for n in cluster.nodes if n.log_file is not None]
    before = [log.stat().st_size for log in logs]
    rogue = rogue_node(cluster, tmp_path / "rogue", route_password=None).start()
    try:

        def refused_by_all() -> bool:
            seen = [log.read_bytes()[start:] for log, start in zip(logs, before, strict=True)]
            return all(b"Router connection closed: Authentication Failure" in text for text in seen)

        assert wait_until(refused_by_all, 20), "every node refuses the route: authentication failure"
        assert _monitor(rogue, "routez").get("routes") in (None, []), "no route came up"
        assert all("rogue" not in _remote_names(n) for n in cluster.nodes)
    finally:
        rogue.stop()

    # The control: the same node with the route password joins, so the refusal was the credentials'.
    admitted = rogue_node(cluster, tmp_path / "admitted", route_password=cluster.passwords[ROUTE_USER]).start()
    try:
        assert wait_until(lambda: all("rogue" in _remote_names(n) for n in cluster.nodes), 20)
    finally:
        admitted.stop()
