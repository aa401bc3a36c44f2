"""nats-py internals the hot paths rely on, and nowhere else. Verified on nats-py 2.16.0 (bounded <2.17).

Why not the public API: it exists, but costs several times the CPU on these paths. Measured with
`bench/hooks.py` (50,000 messages, a real nats-server 2.15 on this 2-core machine, client CPU per message):

* nats-py 2.16 has no batch publishing of its own: `JetStreamContext.publish` is one request per message, and
  an atomic batch through the public API is one `Client.publish` per message with the `Nats-Batch-*` headers
  (subject and header checks, a coroutine and a command each): 8.6 µs a message. `command-block` queues the
  messages of a batch as one pre-built block of HPUB commands in the client's own outgoing buffer, in order
  with everything else: 2.7 µs.
* Nor batch acknowledgement: `Msg.ack()` is one publish per message, 2.0 µs. `command-block` + `flush-now` +
  `ack-state` write the acks of a batch as one block of `PUB <reply> 0` commands and mark the messages acked
  as `ack()` does: 0.5 µs.
* `PullSubscription.fetch` gathers a batch by awaiting `Subscription.next_msg(timeout)` once per message (a
  task, a uuid and a timer each); `fast-next-msg` hands over a message that has already arrived without them.
  FastStream's batch pull fetching and acking: 33.8 µs a message as it comes, 12.1 µs with this hook (and
  `faststream.batch-pull-subscription`).
* A callback subscription parses every message's header block into a dict and builds a `Msg`: 10.4 µs a
  message on a replay; `parser-tap` takes one subscription's data messages as (subject, payload) straight from
  the protocol parser: 2.8 µs.

Each hook is registered (`shinchoku_runtime.adapters.hooks`) with a probe on real objects; when a probe
fails, the hook is not used and the public path is taken, with a warning naming the hook.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.protocol.parser import Parser

from shinchoku_runtime.adapters.hooks import Hook, holds, need, register, source_says

LIBRARY = "nats-py"
VERIFIED_ON = "2.16"

COMMAND_BLOCK = "nats-py.command-block"
FLUSH_NOW = "nats-py.flush-now"
ACK_STATE = "nats-py.ack-state"
FAST_NEXT_MSG = "nats-py.fast-next-msg"
PARSER_TAP = "nats-py.parser-tap"


def _run_now(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that does not suspend (a probe's call into the library) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine suspended")


def _probe_command_block() -> None:
    nc = Client()
    pending = getattr(nc, "_pending", None)
    need(COMMAND_BLOCK, isinstance(pending, list), "Client._pending is not the list of queued commands")
    need(COMMAND_BLOCK, callable(getattr(nc, "_send_command", None)), "Client._send_command is gone")
    need(COMMAND_BLOCK, {"out_msgs", "out_bytes"} <= set(nc.stats), "Client.stats counts no out_msgs/out_bytes")
    _run_now(nc._send_command(b"PING\r\n"))
    need(COMMAND_BLOCK, nc._pending[-1:] == [b"PING\r\n"], "Client._send_command no longer queues on _pending")


def _probe_flush_now() -> None:
    nc = Client()
    need(FLUSH_NOW, hasattr(nc, "_flush_queue"), "Client._flush_queue is gone")
    need(FLUSH_NOW, callable(getattr(nc, "_flush_pending", None)), "Client._flush_pending is gone")
    source_says(FLUSH_NOW, Client._send_publish, "self._flush_queue.empty()", "publish no longer kicks the flusher so")


def _probe_ack_state() -> None:
    nc = Client()
    msg = Msg(nc, subject="s", reply="$JS.ACK.S.c.1.1.1.1.0", data=b"")
    need(ACK_STATE, getattr(msg, "_client", None) is nc, "Msg._client is not the connection it arrived on")
    need(ACK_STATE, getattr(msg, "_ackd", None) is False and not msg.is_acked, "Msg._ackd is gone")
    msg._ackd = True
    need(ACK_STATE, msg.is_acked, "Msg.is_acked no longer reads Msg._ackd")


def _probe_fast_next_msg() -> None:
    nc = Client()
    sub = Subscription(nc, 1, "s")
    pull = JetStreamContext.PullSubscription(nc.jetstream(), sub, "S", "c", b"_INBOX.x")
    need(FAST_NEXT_MSG, getattr(pull, "_sub", None) is sub, "PullSubscription._sub is not its subscription")
    need(
        FAST_NEXT_MSG, isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue), "no Subscription._pending_queue"
    )
    need(FAST_NEXT_MSG, isinstance(getattr(sub, "_pending_size", None), int), "no Subscription._pending_size")
    need(FAST_NEXT_MSG, getattr(sub, "_conn", None) is nc, "Subscription._conn is not its connection")
    fetch = JetStreamContext.PullSubscription._fetch_n
    source_says(FAST_NEXT_MSG, fetch, "self._sub.next_msg(", "fetch no longer gathers through Subscription.next_msg")


def _probe_parser_tap() -> None:
    parameters = list(inspect.signature(Client._process_msg).parameters)
    need(PARSER_TAP, parameters == ["self", "sid", "subject", "reply", "data", "headers"], f"_process_msg{parameters}")
    source_says(PARSER_TAP, Parser, "self.nc._process_msg(", "the parser no longer calls Client._process_msg")
    need(PARSER_TAP, getattr(Subscription(Client(), 7), "_id", None) == 7, "Subscription._id is not its sid")


for _hook in (
    Hook(
        COMMAND_BLOCK,
        LIBRARY,
        VERIFIED_ON,
        ("Client._send_command", "Client._pending", "Client.stats"),
        "a batch's messages (or a batch's acks) queued as one block of commands, not a publish each",
        "each message takes Client.publish (about 3 times the CPU per message)",
        _probe_command_block,
    ),
    Hook(
        FLUSH_NOW,
        LIBRARY,
        VERIFIED_ON,
        ("Client._flush_queue", "Client._flush_pending"),
        "a block of acks handed to the flusher at once, as publish does",
        "acks are sent with Msg.ack() one by one",
        _probe_flush_now,
    ),
    Hook(
        ACK_STATE,
        LIBRARY,
        VERIFIED_ON,
        ("Msg._client", "Msg._ackd"),
        "messages acknowledged in a block marked acked as Msg.ack() marks them",
        "acks are sent with Msg.ack() one by one",
        _probe_ack_state,
    ),
    Hook(
        FAST_NEXT_MSG,
        LIBRARY,
        VERIFIED_ON,
        ("PullSubscription._sub", "Subscription._pending_queue", "Subscription._pending_size", "Subscription._conn"),
        "a fetched message that has already arrived handed over without a task and a timer",
        "fetch takes nats-py's next_msg for every message (about 20 µs more CPU per message)",
        _probe_fast_next_msg,
    ),
    Hook(
        PARSER_TAP,
        LIBRARY,
        VERIFIED_ON,
        ("Client._process_msg", "Subscription._id"),
        "a replay's data messages taken as (subject, payload) from the protocol parser",
        "every message is parsed into a Msg for the subscription's callback (about 3.5 times the CPU)",
        _probe_parser_tap,
    ),
):
    register(_hook)


def takes_blocks(nc: Client) -> bool:
    """Whether `nc` can take a block of commands now: connected, and the `command-block` hook holds."""
    return nc.is_connected and holds(COMMAND_BLOCK)


async def send_block(nc: Client, block: bytes, count: int, payload_bytes: int) -> None:
    """Queue a block of `count` commands on the connection, as `publish` queues one (counted as it counts)."""
    nc.stats["out_msgs"] += count
    nc.stats["out_bytes"] += payload_bytes
    await nc._send_command(block)


def acks_in_blocks(nc: Client) -> bool:
    """Whether acknowledgements can go as one block on `nc` (else `Msg.ack()` each)."""
    return takes_blocks(nc) and holds(FLUSH_NOW) and holds(ACK_STATE)


async def flush_soon(nc: Client) -> None:
    """Have the flusher write what is queued, as `publish` does after its command (unless a flush is due)."""
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def connection_of(msg: Msg) -> Client | None:
    """The connection a message arrived on (what `Msg.ack()` publishes on); None when the hook is broken."""
    if not holds(ACK_STATE):
        return None
    client: Client = msg._client
    return client


def mark_acked(msgs: Sequence[Msg]) -> None:
    """Mark messages acknowledged, as `Msg.ack()` does once it has published the ack."""
    for m in msgs:
        m._ackd = True


def fast_next_msg(pull: JetStreamContext.PullSubscription) -> bool:
    """Make `pull.fetch` take messages that have already arrived without nats-py's per-message machinery.

    nats-py's `fetch` gathers a batch by awaiting `next_msg(timeout)` once per message, and each call creates a
    task, a uuid and an `asyncio.wait_for`: about 20 µs per message, a large share of ingest's budget (see the
    module docstring for the figures). When the subscription's queue already holds a
    message, `next_msg` would return it at once anyway; this returns it without the machinery, with the same
    bookkeeping (pending size, `task_done`). An empty queue or a closed connection goes to nats-py's own
    `next_msg`, timeouts and errors included. Returns whether the hook is in place.
    """
    if not holds(FAST_NEXT_MSG):
        return False
    sub: Any = pull._sub
    if getattr(sub, "_shinchoku_fast_next_msg", False):
        return True
    original = sub.next_msg
    queue: asyncio.Queue[Msg] = sub._pending_queue
    conn: Client = sub._conn

    async def next_msg(timeout: float | None = 1.0) -> Msg:
        if queue.empty() or conn.is_closed:
            msg: Msg = await original(timeout)
            return msg
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)
        queue.task_done()
        return msg

    sub.next_msg = next_msg
    sub._shinchoku_fast_next_msg = True
    return True


#: The first line of a header block without a status (a data message's).
_PLAIN_HEADER = b"NATS/1.0\r\n"


def tap_data_messages(nc: Client, sub: Subscription, take: Callable[[bytes, bytes], None]) -> Callable[[], None] | None:
    """Hand `sub`'s data messages to `take(subject, payload)` straight from the protocol parser.

    A data message (no header block, or one without a status line) is not parsed into a `Msg`, queued or passed
    to the subscription's callback; a status message (`NATS/1.0 404 …`, `408`, `100` heartbeats) and every other
    subscription's messages go nats-py's way. Returns the function that puts nats-py's own handling back, or None
    when the hook does not hold (then every message reaches the subscription's callback as usual).
    """
    if not holds(PARSER_TAP):
        return None
    original = nc._process_msg
    sid = sub._id

    async def process_msg(sid_: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if sid_ != sid or (headers and not headers.startswith(_PLAIN_HEADER)):
            await original(sid_, subject, reply, data, headers)
            return
        take(subject, data)

    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]

    def restore() -> None:
        nc._process_msg = original  # type: ignore[method-assign]

    return restore
