"""The catalog on a real nats-server, as its own least-privilege user: KV mirror, announcements, request-reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
from fastapi import FastAPI
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NoKeysError, NotFoundError

from catalog.domain import measure_document
from contracts.catalog import Measure
from contracts.events import CatalogChanged
from contracts.streams import CATALOG_BUCKET, CATALOG_CHANGED, CATALOG_MEASURE_GET
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.natsserver import NatsServer, free_port

RunCatalog = Callable[..., AbstractAsyncContextManager[FastAPI]]


async def _connect_as(server: NatsServer, user: str) -> Client:
    return await connect(server.plain_url, name=f"test-{user}", user=user, password=server.passwords[user])


class Announcements:
    """CatalogChanged events heard on `catalog.changed`, as ingest and reporting hear them."""

    def __init__(self) -> None:
        self.events: list[CatalogChanged] = []
        self.arrived = asyncio.Event()

    async def receive(self, msg: Msg) -> None:
        self.events.append(CatalogChanged.model_validate_json(msg.data))
        self.arrived.set()


async def _bucket_contents(nc: Client) -> dict[str, bytes]:
    kv = await nc.jetstream().key_value(CATALOG_BUCKET)
    contents: dict[str, bytes] = {}
    # nats-py's keys() watches the bucket and says "no keys" when the watch is slow to deliver (a loaded
    # machine), not only when the bucket is empty: ask again a few times before believing it.
    for attempt in range(5):
        try:
            keys = await kv.keys()
            break
        except NoKeysError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)
    for key in keys:
        entry = await kv.get(key)
        assert entry.value is not None
        contents[key] = entry.value
    return contents


async def test_the_registry_is_mirrored_and_announced_once(
    nats_server: NatsServer, database_url: str, run_catalog: RunCatalog, plan: list[Measure]
) -> None:
    ingest = await _connect_as(nats_server, "ingest")
    heard = Announcements()
    await ingest.subscribe(CATALOG_CHANGED, cb=heard.receive)
    try:
        # First start: seeds, creates the bucket, mirrors 320 measures, announces all of them.
        async with run_catalog(database_url, nats_server) as app:
            runtime = app.state.runtime
            assert runtime.seed_result.first_seed
            assert len(runtime.mirror_result.put) == 320
            await asyncio.wait_for(heard.arrived.wait(), 5)
            (event,) = heard.events
            assert event.measures_total == 320
            assert event.revision == runtime.seed_result.revision
            assert len(event.changed_ids) == 320
            assert event.changed_ids[:3] == ["1-1", "1-2", "1-3"]

            # Every key holds the Measure JSON that HTTP serves; ingest's rights suffice to read them.
            contents = await _bucket_contents(ingest)
            assert len(contents) == 320
            assert contents == {m.id: measure_document(m) for m in plan}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://catalog") as http:
                response = await http.get("/measures/1-25")
                assert json.loads(contents["1-25"]) == response.json()
                health = await http.get("/healthz")
                assert health.status_code == 200, health.text
                assert health.json()["checks"] == {"database": True, "nats": True}

        # Restart on the same database and bucket: nothing rewritten, nothing announced.
        heard.arrived.clear()
        async with run_catalog(database_url, nats_server) as app:
            runtime = app.state.runtime
            assert not runtime.seed_result.changed
            assert runtime.mirror_result.put == ()
            assert runtime.mirror_result.deleted == ()
            await ingest.flush()
            await asyncio.sleep(0.3)
            assert len(heard.events) == 1

        # A changed plan: only the changed measures are put, the removed one deleted, the change announced.
        by_id = {m.id: m for m in plan}
        retitled = by_id["1-25"].model_copy(update={"title": "確定申告の利便性向上"})
        changed_plan = [retitled if m.id == "1-25" else m for m in plan if m.id != "6-17"]
        async with run_catalog(database_url, nats_server, measures=changed_plan) as app:
            runtime = app.state.runtime
            assert runtime.mirror_result.put == ("1-25",)
            assert runtime.mirror_result.deleted == ("6-17",)
            await asyncio.wait_for(heard.arrived.wait(), 5)
            assert heard.events[-1].changed_ids == ["1-25", "6-17"]
            assert heard.events[-1].measures_total == 319
            contents = await _bucket_contents(ingest)
            assert len(contents) == 319
            assert "6-17" not in contents
            assert json.loads(contents["1-25"])["title"] == "確定申告の利便性向上"
    finally:
        await ingest.close()


async def test_request_reply_answers_known_and_unknown_ids(
    nats_server: NatsServer, tmp_path: Path, run_catalog: RunCatalog, plan: list[Measure]
) -> None:
    ingest = await _connect_as(nats_server, "ingest")
    try:
        async with run_catalog(f"sqlite:///{tmp_path / 'rr.sqlite'}", nats_server):
            reply = await ingest.request(CATALOG_MEASURE_GET, b"1-25", timeout=5)
            measure = Measure.model_validate_json(reply.data)
            assert measure == next(m for m in plan if m.id == "1-25")
            assert reply.headers is not None
            assert reply.headers["content-type"] == "application/json"

            reply = await ingest.request(CATALOG_MEASURE_GET, "１－２５".encode(), timeout=5)
            assert Measure.model_validate_json(reply.data).id == "1-25"

            for payload, mentions in [
                (b"6-18", "no measure 6-18"),
                (b"125", "not a measure id"),
                (b'"1-25"', "not a measure id"),
                (b"", "not a measure id"),
                (b"\xff\xfe", "UTF-8"),
            ]:
                reply = await ingest.request(CATALOG_MEASURE_GET, payload, timeout=5)
                body = json.loads(reply.data)
                assert body["error"] == "not_found", payload
                assert mentions in body["message"], payload
    finally:
        await ingest.close()


async def test_nats_may_come_after_the_catalog(tmp_path: Path, run_catalog: RunCatalog) -> None:
    server = NatsServer.create(tmp_path / "late-nats", port=free_port())
    async with run_catalog(f"sqlite:///{tmp_path / 'late.sqlite'}", server, wait=False) as app:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://catalog") as http:
            health = await http.get("/healthz")
            assert health.status_code == 503
            assert health.json()["checks"] == {"database": True, "nats": False}
            assert (await http.get("/measures/1-25")).status_code == 200
            server.start()
            try:
                await asyncio.wait_for(app.state.runtime.mirrored.wait(), 20)
                assert (await http.get("/healthz")).status_code == 200
            finally:
                await app.state.runtime.broker.stop()
                server.stop()


async def test_a_registry_seeded_offline_is_announced_when_the_catalog_starts(
    nats_server: NatsServer, tmp_path: Path, run_catalog: RunCatalog
) -> None:
    database_url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    env = {
        **os.environ,
        "SHINCHOKU_CATALOG_DATABASE_URL": database_url,
        "SHINCHOKU_CATALOG_DATA_DIR": str(tmp_path / "data"),
        "OTEL_SDK_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "catalog", "seed"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    seeded = json.loads(done.stdout)
    assert seeded["changed"] is True
    assert len(seeded["added"]) == 320

    reporting = await _connect_as(nats_server, "reporting")
    heard = Announcements()
    await reporting.subscribe(CATALOG_CHANGED, cb=heard.receive)
    try:
        async with run_catalog(database_url, nats_server) as app:
            assert not app.state.runtime.seed_result.changed
            await asyncio.wait_for(heard.arrived.wait(), 5)
            (event,) = heard.events
            assert event.revision == seeded["revision"]
            assert len(event.changed_ids) == 320
    finally:
        await reporting.close()


async def test_a_nats_that_lost_its_state_gets_the_registry_back(
    nats_server: NatsServer, tmp_path: Path, run_catalog: RunCatalog
) -> None:
    async with run_catalog(f"sqlite:///{tmp_path / 'lost.sqlite'}", nats_server) as app:
        runtime = app.state.runtime
        nats_server.kill()
        # A new server on the same address and credentials, with empty JetStream storage.
        replacement = NatsServer.create(tmp_path / "replacement", port=nats_server.options.port)
        shutil.copy(nats_server.directory / "secrets.json", replacement.directory / "secrets.json")
        replacement.start()
        try:
            ingest = await _connect_as(replacement, "ingest")
            try:
                deadline = asyncio.get_running_loop().time() + 20
                contents: dict[str, bytes] = {}
                while len(contents) < 320 and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.2)
                    with contextlib.suppress(NotFoundError, NoKeysError):
                        contents = await _bucket_contents(ingest)
                assert len(contents) == 320
                assert runtime.mirror_result.put
            finally:
                await ingest.close()
        finally:
            await runtime.broker.stop()
            replacement.stop()
