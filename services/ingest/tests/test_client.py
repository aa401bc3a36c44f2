"""The ministry client (`shinchoku.client.AgencyPublisher`) against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider

from contracts.events import StatusEvent
from ingest.testing import event_body
from shinchoku.client import AgencyPublisher, PublishTimeout
from shinchoku_runtime.natsclient import connect, ensure_streams
from shinchoku_runtime.natsserver import NatsServer, free_port


def publisher(server: NatsServer, **kwargs: float) -> AgencyPublisher:
    return AgencyPublisher(
        server.plain_url,
        agency="mof",
        password=server.passwords["mof"],
        tracer_provider=TracerProvider(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_publish_is_retried_with_the_same_bytes_until_jetstream_answers(bare_nats_server: NatsServer) -> None:
    """No STATUS stream yet (JetStream cannot answer): the client retries; once it exists, one message lands."""
    event = StatusEvent.model_validate(event_body())
    async with publisher(bare_nats_server, timeout=0.5, retries=6, backoff=0.2) as mof:
        sending = asyncio.create_task(mof.publish(event))
        await asyncio.sleep(0.8)
        assert not sending.done()
        admin = await connect(
            bare_nats_server.plain_url, name="t", user="admin", password=bare_nats_server.passwords["admin"]
        )
        await ensure_streams(admin.jetstream())
        ack = await sending
    js = admin.jetstream()
    info = await js.stream_info("STATUS_mof")
    assert (ack.stream, info.state.messages) == ("STATUS_mof", 1)
    stored = await js.get_msg("STATUS_mof", 1)
    assert stored.data == event.model_dump_json().encode()
    headers = stored.headers or {}
    assert "traceparent" in headers
    assert "Nats-Msg-Id" not in headers  # de-duplication on STATUS is ingest's, by event_id
    await admin.close()


async def test_a_publish_that_never_gets_an_answer_fails_clearly(bare_nats_server: NatsServer) -> None:
    event = StatusEvent.model_validate(event_body())
    async with publisher(bare_nats_server, timeout=0.3, retries=2, backoff=0.05) as mof:
        started = time.monotonic()
        with pytest.raises(PublishTimeout, match="safe to publish the same report again"):
            await mof.publish(event)
        assert time.monotonic() - started < 3


async def test_comma_separated_urls_reach_the_cluster(nats_server: NatsServer, admin_nc: object) -> None:
    """The client takes a cluster's URLs as the services do: comma-separated (a dead one first is skipped)."""
    del admin_nc  # the streams exist
    dead = f"nats://127.0.0.1:{free_port()}"
    mof = AgencyPublisher(
        f"{dead}, {nats_server.plain_url}",
        agency="mof",
        password=nats_server.passwords["mof"],
        tracer_provider=TracerProvider(),
        connect_options={"dont_randomize": True},
    )
    async with mof:
        ack = await mof.publish(StatusEvent.model_validate(event_body()))
    assert ack.stream == "STATUS_mof"  # its own share of STATUS, which STATUS copies in
