"""Starting a nats-server from the wheel (`shinchoku_runtime.natsserver`, `harness.NatsCluster`) when a port it was
given is taken by the time it starts (a free port picked, then taken by another test's process)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from shinchoku_runtime.harness import NatsCluster
from shinchoku_runtime.natsserver import NatsServer, NatsServerExited, free_port


def test_a_server_whose_port_is_taken_says_so_at_once(tmp_path: Path) -> None:
    """Another process listens on the port: the server exits, and `start` says why (its log), instead of taking
    the other listener for the server (or, for its monitor or route port, waiting 15 s for a port it never
    opens)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NatsServer.create(tmp_path / "nats", port=port)
        started = time.monotonic()
        with pytest.raises(NatsServerExited, match="address already in use"):
            server.start()
        assert time.monotonic() - started < 10


def test_a_cluster_picks_other_ports_when_one_is_taken(tmp_path: Path) -> None:
    cluster = NatsCluster.create(tmp_path / "nats")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", cluster.nodes[1].options.monitor_port or free_port()))
        taken.listen()
        try:
            cluster.start()
            assert all(node.running for node in cluster.nodes)
            assert cluster.nodes[1].options.monitor_port != taken.getsockname()[1]
        finally:
            cluster.stop()
