"""The three services as their own processes on a deployment's transport: a TLS 3-node cluster with route
authorization, each service given only the CA file (`SHINCHOKU_{SERVICE}_NATS_TLS_CA_FILE`) besides its usual
settings. All three become healthy (healthz needs NATS), the catalog's registry reaches the KV bucket, and
ingest's and reporting's durable consumers are being pulled, every connection over TLS (the servers' connz).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import nats

from contracts.streams import CATALOG_BUCKET, INGEST_DURABLE, REPORTING_DURABLE
from shinchoku_runtime.harness import NatsCluster, ProcessGroup, ServiceProcess, service_env
from shinchoku_runtime.natsclient import ensure_streams
from shinchoku_runtime.natsserver import free_port


def _connections(cluster: NatsCluster) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in cluster.nodes:
        url = f"http://127.0.0.1:{node.options.monitor_port}/connz?auth=true"
        with urllib.request.urlopen(url, timeout=5) as answer:
            out += json.load(answer).get("connections") or []
    return out


async def test_the_services_run_over_tls_with_only_the_ca_file(tmp_path: Path) -> None:
    cluster = NatsCluster.create(tmp_path / "nats", secure=True).start()
    group = ProcessGroup()
    try:
        assert cluster.ca_file is not None
        admin = await nats.connect(cluster.urls("admin").split(","), **cluster.tls_options())
        js = admin.jetstream()
        await ensure_streams(js, replicas=3)
        processes: dict[str, ServiceProcess] = {}
        for service in ("catalog", "ingest", "reporting"):
            port = free_port()
            env = service_env(
                service,
                nats_url=cluster.urls(),
                nats_password=cluster.passwords[service],
                port=port,
                data_dir=tmp_path / service,
                stream_replicas=3,
                nats_tls_ca_file=str(cluster.ca_file),
            )
            env["OTEL_TRACES_EXPORTER"] = "none"
            process = ServiceProcess(
                name=service, module=service, env=env, port=port, log_file=tmp_path / "logs" / f"{service}.log"
            )
            processes[service] = group.add(process.start())
            await asyncio.to_thread(process.wait_healthy, 120)

        async with httpx.AsyncClient(timeout=30) as http:
            measures = (await http.get(f"{processes['catalog'].url}/measures", params={"limit": 1000})).json()
        assert measures["total"] > 300
        kv = await js.key_value(CATALOG_BUCKET)
        assert len(await kv.keys()) >= measures["total"], "the catalog wrote its registry over TLS"
        for stream, durable in (("STATUS", INGEST_DURABLE), ("ACCEPTED", REPORTING_DURABLE)):
            deadline = asyncio.get_running_loop().time() + 30
            while (await js.consumer_info(stream, durable)).num_waiting == 0:
                assert asyncio.get_running_loop().time() < deadline, f"nobody pulls {stream}/{durable}"
                await asyncio.sleep(0.2)
        users = {c.get("authorized_user"): c for c in _connections(cluster)}
        for service in ("catalog", "ingest", "reporting"):
            assert service in users, f"{service} is not connected"
        assert all(c.get("tls_version") for c in _connections(cluster)), "every client connection is TLS"
        await admin.close()
    finally:
        group.stop()
        cluster.stop()
