"""A rebuild never shrinks the store: it refuses a log that does not start at the stream's first sequence (1) or
that holds fewer events than the live store (a truncated stream, a restore from an older copy, the wrong
cluster), and leaves the live store as it was; `force` swaps it in anyway, on purpose."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from nats.aio.client import Client

from contracts.periods import FiscalQuarter
from contracts.streams import ACCEPTED_STREAM
from reporting import repository
from reporting.handlers import decode_and_apply
from reporting.rebuild import RebuildRefused, rebuild_store
from reporting.testing import publish_admissions, random_admissions, synthetic_measures
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.streamdefs import stream_config

ADMISSIONS = random_admissions(synthetic_measures(20), [FiscalQuarter(2024, 3)], 300)


def _live_events(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(repository.count_rows(conn, repository.LIVE.events))
    finally:
        engine.dispose()


async def _recreate_accepted(admin_nc: Client, *, first_seq: int | None = None) -> None:
    """ACCEPTED as a restore from an older copy or another cluster would leave it (the administrator's doing)."""
    js = admin_nc.jetstream()
    await js.delete_stream(ACCEPTED_STREAM.name)
    await js.add_stream(dataclasses.replace(stream_config(ACCEPTED_STREAM), first_seq=first_seq))


async def _rebuilt(reporting_nc: Client, url: str, *, force: bool = False) -> None:
    engine = repository.tune(make_engine(url))
    try:
        await rebuild_store(engine, reporting_nc, progress=False, force=force)
    finally:
        engine.dispose()


async def test_a_log_with_fewer_events_than_the_store_is_refused(
    admin_nc: Client, reporting_nc: Client, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'reporting.sqlite'}"
    await publish_admissions(admin_nc, ADMISSIONS)
    engine = repository.tune(make_engine(url))
    repository.create_store(engine)
    stored = [(a.subject, seq, a.body()) for seq, a in enumerate(ADMISSIONS, start=1)]
    decode_and_apply(engine, stored, store=repository.LIVE)  # as the consumer stored them
    engine.dispose()
    assert _live_events(url) == 300

    await _recreate_accepted(admin_nc)
    await publish_admissions(admin_nc, ADMISSIONS[:100])
    with pytest.raises(RebuildRefused, match=r"100 events.*300"):
        await _rebuilt(reporting_nc, url)
    assert _live_events(url) == 300  # untouched

    await _rebuilt(reporting_nc, url, force=True)  # the operator's decision, said out loud
    assert _live_events(url) == 100


async def test_a_log_that_does_not_start_at_the_beginning_is_refused(
    admin_nc: Client, reporting_nc: Client, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'reporting.sqlite'}"
    await _recreate_accepted(admin_nc, first_seq=1000)
    await publish_admissions(admin_nc, ADMISSIONS)
    with pytest.raises(RebuildRefused, match="sequence 1000"):
        await _rebuilt(reporting_nc, url)
    assert _live_events(url) == 0
