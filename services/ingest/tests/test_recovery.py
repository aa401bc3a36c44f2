"""Crashes around the unit of work: NATS killed mid-batch, a publish failing after the commit, ingest SIGKILLed.

None of this depends on the database (that is `test_faults.py`): these run on SQLite.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from contracts.events import AdmittedEvent
from ingest.testing import (
    assert_exactly_once,
    encode,
    event_body,
    publish_events,
    store_counts,
    stream_messages,
    wait_for_count,
    wait_for_event,
)
from shinchoku.client import AgencyPublisher
from shinchoku_runtime.natsclient import ensure_streams
from shinchoku_runtime.natsserver import NatsServer, free_port

Publishers = Callable[[str], Awaitable[AgencyPublisher]]
# --- NATS goes away --------------------------------------------------------------------------------------------


async def test_a_nats_restart_during_processing_loses_nothing_and_duplicates_nothing(
    start_ingest: Any,
    catalog_kv: Any,
    publisher_for: Publishers,
    admin_nc: Client,
    nats_server: NatsServer,
    ingest_db_url: str,
) -> None:
    await start_ingest(batch_size=10)
    mof = await publisher_for("mof")
    bodies = [event_body() for _ in range(400)]
    await publish_events(mof, bodies)
    await wait_for_count(admin_nc, "ACCEPTED", 60)
    nats_server.kill()  # a crash, in the middle of batches
    await asyncio.sleep(1.0)
    nats_server.start()
    await assert_exactly_once(admin_nc, ingest_db_url, {b["event_id"] for b in bodies}, duplicates=0)


async def test_a_publish_that_failed_after_the_commit_is_published_from_the_store(
    start_ingest: Any, catalog_kv: Any, publisher_for: Publishers, admin_nc: Client, ingest_db_url: str
) -> None:
    """The crash window between commit and PubAck: the redelivery publishes the stored decision, not a new one."""
    running = await start_ingest(retry_delay_max=0.5)
    js = admin_nc.jetstream()
    await js.delete_stream("ACCEPTED")  # ACCEPTED unavailable: the decision is committed, its publish fails
    mof = await publisher_for("mof")
    body = event_body()
    await mof.publish_raw("status.mof.1-25", encode(body))
    first = await wait_for_event(running.http, body["event_id"])
    assert first["outcome"] == "admitted"
    await asyncio.sleep(1.0)
    assert (await js.consumer_info("STATUS", "ingest")).num_ack_pending == 1  # not acked: put back
    await ensure_streams(js)
    assert await wait_for_count(admin_nc, "ACCEPTED", 1, timeout=15) == 1
    (accepted,) = await stream_messages(admin_nc, "ACCEPTED")
    admitted = AdmittedEvent.model_validate_json(accepted.data)
    assert admitted.admitted_at.isoformat().replace("+00:00", "Z") == first["admitted_at"]
    again = await wait_for_event(running.http, body["event_id"])
    assert again == first  # not decided a second time: no attempt recorded
    for _ in range(50):
        if (await js.consumer_info("STATUS", "ingest")).num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert (await js.consumer_info("STATUS", "ingest")).num_ack_pending == 0
    assert store_counts(ingest_db_url) == {"admitted": 1, "distinct_admitted": 1}


# --- ingest itself is killed -----------------------------------------------------------------------------------


async def test_killing_ingest_mid_stream_loses_nothing_and_duplicates_nothing(
    catalog_kv: Any, admin_nc: Client, nats_server: NatsServer, ingest_db_url: str, tmp_path: Path
) -> None:
    """SIGKILL `python -m ingest` while it works; the restarted process answers redeliveries from the store."""
    env = {
        **os.environ,
        "SHINCHOKU_INGEST_NATS_URL": nats_server.plain_url,
        "SHINCHOKU_INGEST_NATS_USER": "ingest",
        "SHINCHOKU_INGEST_NATS_PASSWORD": nats_server.passwords["ingest"],
        "SHINCHOKU_INGEST_DATABASE_URL": ingest_db_url,
        "SHINCHOKU_INGEST_DATA_DIR": str(tmp_path / "ingest"),
        "SHINCHOKU_INGEST_ACK_WAIT": "5",
        "SHINCHOKU_INGEST_BATCH_SIZE": "50",
        "SHINCHOKU_INGEST_LOG_LEVEL": "WARNING",
        "OTEL_SDK_DISABLED": "true",
    }

    def spawn() -> subprocess.Popen[bytes]:
        env["SHINCHOKU_INGEST_PORT"] = str(free_port())
        return subprocess.Popen([sys.executable, "-m", "ingest"], env=env, stdout=subprocess.DEVNULL)

    bodies = [event_body() for _ in range(1500)]
    async with AgencyPublisher(nats_server.plain_url, agency="mof", password=nats_server.passwords["mof"]) as mof:
        await publish_events(mof, bodies)
    process = spawn()
    try:
        await wait_for_count(admin_nc, "ACCEPTED", 300, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = (await admin_nc.jetstream().stream_info("ACCEPTED")).state.messages
        assert killed_at < len(bodies), "killed too late to prove anything"
        process = spawn()
        await assert_exactly_once(admin_nc, ingest_db_url, {b["event_id"] for b in bodies}, duplicates=0)
    finally:
        process.kill()
        process.wait(10)
