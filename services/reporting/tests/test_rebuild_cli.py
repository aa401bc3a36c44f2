"""`shinchoku rebuild` runs `python -m reporting rebuild` with the stack's settings and replays ACCEPTED."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client
from typer.testing import CliRunner

from contracts.periods import FiscalQuarter
from reporting import repository
from reporting.testing import publish_admissions, random_admissions, synthetic_measures
from shinchoku.cli import app
from shinchoku.commands.rebuild import rebuild_env
from shinchoku.stack import Stack
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.natsserver import NatsServer


async def test_rebuild_verb_replays_accepted_into_the_stacks_store(
    nats_server: NatsServer, admin_nc: Client, tmp_path: Path
) -> None:
    # The fixture's server keeps its config and secrets in tmp_path/nats: the layout of a stack's data dir.
    stack = Stack(data_dir=tmp_path, nats_host=nats_server.options.host, nats_port=nats_server.options.port)
    stack.save()
    env = rebuild_env(stack, base={})
    assert env["SHINCHOKU_REPORTING_NATS_PASSWORD"] == nats_server.passwords["reporting"]
    assert env["SHINCHOKU_REPORTING_DATABASE_URL"].endswith("db/reporting.sqlite")

    admissions = random_admissions(synthetic_measures(20), [FiscalQuarter(2024, 3)], 300)
    await publish_admissions(admin_nc, admissions)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["rebuild", "--data-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output

    engine = make_engine(env["SHINCHOKU_REPORTING_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            assert repository.count_rows(conn, repository.LIVE.events) == len(admissions)
            assert repository.count_rows(conn, repository.LIVE.effective) > 0
    finally:
        engine.dispose()
