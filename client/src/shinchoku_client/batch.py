"""Atomic batches on JetStream (nats-server 2.12+), through nats-py's public API only.

A batch is stored all or nothing, as one write and one acknowledgement: every message but the last carries
`Nats-Batch-Id` and `Nats-Batch-Sequence` (1, 2, …), the last also `Nats-Batch-Commit: 1` and is sent as a
request whose reply is the PubAck of the whole batch (`{"stream", "seq", "count"}`) or the reason it was
refused. A server older than 2.12, or a stream that does not allow atomic publishing, does not store
batches: the publisher then sends each message on its own (`supports_atomic`, `AtomicUnsupported`).

The platform's own batch publisher (`shinchoku_runtime.batchpublish`) follows the same protocol with a
faster path into nats-py's internals; a ministry's client sends a few hundred reports a quarter and keeps
to the public API.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client

#: nats-server's default ceiling on messages in one atomic batch (jetstream.limits.batch.max_msgs).
MAX_BATCH = 1000
#: The first nats-server release that stores atomic batches.
ATOMIC_SINCE = (2, 12)

BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"

#: JetStream error codes meaning "this server or stream does not take atomic batches" (not "this batch is bad").
_UNSUPPORTED_CODES = frozenset({10174})  # "atomic publish is disabled": the stream's allow_atomic is off


@dataclass(frozen=True, slots=True)
class OutMessage:
    subject: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchAck:
    """What the broker confirmed for one atomic batch: `count` messages in `stream`, the last at `last_seq`."""

    stream: str
    last_seq: int
    count: int


class BatchRefused(Exception):
    """The broker refused the batch (the reason is in the message): nothing of it was stored."""

    def __init__(self, description: str, err_code: int | None = None) -> None:
        super().__init__(description)
        self.err_code = err_code


class AtomicUnsupported(BatchRefused):
    """The server or stream does not store atomic batches: send the messages one by one."""


def supports_atomic(nc: Client) -> bool:
    """Whether the connected server is recent enough to store atomic batches (the stream must allow them too)."""
    try:
        version = nc.connected_server_version
        return (version.major, version.minor) >= ATOMIC_SINCE
    except (AttributeError, TypeError, ValueError):
        return False


async def publish_batch(nc: Client, messages: Sequence[OutMessage], *, timeout: float) -> BatchAck:
    """Store at most MAX_BATCH `messages` all or nothing; BatchRefused (AtomicUnsupported) when the broker says
    no, nats' TimeoutError when the commit is not acknowledged in time (nothing, or all, may have been stored:
    resending the same messages is safe on STATUS, where ingest de-duplicates by event_id)."""
    if not messages:
        raise ValueError("an atomic batch needs at least one message")
    if len(messages) > MAX_BATCH:
        raise ValueError(f"an atomic batch holds at most {MAX_BATCH} messages, not {len(messages)}")
    batch_id = uuid.uuid4().hex
    *leading, last = messages
    for sequence, message in enumerate(leading, start=1):
        headers = {**message.headers, BATCH_ID: batch_id, BATCH_SEQUENCE: str(sequence)}
        await nc.publish(message.subject, message.payload, headers=headers)
    headers = {**last.headers, BATCH_ID: batch_id, BATCH_SEQUENCE: str(len(messages)), BATCH_COMMIT: "1"}
    reply = await nc.request(last.subject, last.payload, headers=headers, timeout=timeout)
    if reply.headers and reply.headers.get("Status") == "503":
        raise BatchRefused(f"no stream answers on {last.subject!r}")
    try:
        body = json.loads(reply.data or b"{}")
    except ValueError:
        raise BatchRefused(f"the broker answered the commit with {reply.data[:200]!r}") from None
    error = body.get("error")
    if error:
        code = error.get("err_code")
        description = str(error.get("description", error))
        raise (AtomicUnsupported if code in _UNSUPPORTED_CODES else BatchRefused)(description, code)
    return BatchAck(stream=str(body.get("stream", "")), last_seq=int(body["seq"]), count=int(body.get("count", 1)))
