"""Every NATS user of the platform against the JetStream API: nobody but the administrative identity changes a
stream, deletes or purges what a log holds, takes over another's durable consumer or hears another's inbox.

One matrix over every user (the 17 agencies, the secretariat, the three services) and seven attacks, plus
publishing the secretariat's commands (refused to all but the secretariat; reporting may publish reviews only). Each attack is
sent as the raw API request a client library would send; the broker must refuse it (a permissions violation), and
afterwards the administrator sees every stream, message and consumer as it was.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.streams import (
    ACCEPTED_STREAM,
    INGEST_DURABLE,
    REPORTING_DURABLE,
    STATUS_STREAM,
    agency_inbox_prefix,
    agency_status_stream,
)
from shinchoku_runtime.natsconf import SECRETARIAT_USER, all_users
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import status_sequence

API = "$JS.API"
#: Whose durable consumer a user must not create (or replace): another service's.
FOREIGN_DURABLE = {"ingest": (ACCEPTED_STREAM.name, REPORTING_DURABLE)}
DEFAULT_FOREIGN = (STATUS_STREAM.name, INGEST_DURABLE)


@dataclass(frozen=True)
class Attack:
    name: str
    subject: str
    body: bytes
    #: A subscription instead of a publish.
    subscribe: bool = False


def attacks_of(user: str) -> list[Attack]:
    stream, durable = FOREIGN_DURABLE.get(user, DEFAULT_FOREIGN)
    shortened = {
        "name": ACCEPTED_STREAM.name,
        "subjects": list(ACCEPTED_STREAM.subjects),
        "max_msgs": 10,
        "max_age": 1_000_000_000,
        "storage": "file",
        "num_replicas": 1,
    }
    foreign = {"stream_name": stream, "config": {"durable_name": durable, "name": durable, "ack_policy": "explicit"}}
    other_inbox = agency_inbox_prefix("digital" if user != "digital" else "mof")
    return [
        Attack("stream update", f"{API}.STREAM.UPDATE.{ACCEPTED_STREAM.name}", json.dumps(shortened).encode()),
        Attack(
            "stream create", f"{API}.STREAM.CREATE.EVIL", json.dumps({"name": "EVIL", "subjects": ["evil.>"]}).encode()
        ),
        Attack("message delete", f"{API}.STREAM.MSG.DELETE.{ACCEPTED_STREAM.name}", json.dumps({"seq": 1}).encode()),
        Attack("purge", f"{API}.STREAM.PURGE.{ACCEPTED_STREAM.name}", b""),
        Attack(
            f"consumer {durable} on {stream}",
            f"{API}.CONSUMER.CREATE.{stream}.{durable}",
            json.dumps(foreign).encode(),
        ),
        Attack("another's inbox", f"{other_inbox}.>", b"", subscribe=True),
        Attack("the shared inbox", "_INBOX.>", b"", subscribe=True),
        *(Attack(f"the secretariat's {s.split('.')[0]}", s, b"{}") for s in commands_refused(user)),
    ]


#: The secretariat's commands (onto STATUS, where ingest decides each by the sender's bearer token).
COMMANDS = ("review.mof.1-25", "close.2024.3", "backfill.mof.1-25")


def commands_refused(user: str) -> tuple[str, ...]:
    """The commands the broker refuses to `user`: all but to the secretariat; reporting publishes reviews (the
    dashboard's review form, each with the signed-in secretariat's own token: test_dashboard_reviews.py)."""
    if user == SECRETARIAT_USER:
        return ()
    if user == "reporting":
        return tuple(c for c in COMMANDS if not c.startswith("review."))
    return COMMANDS


async def _attack(server: NatsServer, user: str) -> list[str]:
    """The attacks the broker let through for `user` (each must end in a permissions violation)."""
    errors: list[str] = []

    async def error_cb(e: Exception) -> None:
        errors.append(str(e).lower())

    nc = await nats.connect(
        server.plain_url,
        user=user,
        password=server.passwords[user],
        inbox_prefix=agency_inbox_prefix(user),
        error_cb=error_cb,
        max_reconnect_attempts=0,
    )
    reply = f"{agency_inbox_prefix(user)}.matrix"
    answers: list[bytes] = []

    async def on_answer(msg: Msg) -> None:
        answers.append(msg.data)

    await nc.subscribe(reply, cb=on_answer)
    through = []
    try:
        for attack in attacks_of(user):
            before = len(errors)
            if attack.subscribe:
                await nc.subscribe(attack.subject)
            else:
                await nc.publish(attack.subject, attack.body, reply=reply)
            await nc.flush()
            deadline = asyncio.get_running_loop().time() + 3
            while len(errors) == before and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            if not any("permissions violation" in e and attack.subject.lower() in e for e in errors[before:]):
                through.append(attack.name)
    finally:
        await nc.close()
    return through


async def _state(admin: Client) -> dict[str, object]:
    js = admin.jetstream()
    out: dict[str, object] = {}
    names = []
    for info in await js.streams_info():
        name = str(info.config.name)
        names.append(name)
        out[name] = (info.state.messages, info.config.max_msgs, info.config.max_age, info.state.consumer_count)
    out["streams"] = sorted(names)
    return out


async def test_every_user_against_the_jetstream_api(nats_server: NatsServer, admin_nc: Client) -> None:
    js = admin_nc.jetstream()
    await js.publish("accepted.mof.1-25", b"{}", stream=ACCEPTED_STREAM.name, headers={"Nats-Msg-Id": "mof:x"})
    ack = await js.publish("status.mof.1-25", b"{}", stream=agency_status_stream("mof"))
    await status_sequence(js, "status.mof.1-25", ack)  # STATUS has copied it in: the state below is settled
    before = await _state(admin_nc)
    users = [u for u in all_users() if u != "admin"]
    matrix = {user: await _attack(nats_server, user) for user in users}
    allowed = {user: through for user, through in matrix.items() if through}
    assert not allowed, f"the broker let through: {allowed}"
    assert await _state(admin_nc) == before


async def test_the_logs_are_append_only_even_for_the_administrator(admin_nc: Client) -> None:
    """`deny_delete`/`deny_purge` on every log: the stream itself refuses, whoever asks, and cannot be told
    otherwise by an update."""
    import dataclasses

    from nats.js.errors import APIError

    from contracts.streams import AGENCY_STATUS_STREAMS, STREAMS

    js = admin_nc.jetstream()
    # The agencies' own STATUS streams too (after STATUS, whose count their copies would change).
    for spec in (*STREAMS, *AGENCY_STATUS_STREAMS):
        subject = spec.listened[0].replace(">", "1-25" if spec.listened[0].startswith("status.") else "mof.1-25")
        await js.publish(subject, b"{}", stream=spec.name)
        with pytest.raises(APIError, match="message delete not permitted"):
            await js.delete_msg(spec.name, 1)
        with pytest.raises(APIError, match="stream purge not permitted"):
            await js.purge_stream(spec.name)
        live = (await js.stream_info(spec.name)).config
        with pytest.raises(APIError, match="can not cancel deny message deletes"):
            await js.update_stream(dataclasses.replace(live, deny_delete=False))
        assert (await js.stream_info(spec.name)).state.messages == 1
