"""Issue #15, bounded input: one agency cannot fill the broker's disk for the others.

A runaway agency publishing on as many subjects as it likes (invented measure ids, each under STATUS's per-subject
bound) is refused once over its share (`STATUS_{agency}`: bytes and messages, discard new), with a JetStream
error at once, never a timeout; meanwhile another agency's report is stored and admitted as usual. The shares are
set small here (`SHINCHOKU_STREAM_AGENCY_MAX_*`, read by the administrator's `streams apply`) so the test runs
in seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.js.errors import APIError

from contracts.streams import agency_inbox_prefix, agency_status_stream, status_subject
from ingest.testing import encode, event_body, wait_for_event
from shinchoku.client import AgencyPublisher
from shinchoku_client.sending import PublishError
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.natsserver import NatsServer

Publishers = Callable[[str], Awaitable[AgencyPublisher]]

#: Each agency's share in this test: 1 MiB, 300 messages.
SHARE_BYTES = 1024 * 1024
SHARE_MSGS = 300


@pytest.fixture
def nats_server(bare_nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> NatsServer:
    """The shared streams as the administrator declares them with small shares per agency."""
    monkeypatch.setenv("SHINCHOKU_STREAM_AGENCY_MAX_BYTES", str(SHARE_BYTES))
    monkeypatch.setenv("SHINCHOKU_STREAM_AGENCY_MAX_MSGS", str(SHARE_MSGS))
    return bare_nats_server.apply_streams()


async def _agency(server: NatsServer, agency: str) -> Client:
    return await connect(
        server.plain_url,
        name=f"runaway-{agency}",
        user=agency,
        password=server.passwords[agency],
        inbox_prefix=agency_inbox_prefix(agency),
    )


async def _flood(nc: Client, agency: str, size: int, limit: int) -> tuple[int, int, APIError | None]:
    """Publish `size`-byte junk, each on a subject of its own (an invented measure), until the broker refuses or
    `limit` messages went out: (messages acknowledged, bytes acknowledged, the refusal)."""
    js = nc.jetstream()
    sent = stored = 0
    for i in range(limit):
        try:
            await js.publish(status_subject(agency, f"9-{i}"), b"x" * size, timeout=5)
        except APIError as e:
            return sent, stored, e
        sent += 1
        stored += size
    return sent, stored, None


async def test_a_runaway_agency_is_refused_beyond_its_share_and_the_others_go_on(
    nats_server: NatsServer, admin_nc: Client, ingest: object, publisher_for: Publishers
) -> None:
    runaway = await _agency(nats_server, "mof")
    try:
        # Bytes: 16 KiB messages on invented subjects, up to four times the share.
        sent, stored, refusal = await _flood(runaway, "mof", 16 * 1024, limit=4 * SHARE_BYTES // (16 * 1024))
    finally:
        await runaway.close()
    assert refusal is not None, f"mof published {sent} messages ({stored} bytes) on {sent} subjects, never refused"
    assert "maximum bytes exceeded" in str(refusal)
    assert stored <= SHARE_BYTES
    # What is left of the share, in small messages, until refused again.
    runaway = await _agency(nats_server, "mof")
    try:
        _, _, refusal = await _flood(runaway, "mof", 100, limit=SHARE_MSGS)
    finally:
        await runaway.close()
    assert refusal is not None
    assert "maximum bytes exceeded" in str(refusal)
    info = await admin_nc.jetstream().stream_info(agency_status_stream("mof"))
    assert info.state.bytes <= SHARE_BYTES

    # The agency's own client hears it at once, as an error that says why (not a timeout).
    mof = await publisher_for("mof")
    started = time.perf_counter()
    with pytest.raises(PublishError, match="maximum bytes exceeded"):
        await mof.publish_raw(status_subject("mof", "1-25"), encode(event_body()))
    assert time.perf_counter() - started < 1.0

    # Another agency is stored and admitted as usual, while mof stays refused.
    mhlw = await publisher_for("mhlw")
    body = event_body(agency="mhlw", measure_id="2-3")
    ack = await mhlw.publish_raw(status_subject("mhlw", "2-3"), encode(body))
    assert ack.stream == agency_status_stream("mhlw")
    decided = await wait_for_event(ingest.http, body["event_id"], timeout=20)  # type: ignore[attr-defined]
    assert decided["outcome"] == "admitted"


async def test_many_small_messages_are_bounded_too(nats_server: NatsServer, admin_nc: Client) -> None:
    runaway, other = await _agency(nats_server, "digital"), await _agency(nats_server, "mic")
    try:
        sent, _, refusal = await _flood(runaway, "digital", 10, limit=2 * SHARE_MSGS)
        assert refusal is not None, f"digital published {sent} messages on {sent} subjects, never refused"
        assert "maximum messages exceeded" in str(refusal)
        assert sent == SHARE_MSGS
        ack = await other.jetstream().publish(status_subject("mic", "4-1"), b"{}", timeout=5)
        assert ack.stream == agency_status_stream("mic")
    finally:
        await asyncio.gather(runaway.close(), other.close())
