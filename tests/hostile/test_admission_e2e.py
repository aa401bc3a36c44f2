"""Hostile payloads through the real admission path: an agency's NATS connection → STATUS → `python -m ingest`.

A bounded number (E2E_EXAMPLES) of hypothesis-generated hostile messages is published on the running stack with
the agency's own credentials. Each must end on REJECTED with its reason and a message (or be refused by the broker
at publish, with an error the publisher sees), nothing may reach ACCEPTED, and ingest must stay up and healthy
without a restart.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from nats.aio.client import Client

from contracts.events import ReasonCode
from contracts.streams import publish_stream
from shinchoku_runtime.testing import status_sequence
from tests.faults.observe import backlog, last_seq, read_stream
from tests.faults.stack import RunningStack

from .payloads import Hostile, hostile_messages, subject_for

E2E_EXAMPLES = 300
UUID_TEXT = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
T = TypeVar("T")


class LoopThread:
    """An event loop in a thread, so that hypothesis' synchronous examples can publish on long-lived connections."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hostile-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.close()


def lead_of(stack: RunningStack) -> tuple[str, str]:
    """An agency and a measure it leads, from the running catalog (mof and 1-25 when the plan has them)."""
    items = httpx.get(f"{stack.url('catalog')}/measures", params={"limit": 1000}, timeout=10).json()["items"]
    leads = {(m["lead_agencies"][0], m["id"]) for m in items}
    return ("mof", "1-25") if ("mof", "1-25") in leads else sorted(leads)[0]


def test_hostile_messages_end_rejected_and_ingest_stays_up(
    hostile_stack: RunningStack, loop: LoopThread, hostile_report: Callable[[str], None]
) -> None:
    stack = hostile_stack
    agency, measure_id = lead_of(stack)
    ingest_pid = stack.pid("ingest")

    async def connect(user: str) -> Client:
        inbox = f"_INBOX_{user}" if user != "admin" else "_INBOX"
        return await nats.connect(
            stack.nats_url, user=user, password=stack.password(user), inbox_prefix=inbox, name=f"hostile-{user}"
        )

    publisher = loop.run(connect(agency))
    admin = loop.run(connect("admin"))
    accepted_before = loop.run(last_seq(admin, "ACCEPTED"))
    rejected_from = loop.run(last_seq(admin, "REJECTED")) + 1
    sent: dict[int, Hostile] = {}
    refused: Counter[str] = Counter()

    async def publish(subject: str, payload: bytes) -> int:
        ack = await publisher.jetstream().publish(subject, payload, stream=publish_stream(subject), timeout=10)
        return await status_sequence(admin.jetstream(), subject, ack)

    @settings(
        max_examples=E2E_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(message=hostile_messages(agency, measure_id))
    def publish_one(message: Hostile) -> None:
        # Hypothesis may draw one event id for two examples: a repeat would be a duplicate_conflict, which is not
        # what the recipe is about, so each published message gets fresh ids in place of the drawn ones.
        payload = UUID_TEXT.sub(lambda _m: str(uuid.uuid4()).encode(), message.payload)
        message = Hostile(message.kind, payload, message.measure_token)
        try:
            seq = loop.run(publish(subject_for(message, agency, measure_id), message.payload))
        except Exception as e:  # refused by the broker: the publisher is told, nothing reaches ingest
            refused[f"refused at publish ({type(e).__name__})"] += 1
            return
        sent[seq] = message

    publish_one()
    assert sent, "nothing was published"

    async def settled() -> dict[str, int]:
        for _ in range(240):
            lag = await backlog(admin)
            if lag["ingest"] == 0:
                return lag
            await asyncio.sleep(0.25)
        return await backlog(admin)

    lag = loop.run(settled(), timeout=90)
    assert lag["ingest"] == 0, f"ingest did not decide everything: {lag}"
    rejections = {
        body["rejection_id"]: body for body in loop.run(read_stream(admin, "REJECTED", start_seq=rejected_from))
    }
    accepted_after = loop.run(last_seq(admin, "ACCEPTED"))
    loop.run(publisher.close())
    loop.run(admin.close())

    outcomes: Counter[str] = Counter(refused)
    wrong: list[str] = []
    for seq, message in sent.items():
        body = rejections.get(f"STATUS-{seq}")
        if body is None:
            wrong.append(f"STATUS-{seq} ({message.kind}) has no rejection")
            continue
        reason = body["reason"]
        outcomes[f"rejected {reason}"] += 1
        if reason != ReasonCode(message.expected_reason) or not body["message"]:
            wrong.append(f"STATUS-{seq} ({message.kind}): {reason}: {body['message'][:200]}")
    hostile_report(
        f"admission end to end (nats-server + ingest): {len(sent) + sum(refused.values())} hostile messages → "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    )
    assert not wrong, "\n".join(wrong[:20])
    assert accepted_after == accepted_before, "a hostile message was admitted"

    # Ingest never crashed (same process, no restart by the supervisor) and says it is healthy.
    assert stack.pid("ingest") == ingest_pid
    assert not any(line.startswith("ingest (pid") for line in stack.log), stack.log
    health = httpx.get(f"{stack.url('ingest')}/healthz", timeout=10)
    assert health.status_code == 200, health.text

    # What ingest says over HTTP agrees: the rejections are listed, each with its reason and message.
    with httpx.Client(base_url=stack.url("ingest"), timeout=10, auth=stack.auth) as http:
        listed = http.get("/rejections", params={"agency": agency, "limit": 1000}).json()
        assert listed["total"] >= len(sent)
        with_ids = [b for b in rejections.values() if b.get("event_id")][:20]
        for body in with_ids:
            answer = http.get(f"/events/{body['event_id']}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["outcome"] == "rejected"
            assert answer.json()["message"]
