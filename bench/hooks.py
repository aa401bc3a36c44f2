"""Library hooks against the public APIs they replace: client CPU per message, on a real nats-server.

    .venv/bin/python bench/hooks.py                 # 20,000 messages per case
    .venv/bin/python bench/hooks.py --messages 50000

Each case runs the same work twice in this process, once with the hook and once with it switched off (the
adapter then takes the public path, exactly what it does when a hook is broken), and prints the wall time and
this process's CPU time per message (what the hook saves: the broker runs in its own process):

* atomic batch publish (`nats-py.command-block`): `publish_atomic` in batches of 1,000 with ingest's headers, vs
  the public path (`Client.publish` per message with the `Nats-Batch-*` headers, then the commit request);
* batch ack (`nats-py.command-block` + `flush-now` + `ack-state`): `ack_all` vs `Msg.ack()` per message;
* FastStream's batch pull (`faststream.batch-pull-subscription` + `nats-py.fast-next-msg`, what ingest uses):
  a `PullSub(batch=True)` subscriber draining a backlog and acking each batch, tuned as ingest tunes it vs
  FastStream as it comes;
* replay read (`nats-py.parser-tap`): `PullConsumer.replay` to the end of a stream, vs the subscription callback.

The load average is printed first: other work on the machine shows in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from faststream.nats import JStream, NatsBroker, PullSub
from faststream.security import SASLPlaintext
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from shinchoku_runtime.adapters import hooks
from shinchoku_runtime.adapters.faststream_nats import BATCH_PULL_SUBSCRIPTION, guard_fetch_timeouts, pull_subscriptions
from shinchoku_runtime.adapters.nats_py import (
    ACK_STATE,
    COMMAND_BLOCK,
    FAST_NEXT_MSG,
    FLUSH_NOW,
    PARSER_TAP,
    fast_next_msg,
)
from shinchoku_runtime.batchpublish import OutMessage, ack_all, publish_atomic
from shinchoku_runtime.natsclient import connect
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.pull import PullConsumer

TRACEPARENT = "00-{:032x}-{:016x}-01"


def use_hooks(names: tuple[str, ...], on: bool) -> None:
    hooks.forget()
    for name in names:
        hooks.assume(name, on)  # switched off: as if the probe had found the hook broken


async def measure(label: str, count: int, run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {label:<34} {count / wall:>9,.0f} msg/s   {cpu / count * 1e6:6.1f} µs CPU/msg   ({wall:.2f} s)")
    return wall, cpu


async def fresh_stream(nc: Client, name: str, subjects: list[str]) -> None:
    js = nc.jetstream()
    try:
        await js.delete_stream(name)
    except Exception:
        pass
    await js.add_stream(StreamConfig(name=name, subjects=subjects, storage=StorageType.MEMORY, allow_atomic=True))


def outgoing(count: int) -> list[OutMessage]:
    body = b'{"event_id":"%s","measure_id":"1-25","agency":"mof","status":"on_track","note":"\xe9\x80\xb2\xe6\x8d\x97"}'
    return [
        OutMessage(
            f"bench.mof.1-{i % 320}",
            body % uuid.uuid4().hex.encode(),
            {"Nats-Msg-Id": uuid.uuid4().hex, "traceparent": TRACEPARENT.format(i + 1, i + 1)},
        )
        for i in range(count)
    ]


async def backlog(nc: Client, name: str, count: int) -> None:
    await fresh_stream(nc, name, [f"{name.lower()}.>"])
    messages = [OutMessage(f"{name.lower()}.{m.subject}", m.payload, m.headers) for m in outgoing(count)]
    for start in range(0, count, 1000):
        await publish_atomic(nc, name, messages[start : start + 1000])


async def bench_publish(nc: Client, count: int) -> None:
    print("atomic batch publish, batches of 1,000 (nats-py has no public batch publish):")
    for on, label in ((True, "hook: one block of HPUBs"), (False, "public: Client.publish each")):
        await fresh_stream(nc, "BENCH", ["bench.>"])
        messages = outgoing(count)
        use_hooks((COMMAND_BLOCK,), on)

        async def run(messages: list[OutMessage] = messages) -> None:
            for start in range(0, len(messages), 1000):
                await publish_atomic(nc, "BENCH", messages[start : start + 1000])

        await measure(label, count, run)


async def bench_ack(nc: Client, count: int) -> None:
    print("acknowledging fetched messages, 1,000 at a time (nats-py has no public batch ack):")
    await backlog(nc, "ACKS", count)
    js = nc.jetstream()
    for on, label in ((True, "hook: ack_all, one block"), (False, "public: Msg.ack() each")):
        durable = f"acks-{on}"
        await js.add_consumer(
            "ACKS",
            ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=120, max_ack_pending=-1),
        )
        pull = await js.pull_subscribe_bind(durable, "ACKS")
        batches: list[list[Msg]] = []
        while sum(map(len, batches)) < count:
            batches.append(await pull.fetch(1000, timeout=10))
        use_hooks((COMMAND_BLOCK, FLUSH_NOW, ACK_STATE), on)

        async def run(batches: list[list[Msg]] = batches) -> None:
            for batch in batches:
                await ack_all(nc, batch)
            await nc.flush()

        await measure(label, count, run)


async def drain_with_faststream(server: NatsServer, count: int, *, hooked: bool, label: str) -> None:
    security = SASLPlaintext(username="admin", password=server.passwords["admin"])
    broker = NatsBroker(server.plain_url, security=security, logger=None, apply_types=False)
    done = asyncio.Event()
    seen = 0

    async def decoded(message: object) -> list[Msg]:
        raw: list[Msg] = message.raw_message  # type: ignore[attr-defined]
        return raw

    @broker.subscriber(
        "pulls.>",
        stream=JStream("PULLS", declare=False),
        durable=f"drain-{hooked}",
        pull_sub=PullSub(batch_size=1000, timeout=2.0, batch=True),
        decoder=decoded,
    )
    async def handle(batch: list[Msg]) -> None:
        nonlocal seen
        await ack_all(None, batch)
        seen += len(batch)
        if seen >= count:
            done.set()

    use_hooks((BATCH_PULL_SUBSCRIPTION, FAST_NEXT_MSG, COMMAND_BLOCK, FLUSH_NOW, ACK_STATE), True)
    use_hooks((BATCH_PULL_SUBSCRIPTION, FAST_NEXT_MSG), hooked)

    async def run() -> None:
        await broker.start()
        for pull in pull_subscriptions(broker):  # what ingest's `tune_pull_fetch` does (none: hooks off)
            guard_fetch_timeouts(pull)
            fast_next_msg(pull)
        await asyncio.wait_for(done.wait(), 300)

    try:
        await measure(label, count, run)
    finally:
        await broker.stop()


async def bench_faststream(server: NatsServer, nc: Client, count: int) -> None:
    print("FastStream PullSub(batch=True) draining a backlog, batches of 1,000, acked with ack_all:")
    await backlog(nc, "PULLS", count)
    await drain_with_faststream(server, count, hooked=True, label="hooks: as ingest tunes it")
    await drain_with_faststream(server, count, hooked=False, label="public: FastStream as it comes")


async def bench_replay(nc: Client, count: int) -> None:
    print("replay to the end of a stream, requests of 5,000 (PullConsumer.replay):")
    await backlog(nc, "REPLAY", count)
    for on, label in ((True, "hook: data from the parser"), (False, "public: subscription callback")):
        use_hooks((PARSER_TAP,), on)
        reader = PullConsumer.replay(nc, stream="REPLAY", name=f"r{on}", filter_subject="replay.>", start_seq=1)

        async def run(reader: PullConsumer = reader) -> None:
            await reader.open()
            read = 0
            async for batch in reader.batches():
                read += len(batch)
            assert read == count, read

        try:
            await measure(label, count, run)
        finally:
            await reader.close()


async def main(count: int) -> None:
    one, five, _ = os.getloadavg()
    print(f"load average {one:.1f} / {five:.1f} (1/5 min) on {os.cpu_count()} cores; {count:,} messages per case")
    with tempfile.TemporaryDirectory() as directory:
        server = NatsServer.create(Path(directory) / "nats")
        server.start()
        try:
            nc = await connect(server.plain_url, name="bench-hooks", user="admin", password=server.passwords["admin"])
            try:
                await bench_publish(nc, count)
                await bench_ack(nc, count)
                await bench_faststream(server, nc, count)
                await bench_replay(nc, count)
            finally:
                await nc.close()
        finally:
            server.stop()
            hooks.forget()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().messages))
