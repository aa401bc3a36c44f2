"""Pulling a JetStream consumer through raw pull requests and an inbox callback: the one pull loop of the platform.

`PullConsumer` keeps a few pull requests outstanding on one consumer (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`,
replies to its own inbox) and collects what arrives on a subscription callback, counting what each request still
owes. Two modes:

* `PullConsumer(...)` + `follow(handle)`: a durable consumer with explicit acks, followed until `stop()`.
  Lingering requests with idle heartbeats; whatever has arrived is handed over as one batch of `Msg`s, so
  batches grow by themselves while the handler is busy and a lone message is not held back waiting for
  company. When neither a message nor a heartbeat came for three heartbeats, the requests are taken as lost
  (a reconnect, a restarted server) and made again, and the consumer recreated if it is gone. Stopped, the
  messages received but not handed over are nak'ed.
* `PullConsumer.replay(...)` + `open()` / `batches()` / `close()`: an ephemeral consumer without acks read
  from a sequence to the stream's current end, a request's worth at a time, as (subject, payload) pairs. Its
  data messages are taken straight from nats-py's protocol parser (`nats-py.parser-tap`, fenced in
  `shinchoku_runtime.adapters.nats_py`): parsing each message's header block into a dict and building a `Msg`
  was most of a replay's CPU.

Why not nats-py's `fetch` or FastStream's `PullSub(batch=True)` (FastStream 0.7.8, nats-py 2.16): when a batch
deadline is nearly spent nats-py's `fetch` raises the builtin `TimeoutError` rather than its own; FastStream's
batch loop does not catch it and drops the messages it had gathered for that batch, which come back only after
`ack_wait`. Its per-message `next_msg` path also caps near 12,000 messages/s before any work is done; this loop
receives several times faster.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shinchoku_runtime.adapters.nats_py import tap_data_messages

log = logging.getLogger(__name__)

#: A message as a replay reads it: (subject, payload).
Payload = tuple[bytes, bytes]


class PullConsumer:
    """Pull requests kept outstanding on one JetStream consumer, its messages received on an inbox callback."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        config: ConsumerConfig,
        batch: int = 1000,
        requests_in_flight: int = 2,
        expires: float = 10.0,
        heartbeat: float = 2.0,
    ) -> None:
        """A durable consumer with explicit acks (`config`, created when missing), followed with `follow`; pull
        requests of `batch` messages that linger `expires` seconds with idle heartbeats every `heartbeat`."""
        name = config.durable_name or config.name
        assert name, "a pulled consumer has a name"
        self._nc = nc
        self._stream = stream
        self._config = config
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self.name = name
        self._batch = batch
        self._in_flight = requests_in_flight
        self._expires = expires
        self._heartbeat = heartbeat
        self._replay = False
        #: Durable: the `Msg`s received; replay: their (subject, payload).
        self._buffer: list[Any] = []
        #: Messages still owed by each pull request in flight, oldest first.
        self._owed: collections.deque[int] = collections.deque()
        self._wakeup = asyncio.Event()
        self._last_heard = time.monotonic()
        self._exhausted = False
        self._sub: Subscription | None = None
        self._inbox = ""
        self._restore: Callable[[], None] | None = None
        self._stopping = False
        self.running = False

    @classmethod
    def replay(
        cls,
        nc: Client,
        *,
        stream: str,
        name: str,
        filter_subject: str | None,
        start_seq: int,
        batch: int = 5000,
        requests_in_flight: int = 2,
        description: str = "replay (ephemeral)",
    ) -> PullConsumer:
        """An ephemeral consumer without acks from `start_seq` (on `filter_subject`, or every subject of the stream
        when None), read with `open` / `batches` / `close`."""
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_seq),
            ack_policy=AckPolicy.NONE,
            filter_subject=filter_subject,
            inactive_threshold=120.0,
            mem_storage=True,
            description=description,
        )
        reader = cls(nc, stream=stream, config=config, batch=batch, requests_in_flight=requests_in_flight)
        reader._replay = True  # no-wait requests, read to the end
        return reader

    # ------------------------------------------------------------------------------------------ receiving

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None:
            # A data message (on a replay only when the parser tap is not in place).
            self._buffer.append((msg.subject.encode(), msg.data) if self._replay else msg)
            if self._owed:
                self._owed[0] -= 1
                if self._owed[0] <= 0:
                    self._owed.popleft()
        elif status == "100":
            if not self._replay:
                return  # idle heartbeat: the requests are alive
        else:
            # 404 no messages, 408 request expired, 409 (max waiting, leadership change, consumer deleted…):
            # that request is over.
            if self._owed:
                self._owed.popleft()
            if self._replay:
                self._exhausted = True
            elif status == "409":
                log.info("pull request ended: %s %s", status, headers.get("Description") if headers else "")
        self._wakeup.set()

    async def _subscribe(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0)

    async def _request(self) -> None:
        body: dict[str, Any] = {"batch": self._batch}
        if self._replay:
            body["no_wait"] = True
        else:
            body["expires"] = int(self._expires * 1e9)
            body["idle_heartbeat"] = int(self._heartbeat * 1e9)
        self._owed.append(self._batch)
        await self._nc.publish(self._next, json.dumps(body).encode(), reply=self._inbox)

    # ------------------------------------------------------------------------------------------ durable

    def stop(self) -> None:
        """Ask `follow` to return (cancellation alone can be lost inside `asyncio.wait_for` on Python 3.11)."""
        self._stopping = True
        self._wakeup.set()

    async def ensure_consumer(self) -> None:
        js = self._nc.jetstream()
        try:
            await js.consumer_info(self._stream, self.name)
        except NotFoundError:
            await js.add_consumer(self._stream, self._config)
            log.info("created durable consumer %s on %s", self.name, self._stream)

    async def follow(self, handle: Callable[[list[Msg]], Awaitable[None]]) -> None:
        """Pull until `stop()` (or cancellation), awaiting `handle` for each batch (which may make it wait).

        On the way out the messages received but not handed over are nak'ed.
        """
        assert not self._replay
        heartbeat = self._heartbeat
        await self.ensure_consumer()
        await self._subscribe()
        self.running = True
        try:
            while not self._stopping:
                while len(self._owed) < self._in_flight and len(self._buffer) < self._batch:
                    await self._request()
                if self._buffer:
                    messages, self._buffer = self._buffer, []
                    await handle(messages)
                    continue
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=heartbeat)
                if time.monotonic() - self._last_heard > 3 * heartbeat:
                    # No message and no heartbeat: the requests were lost (a reconnect, a restarted
                    # server). Ask again, and recreate the consumer if it is gone.
                    self._owed.clear()
                    self._last_heard = time.monotonic()
                    with contextlib.suppress(Exception):
                        await self.ensure_consumer()
        finally:
            self.running = False
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
                self._sub = None
            for msg in self._buffer:
                with contextlib.suppress(Exception):
                    await msg.nak()
            self._buffer = []

    # ------------------------------------------------------------------------------------------ replay

    async def open(self) -> None:
        """Create the ephemeral consumer and its inbox (taking data messages from the parser when it can)."""
        assert self._replay
        await self._nc.jetstream().add_consumer(self._stream, self._config)
        await self._subscribe()
        assert self._sub is not None
        buffer_append = self._buffer.append  # the same list for the whole replay (see `batches`)
        owed = self._owed
        wakeup = self._wakeup

        def take(subject: bytes, payload: bytes) -> None:
            buffer_append((subject, payload))
            if owed:
                owed[0] -= 1
                if owed[0] > 0:
                    return
                owed.popleft()
            wakeup.set()  # a request is complete: `batches` hands its messages over and asks for more

        self._restore = tap_data_messages(self._nc, self._sub, take)

    async def batches(self) -> AsyncIterator[list[Payload]]:
        """Everything from where the last call stopped up to the stream's current end, a request's worth at a time."""
        assert self._replay
        self._exhausted = False
        while True:
            while len(self._owed) < self._in_flight and not self._exhausted:
                await self._request()
            if not self._buffer or (len(self._buffer) < self._batch and self._owed):
                if self._exhausted and not self._owed:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=10)
                except TimeoutError:
                    # A lost request or reply: forget the requests in flight and ask again.
                    self._owed.clear()
                continue
            out = self._buffer.copy()  # the same list object stays the parser tap's target
            self._buffer.clear()
            yield out

    async def close(self) -> None:
        """Put nats-py's own message handling back, unsubscribe and delete the ephemeral consumer."""
        if self._restore is not None:
            self._restore()
            self._restore = None
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        try:
            await self._nc.jetstream().delete_consumer(self._stream, self.name)
        except Exception as e:  # it expires by itself after inactive_threshold
            log.debug("could not delete the replay consumer %s: %s", self.name, e)
