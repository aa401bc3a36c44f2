"""Atomic batch publishing to JetStream (nats-server 2.12+), with a per-message fallback for duplicates.

With `sync_interval: always` the broker fsyncs every stored write. Published one by one, each message is
its own write (measured here: about 900 messages/s on this disk under load); published as an atomic batch,
the whole batch is one write and one PubAck (8,000–10,000 messages/s on the same disk). A batch is stored
all or nothing, so a crash or a lost connection mid-batch stores none of it and the caller retries.

A batch that contains a `Nats-Msg-Id` the stream has already stored is refused whole (err_code 10201). That
happens when an earlier attempt was committed but its PubAck never arrived; the fallback then publishes each
message on its own, and the broker's duplicate window drops the ones it already has.

The messages of a batch before its commit (and the acks of a batch of consumed messages, `ack_all`) are
written to the connection as one block of protocol commands: nats-py's `publish` costs about 9 µs a message
(subject and header checks, a coroutine, a command each), a third of it the header encoding. The block goes
into the client's own outgoing buffer, in order with everything else, and only while it is connected with
nothing unusual in the messages (a subject or header value with whitespace, a payload above the server's
limit); otherwise each message takes the public path. The block goes through nats-py internals fenced in
`shinchoku_runtime.adapters.nats_py` (hooks `nats-py.command-block`, `flush-now`, `ack-state`): nats-py 2.16 has
no public batch publish or batch ack (measured against the public path in `bench/hooks.py`).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js.errors import APIError

from shinchoku_runtime.adapters.nats_py import (
    acks_in_blocks,
    connection_of,
    flush_soon,
    mark_acked,
    send_block,
    takes_blocks,
)

#: nats-server's default ceiling on messages in one atomic batch (jetstream.limits.batch.max_msgs).
MAX_BATCH = 1000
ERR_DUPLICATE_MSG_ID = 10201

BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
EXPECTED_STREAM = "Nats-Expected-Stream"


@dataclass(frozen=True, slots=True)
class OutMessage:
    subject: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchAck:
    """What the broker confirmed: `count` messages stored in `stream`, the last at `last_seq`."""

    stream: str
    last_seq: int
    count: int
    fell_back: bool = False


class BatchPublishError(Exception):
    """The broker refused the batch (the reason is in the message); nothing of it was stored."""

    def __init__(self, description: str, err_code: int | None = None) -> None:
        super().__init__(description)
        self.err_code = err_code


async def publish_atomic(nc: Client, stream: str, messages: Sequence[OutMessage], *, timeout: float = 10.0) -> BatchAck:
    """Store `messages` in `stream` all or nothing (chunks of at most MAX_BATCH, each atomic on its own).

    Raises nats' TimeoutError when a commit is not confirmed in time (retry the same messages: a committed
    chunk is then either refused as a duplicate and republished per message, or, without Nats-Msg-Id,
    stored again — on STATUS ingest de-duplicates by event_id).
    """
    if not messages:
        return BatchAck(stream=stream, last_seq=0, count=0)
    last = BatchAck(stream=stream, last_seq=0, count=0)
    total = 0
    fell_back = False
    for start in range(0, len(messages), MAX_BATCH):
        chunk = messages[start : start + MAX_BATCH]
        try:
            last = await _publish_chunk(nc, stream, chunk, timeout=timeout)
        except BatchPublishError as e:
            if e.err_code != ERR_DUPLICATE_MSG_ID:
                raise
            last = await _publish_each(nc, stream, chunk, timeout=timeout)
            fell_back = True
        total += last.count
    return BatchAck(stream=stream, last_seq=last.last_seq, count=total, fell_back=fell_back)


async def _publish_chunk(nc: Client, stream: str, chunk: Sequence[OutMessage], *, timeout: float) -> BatchAck:
    batch_id = uuid.uuid4().hex
    final = len(chunk)
    if final > 1 and _raw_ok(nc, chunk[:-1]):
        block = b"".join(
            _hpub(m.subject, {**m.headers, BATCH_ID: batch_id, BATCH_SEQUENCE: str(i)}, m.payload)
            for i, m in enumerate(chunk[:-1], start=1)
        )
        await send_block(nc, block, final - 1, sum(len(m.payload) for m in chunk[:-1]))
        start = final
    else:
        start = 1
    for i, m in enumerate(chunk[start - 1 :], start=start):
        headers = {**m.headers, BATCH_ID: batch_id, BATCH_SEQUENCE: str(i)}
        if i < final:
            await nc.publish(m.subject, m.payload, headers=headers)
            continue
        headers[BATCH_COMMIT] = "1"
        reply = await nc.request(m.subject, m.payload, headers=headers, timeout=timeout)
        body = json.loads(reply.data or b"{}")
        error = body.get("error")
        if error:
            raise BatchPublishError(str(error.get("description", error)), error.get("err_code"))
        if reply.headers and reply.headers.get("Status") == "503":
            raise BatchPublishError(f"no stream answers on {m.subject!r}")
        return BatchAck(stream=body.get("stream", stream), last_seq=int(body["seq"]), count=int(body["count"]))
    raise AssertionError("unreachable: a non-empty chunk ends in a commit")


def _raw_ok(nc: Client, messages: Sequence[OutMessage]) -> bool:
    """Whether these messages can be written as one block (else nats-py checks and sends each)."""
    if not takes_blocks(nc):
        return False
    limit = nc.max_payload
    for m in messages:
        subject = m.subject
        if (
            not subject
            or len(m.payload) > limit
            or " " in subject
            or "\t" in subject
            or "\r" in subject
            or "\n" in subject
        ):
            return False
        for key, value in m.headers.items():
            if key not in _GOOD_KEYS and not _good_key(key):
                return False
            if "\r" in value or "\n" in value or "\t" in value or value[:1] == " " or value[-1:] == " ":
                return False  # nats-py would strip or refuse it
    return True


#: RFC 7230 token characters without ':', as nats-py requires of a header key.
_HEADER_KEY = re.compile(r"[!#-9;-~]+")
_GOOD_KEYS: set[str] = set()


def _good_key(key: str) -> bool:
    if not _HEADER_KEY.fullmatch(key):
        return False
    if len(_GOOD_KEYS) < 256:
        _GOOD_KEYS.add(key)
    return True


def _hpub(subject: str, headers: dict[str, str], payload: bytes) -> bytes:
    """One HPUB command, as nats-py would write it (`NATS/1.0` header block, no reply subject)."""
    head = ("NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n").encode()
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(head), len(head) + len(payload), head, payload)


async def ack_all(nc: Client | None, msgs: Sequence[Msg]) -> None:
    """Acknowledge JetStream messages: one block of `PUB <reply> 0` commands, flushed, instead of a publish each.

    `nc` is the connection they arrived on (None: the messages' own). Falls back to `msg.ack()` for each when
    the connection is not in a state to take a block.
    """
    pending = [m for m in msgs if not m.is_acked]
    if not pending:
        return
    if nc is None:
        nc = connection_of(pending[0])
    if nc is None or not acks_in_blocks(nc):
        for m in pending:
            await m.ack()
        return
    for m in pending:
        if not m.reply:
            raise NotJSMessageError  # what `ack()` raises for it
    await send_block(nc, b"".join([b"PUB %s 0\r\n\r\n" % m.reply.encode() for m in pending]), len(pending), 0)
    await flush_soon(nc)
    mark_acked(pending)


async def _publish_each(nc: Client, stream: str, chunk: Sequence[OutMessage], *, timeout: float) -> BatchAck:
    js = nc.jetstream()
    acks = await asyncio.gather(
        *(js.publish(m.subject, m.payload, stream=stream, headers=dict(m.headers), timeout=timeout) for m in chunk)
    )
    return BatchAck(stream=stream, last_seq=max(a.seq for a in acks), count=len(acks), fell_back=True)


__all__ = ["MAX_BATCH", "APIError", "BatchAck", "BatchPublishError", "OutMessage", "ack_all", "publish_atomic"]
