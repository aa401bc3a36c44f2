"""The fence around library internals: every hook holds on the installed libraries, and says which one when not.

`test_hook_holds[<hook>]` probes each registered hook on real objects of the installed nats-py, FastStream and
OpenTelemetry SDK, so an upgrade that moves an internal fails naming the hook. The tests after it check what
the hooks do against a real nats-server, and that a broken hook is named at start-up and at use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.security import SASLPlaintext
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from shinchoku_runtime.adapters import HOOKS, HookBroken, check_hooks, hooks
from shinchoku_runtime.adapters.faststream_nats import BATCH_PULL_SUBSCRIPTION, guard_fetch_timeouts, pull_subscriptions
from shinchoku_runtime.adapters.nats_py import FAST_NEXT_MSG, FLUSH_NOW, PARSER_TAP, fast_next_msg
from shinchoku_runtime.batchpublish import ack_all
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.pull import PullConsumer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _probe_afresh() -> Iterator[None]:
    """Each test sees the hooks as the libraries are now (a test may break one on purpose)."""
    hooks.forget()
    yield
    hooks.forget()


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_holds(name: str) -> None:
    hook = HOOKS[name]
    try:
        hook.probe()
    except HookBroken as e:
        pytest.fail(
            f"{e}\n  touches {', '.join(hook.touches)} of {hook.library} (verified on {hook.verified_on})"
            f"\n  without it: {hook.without}"
        )


def test_every_library_has_its_hooks_registered() -> None:
    assert {hook.library for hook in HOOKS.values()} == {"nats-py", "faststream", "opentelemetry-sdk"}
    for hook in HOOKS.values():
        assert hook.touches, hook.name
        assert hook.name.startswith(("nats-py.", "faststream.", "otel-sdk.")), hook.name


def _private_names() -> set[str]:
    names = set()
    for hook in HOOKS.values():
        for touched in hook.touches:
            attribute = touched.rsplit(".", 1)[-1]
            if attribute.startswith("_"):
                names.add(attribute)
    return names


def touches_outside_the_adapters(root: Path) -> list[str]:
    """Every `x._name` (x not `self`/`cls`) and `"_name"` (as `getattr` takes it) of a name a hook touches, outside
    the adapters."""
    names = "|".join(sorted(_private_names()))
    attribute = re.compile(r"(?P<receiver>[\w.\[\]()]+)\.(?:" + names + r")\b")
    by_name = re.compile(r"[\"'](?:" + names + r")[\"']")
    adapters = root / "runtime" / "src" / "shinchoku_runtime" / "adapters"
    found = []
    for top in (
        "runtime/src",
        "services/catalog/src",
        "services/ingest/src",
        "services/reporting/src",
        "src",
        "client/src",
    ):
        for path in sorted((root / top).rglob("*.py")):
            if adapters in path.parents:
                continue
            for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
                code = line.split("#", 1)[0]
                hits = [
                    m.group(0)
                    for m in attribute.finditer(code)
                    if m.group("receiver").rsplit("(", 1)[-1] not in ("self", "cls")
                ]
                hits += [m.group(0) for m in by_name.finditer(code)]
                found += [f"{path.relative_to(root)}:{number}: {hit}" for hit in hits]
    return found


def test_no_private_library_attribute_is_touched_outside_the_adapters() -> None:
    """What the hooks touch appears nowhere else in the platform's code (`self._x` is a class's own)."""
    found = touches_outside_the_adapters(ROOT)
    assert not found, "library internals touched outside shinchoku_runtime/adapters:\n" + "\n".join(found)


def test_a_broken_hook_is_named_at_start_up(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delattr(Client, "_flush_pending")
    with caplog.at_level(logging.WARNING, logger="shinchoku_runtime.adapters"):
        broken = check_hooks()
    assert [e.hook for e in broken] == [FLUSH_NOW]
    assert FLUSH_NOW in caplog.text
    assert "Msg.ack() one by one" in caplog.text  # what the platform does instead
    with pytest.raises(HookBroken, match=re.escape(FLUSH_NOW)):
        check_hooks(strict=True)


def _break(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make a hook's probe fail, as a library change would, without changing the library."""

    def refuse() -> None:
        raise HookBroken(name, "broken on purpose by the test")

    monkeypatch.setitem(HOOKS, name, dataclasses.replace(HOOKS[name], probe=refuse))
    hooks.forget()


async def _stream_with(nc: Client, count: int, *, name: str = "UNIT") -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    for i in range(count):
        headers = {"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"} if i % 2 else None
        await nc.publish(f"{name.lower()}.{i}", f"本文 {i}".encode(), headers=headers)
    await nc.flush()
    while (await js.stream_info(name)).state.messages < count:
        await asyncio.sleep(0.01)


async def _fetched(nc: Client, count: int, durable: str) -> list[Msg]:
    js = nc.jetstream()
    await js.add_consumer("UNIT", ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    pull = js.pull_subscribe_bind(durable, "UNIT")
    return (await (await pull).fetch(count, timeout=5)) if count else []


async def test_a_broken_hook_is_named_at_use_and_the_public_path_still_works(
    admin_nc: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await _stream_with(admin_nc, 10)
    msgs = await _fetched(admin_nc, 10, "acks")
    _break(monkeypatch, FLUSH_NOW)  # (deleting the attribute would break nats-py's own publish too)
    with caplog.at_level(logging.WARNING, logger="shinchoku_runtime.adapters"):
        await ack_all(admin_nc, msgs)
    assert FLUSH_NOW in caplog.text
    assert all(m.is_acked for m in msgs)
    await admin_nc.flush()
    deadline = asyncio.get_running_loop().time() + 10
    while (info := await admin_nc.jetstream().consumer_info("UNIT", "acks")).num_ack_pending:
        assert asyncio.get_running_loop().time() < deadline, "the public path did not acknowledge"
        await asyncio.sleep(0.05)
    assert info.ack_floor.stream_seq == 10


async def test_fast_next_msg_hands_over_what_fetch_would(admin_nc: Client) -> None:
    """nats-py.fast-next-msg: the same messages, in order, with the subscription's bookkeeping kept."""
    await _stream_with(admin_nc, 40)
    js = admin_nc.jetstream()
    await js.add_consumer("UNIT", ConsumerConfig(durable_name="fast", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    pull = await js.pull_subscribe_bind("fast", "UNIT")
    assert fast_next_msg(pull), f"{FAST_NEXT_MSG} not applied"
    got: list[Msg] = []
    while len(got) < 40:
        got += await pull.fetch(40 - len(got), timeout=5)
    assert [m.metadata.sequence.stream for m in got] == list(range(1, 41)), FAST_NEXT_MSG
    assert [m.data for m in got] == [f"本文 {i}".encode() for i in range(40)], FAST_NEXT_MSG
    assert (pull.pending_msgs, pull.pending_bytes) == (0, 0), f"{FAST_NEXT_MSG}: bookkeeping"
    with pytest.raises(NatsTimeoutError):  # an empty queue still goes nats-py's way, timeout included
        await pull.fetch(1, timeout=0.3)


async def _replayed(nc: Client) -> list[tuple[bytes, bytes]]:
    reader = PullConsumer.replay(nc, stream="UNIT", name="replay", filter_subject="unit.>", start_seq=1, batch=7)
    await reader.open()
    try:
        return [payload async for batch in reader.batches() for payload in batch]
    finally:
        await reader.close()


async def test_the_parser_tap_reads_what_the_subscription_callback_reads(
    admin_nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py.parser-tap: a replay through the tap equals one through nats-py's own message handling."""
    await _stream_with(admin_nc, 30)
    tapped = await _replayed(admin_nc)
    # Afterwards nats-py's handling is back: an ordinary subscription on the connection still receives.
    sub = await admin_nc.subscribe("plain.after")
    await admin_nc.publish("plain.after", b"x")
    assert (await sub.next_msg(timeout=5)).data == b"x"

    _break(monkeypatch, PARSER_TAP)
    untapped = await _replayed(admin_nc)
    assert tapped == untapped, PARSER_TAP
    assert tapped == [(f"unit.{i}".encode(), f"本文 {i}".encode()) for i in range(30)]


async def test_faststream_batch_pulls_keep_their_batch_when_a_request_expires(nats_server: NatsServer) -> None:
    """faststream.batch-pull-subscription: the pull subscription is found, and a builtin timeout becomes nats'."""
    security = SASLPlaintext(username="admin", password=nats_server.passwords["admin"])
    broker = NatsBroker(nats_server.plain_url, security=security, logger=None)

    @broker.subscriber(
        "guard.>",
        stream=JStream("GUARD", subjects=["guard.>"]),
        durable="guard",
        pull_sub=PullSub(batch_size=10, timeout=0.5, batch=True),
    )
    async def handler(batch: list[bytes]) -> None:
        del batch

    await broker.start()
    try:
        pulls = pull_subscriptions(broker)
    finally:
        await broker.stop()  # (its loop must not spin on the stand-in below)
    assert len(pulls) == 1, f"{BATCH_PULL_SUBSCRIPTION}: no pull subscription found"
    # The premise: FastStream's loop catches nats' TimeoutError only, and the builtin one is not that.
    assert not issubclass(TimeoutError, NatsTimeoutError)
    pull = pulls[0]

    async def expired(batch: int = 1, timeout: float | None = 5, heartbeat: float | None = None) -> list[Msg]:
        del batch, timeout, heartbeat
        raise TimeoutError  # what nats-py 2.16's fetch raises when a lingering request runs out of time

    pull.fetch = expired  # type: ignore[method-assign]
    guard_fetch_timeouts(pull)
    with pytest.raises(NatsTimeoutError):
        await pull.fetch(10, timeout=0.5)
