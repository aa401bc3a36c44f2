"""Real parts for tests and benchmarks: a nats-server on a free port, a fresh PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from shinchoku_runtime.db import normalise_url

#: The PostgreSQL server used by tests; override with SHINCHOKU_TEST_PG (an admin URL to any database).
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_admin_url() -> str:
    return os.environ.get("SHINCHOKU_TEST_PG", DEFAULT_PG_ADMIN_URL)


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = sa.create_engine(normalise_url(pg_admin_url()), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as e:  # any failure to reach it is a reason to skip, which we state
        return f"PostgreSQL not reachable at {pg_admin_url()}: {type(e).__name__}: {e}"
    return None


@contextmanager
def fresh_postgres_database(prefix: str = "shinchoku_test") -> Iterator[str]:
    """Create an empty database for one test (or benchmark), yield its URL, drop it afterwards."""
    admin_url = normalise_url(pg_admin_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def status_sequence(js: Any, subject: str, ack: Any, timeout: float = 10.0) -> int:
    """STATUS's sequence of what a PubAck acknowledged: the PubAck's own for the secretariat's commands (STATUS
    took them), else the sequence of STATUS's copy of the agency stream's message (`Nats-Stream-Source` names the
    agency's stream and sequence), waiting while STATUS has not sourced it yet."""
    import asyncio

    from nats.js.errors import NotFoundError

    from contracts.streams import STATUS_STREAM_NAME

    if ack.stream == STATUS_STREAM_NAME:
        return int(ack.seq)
    origin = f"{ack.stream} {ack.seq} "
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seq = 1
        while True:
            try:
                msg = await js.get_msg(STATUS_STREAM_NAME, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            if (msg.headers or {}).get("Nats-Stream-Source", "").startswith(origin):
                return int(msg.seq)
            seq = int(msg.seq) + 1
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"STATUS holds no copy of {ack.stream} #{ack.seq} ({subject}) after {timeout}s")
        await asyncio.sleep(0.05)


def other_connections(probe: sa.Engine) -> list[str]:
    """The connections to `probe`'s PostgreSQL database other than the probe's own, as "state: query"."""
    with probe.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT state, query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).all()
    return [f"{state}: {query}" for state, query in rows]


async def left_after_stop(probe: sa.Engine, held: Any = other_connections, *, grace: float = 5.0) -> list[str]:
    """What a stopped service still holds (`held(probe)`), once it has held it for `grace` seconds: a closed
    connection's server process exits a moment later, so only what stays for seconds was left behind."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while (left := await asyncio.to_thread(held, probe)) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    return list(left)
