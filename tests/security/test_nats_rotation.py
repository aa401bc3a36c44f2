"""Rotating the route password of a running TLS cluster without losing a message (deploy/OPERATIONS.md):
a new password in the secrets, every node's configuration rendered again, the three nodes reloaded (SIGHUP) one
right after the other. A publisher keeps publishing to an R3 stream throughout, retrying what times out with the
same message id; afterwards every acknowledged message is in the stream exactly once, the routes are a full mesh
again with the new password, and the old one is nowhere in the configurations. Prints the longest pause.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.js.api import StreamConfig
from nats.js.errors import Error as JetStreamError

from shinchoku_runtime.harness import NatsCluster, _write_secrets
from shinchoku_runtime.natsconf import ROUTE_USER, load_or_create_secrets, rotate_secret, write_config
from shinchoku_runtime.natsserver import NatsServer
from tests.security.test_nats_tls import rogue_node, wait_until


def _remote_names(node: NatsServer) -> set[str]:
    url = f"http://127.0.0.1:{node.options.monitor_port}/routez"
    with urllib.request.urlopen(url, timeout=5) as answer:
        routes: list[dict[str, Any]] = json.load(answer).get("routes") or []
    return {r.get("remote_name", "") for r in routes}


def _full_mesh(cluster: NatsCluster) -> bool:
    names = {n.options.server_name for n in cluster.nodes}
    return all(_remote_names(n) == names - {n.options.server_name} for n in cluster.nodes)


async def test_route_password_rotation_loses_no_message(tmp_path: Path) -> None:
    cluster = NatsCluster.create(tmp_path / "nats", secure=True).start()
    try:
        nc = await nats.connect(cluster.urls("admin").split(","), **cluster.tls_options())
        js = nc.jetstream(timeout=2)
        await js.add_stream(StreamConfig(name="ROTATION", subjects=["rotation.>"], num_replicas=3))
        acked: list[int] = []
        ack_times: list[float] = []
        stop = asyncio.Event()

        async def publish() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                while True:
                    try:
                        await js.publish(f"rotation.{n % 7}", str(n).encode(), headers={"Nats-Msg-Id": str(n)})
                        break
                    except (TimeoutError, NatsError, JetStreamError):
                        await asyncio.sleep(0.05)  # the same id again: JetStream de-duplicates
                acked.append(n)
                ack_times.append(time.monotonic())
                await asyncio.sleep(0.005)

        publisher = asyncio.create_task(publish())
        await asyncio.sleep(1.0)
        old = cluster.passwords[ROUTE_USER]

        # The rotation: a new secret, each node's configuration rendered again, then reload the three in a row.
        new = rotate_secret(cluster.directory, ROUTE_USER)
        secrets = load_or_create_secrets(cluster.directory)
        rotated_at = time.monotonic()
        for node in cluster.nodes:
            _write_secrets(node.directory, secrets)
            node.options = replace(node.options, route_password=new)
            write_config(node.directory, node.options)
        for node in cluster.nodes:
            node.signal(signal.SIGHUP)

        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(_full_mesh, cluster):
            assert time.monotonic() < deadline, "the routes did not come back with the new password"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stop.set()
        await publisher

        info = await js.stream_info("ROTATION")
        assert info.state.messages == len(acked), "every acknowledged message is in the stream, once"
        seen = sorted({int(m.data) async for m in _replay(js, len(acked))})
        assert seen == acked
        window = [t for t in ack_times if t >= rotated_at - 1]
        pause = max(b - a for a, b in itertools.pairwise(window))
        print(f"route password rotation: {len(acked)} messages, longest pause between acks {pause:.2f} s")  # noqa: T201
        assert pause < 15, f"publishing paused {pause:.1f} s"
        for node in cluster.nodes:
            text = (node.directory / "nats.conf").read_text("utf-8")
            assert old not in text
            assert f"route:{new}@" in text
        await nc.close()

        # The old password no longer opens a route; the new one does.
        logs = [n.log_file for n in cluster.nodes if n.log_file is not None]
        before = [log.stat().st_size for log in logs]
        stale = rogue_node(cluster, tmp_path / "stale", route_password=old).start()
        try:

            def refused() -> bool:
                later = [log.read_bytes()[start:] for log, start in zip(logs, before, strict=True)]
                return all(b"Router connection closed: Authentication Failure" in text for text in later)

            assert wait_until(refused, 20), "a route with the old password is refused"
            assert all("rogue" not in _remote_names(n) for n in cluster.nodes)
        finally:
            stale.stop()
        fresh = rogue_node(cluster, tmp_path / "fresh", route_password=new).start()
        try:
            assert wait_until(lambda: all("rogue" in _remote_names(n) for n in cluster.nodes), 20)
        finally:
            fresh.stop()
    finally:
        cluster.stop()


async def _replay(js: Any, count: int) -> Any:
    sub = await js.subscribe("rotation.>", ordered_consumer=True)
    for _ in range(count):
        yield await sub.next_msg(timeout=10)
    await sub.unsubscribe()
