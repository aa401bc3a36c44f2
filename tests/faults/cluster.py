"""Three nats-servers from the wheel as one JetStream cluster (R3 streams, `sync_interval: always`), every link
between them and every client link through a TCP proxy the test can cut: the deployed topology on loopback.

Node i dials node j through its own proxy `route[i][j]`, so a partition is a set of cut proxies, in both
directions. A node advertises a route address nothing listens on, so no node can reach another around the
proxies by gossip (the explicit routes are a full mesh); clients are not told the nodes' own addresses
(`no_advertise`) and reach each node through `client[i]`. The supervisor of the tests is this module: a killed
node stays down until `start_node` (as a node restarted by its orchestrator).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from shinchoku_runtime.harness import _write_secrets
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.natsconf import load_or_create_secrets
from shinchoku_runtime.natsserver import NatsServer, free_port
from shinchoku_runtime.streamdefs import AgencyQuota, apply_streams

from .proxy import ProxyLoop, TcpProxy

CLUSTER = "shinchoku"


#: Each agency's share of STATUS on the fault cluster (see `declare_streams`).
FAULT_SUITE_SHARE = AgencyQuota(max_bytes=3 * 1024 * 1024)


@dataclass
class Node:
    """One nats-server of the cluster and the proxies in front of it."""

    index: int
    server: NatsServer
    #: Clients (services, agencies, the observer) reach the node through this.
    client: TcpProxy
    #: routes_out[j]: this node's link to node j.
    routes_out: dict[int, TcpProxy] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.server.options.server_name

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def store_dir(self) -> Path:
        return Path(self.server.options.store_dir)

    def healthy(self) -> bool:
        """JetStream on this node is up and current (nats-server's own /healthz)."""
        if not self.running:
            return False
        url = f"http://127.0.0.1:{self.server.options.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def jsz(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.server.options.monitor_port}/jsz"
        with urllib.request.urlopen(url, timeout=2) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body


@dataclass
class ProxiedCluster:
    directory: Path
    nodes: list[Node]
    loop: ProxyLoop
    replicas: int = 3

    @classmethod
    def create(cls, directory: Path, *, size: int = 3, store_dirs: dict[int, Path] | None = None) -> ProxiedCluster:
        """`store_dirs`: a node's JetStream store somewhere else (a small filesystem for the full-disk scenario)."""
        loop = ProxyLoop()
        secrets = load_or_create_secrets(directory)
        cluster_ports = [free_port() for _ in range(size)]
        client_ports = [free_port() for _ in range(size)]
        route_proxies = {
            (i, j): TcpProxy(f"route n{i + 1}->n{j + 1}", cluster_ports[j], loop).start()
            for i in range(size)
            for j in range(size)
            if i != j
        }
        nodes = []
        for i in range(size):
            node_dir = directory / f"n{i + 1}"
            _write_secrets(node_dir, secrets)
            server = NatsServer.create(
                node_dir,
                port=client_ports[i],
                server_name=f"{CLUSTER}-{i + 1}",
                cluster_name=CLUSTER,
                cluster_port=cluster_ports[i],
                routes=tuple(f"nats-route://{route_proxies[i, j].address}" for j in range(size) if j != i),
                # Gossip must not open a path around the proxies: peers are told an address nothing listens on.
                cluster_advertise=f"127.0.0.1:{free_port()}",
                no_advertise=True,
                monitor_port=free_port(),
            )
            if store_dirs and i in store_dirs:
                server.options = replace(server.options, store_dir=store_dirs[i])
            client = TcpProxy(f"client->n{i + 1}", client_ports[i], loop).start()
            nodes.append(Node(i, server, client, routes_out={j: route_proxies[i, j] for j in range(size) if j != i}))
        return cls(directory=directory, nodes=nodes, loop=loop)

    @classmethod
    def started(
        cls, directory: Path, *, store_dirs: dict[int, Path] | None = None, attempts: int = 3
    ) -> ProxiedCluster:
        """A cluster created and started; created again on other ports when a node could not bind a port picked
        free because another process took it meanwhile (pytest-xdist workers pick ports at the same moment, and
        `free_port` cannot reserve one: seen once in CI as a node's `bind: address already in use`)."""
        for attempt in range(1, attempts + 1):
            cluster = cls.create(directory / f"attempt-{attempt}", store_dirs=store_dirs)
            try:
                return cluster.start()
            except TimeoutError:
                taken = any("address already in use" in cluster.log_tail(n, 200) for n in cluster.nodes)
                cluster.stop()
                if not taken or attempt == attempts:
                    raise
                for store in (store_dirs or {}).values():  # a node that did start wrote its store
                    shutil.rmtree(store, ignore_errors=True)
        raise AssertionError("unreachable")

    # --- addresses ------------------------------------------------------------------------------------

    @property
    def passwords(self) -> dict[str, str]:
        return load_or_create_secrets(self.directory)

    @property
    def url(self) -> str:
        """Every node's client proxy, comma-separated (the services' `nats_url` form)."""
        return ",".join(f"nats://{n.client.address}" for n in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> ProxiedCluster:
        for node in self.nodes:
            node.server.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not node.healthy():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} not healthy after {timeout:.0f}s:\n{self.log_tail(node)}")
                time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()
        for node in self.nodes:
            node.client.stop()
            for proxy in node.routes_out.values():
                proxy.stop()
        self.loop.close()

    def log_tail(self, node: Node, lines: int = 30) -> str:
        log = node.server.log_file
        if log is None:
            return "(no log)"
        with contextlib.suppress(OSError):
            return "\n".join(log.read_text("utf-8", errors="replace").splitlines()[-lines:])
        return "(no log)"

    # --- faults ---------------------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """SIGKILL, as a crash or a power cut of that one machine would."""
        if node.server.process is not None:
            node.server.signal(signal.SIGKILL)
            node.server.process.wait(10)
            node.server.process = None

    def start_node(self, node: Node, timeout: float = 60.0) -> None:
        node.server.start()
        deadline = time.monotonic() + timeout
        while not node.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} did not rejoin in {timeout:.0f}s:\n{self.log_tail(node)}")
            time.sleep(0.2)

    def isolate(self, node: Node) -> None:
        """Cut `node` off from its peers (both directions) and from every client."""
        node.client.cut()
        for other in self.nodes:
            if other is node:
                continue
            node.routes_out[other.index].cut()
            other.routes_out[node.index].cut()

    def heal(self) -> None:
        for node in self.nodes:
            node.client.heal()
            for proxy in node.routes_out.values():
                proxy.heal()

    @contextlib.contextmanager
    def partitioned(self, node: Node) -> Iterator[None]:
        self.isolate(node)
        try:
            yield
        finally:
            self.heal()

    # --- streams, as admin ----------------------------------------------------------------------------

    async def admin(self) -> Client:
        return await connect(self.url, name="fault-cluster-admin", user="admin", password=self.passwords["admin"])

    async def declare_streams(self) -> list[str]:
        """The shared streams, R3, applied by the administrative identity (the services only check them, and
        refuse to start on a stream unlike its definition)."""
        nc = await self.admin()
        try:
            # Small agency shares: JetStream reserves each share on every node, and node 3's store may be a small
            # tmpfs (the full-disk scenario); every scenario's load stays far below 3 MiB per agency.
            return await apply_streams(nc.jetstream(), replicas=self.replicas, quota=FAULT_SUITE_SHARE)
        finally:
            await nc.close()

    async def leader(self, nc: Client, stream: str, timeout: float = 60.0) -> Node:
        """The node leading `stream` (waiting out an election)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                info = await nc.jetstream().stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return self.node(info.cluster.leader)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stream} has no leader after {timeout:.0f}s")
            await asyncio.sleep(0.5)

    async def wait_stream_current(self, nc: Client, stream: str, timeout: float = 60.0) -> None:
        """Until `stream` has a leader and every replica is current (a rejoined node caught up)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                info = await nc.jetstream().stream_info(stream)
                c = info.cluster
                if c is not None and c.leader and c.replicas and all(r.current for r in c.replicas):
                    if len(c.replicas) == self.replicas - 1:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stream}'s replicas not current after {timeout:.0f}s")
            await asyncio.sleep(0.5)
