"""Replicas that start together on an empty PostgreSQL database each create the store, and none fails."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from catalog import repository as catalog_repository
from ingest import repository as ingest_repository
from reporting import repository as reporting_repository
from shinchoku_runtime.db import make_engine

CREATORS: dict[str, Callable[[Engine], None]] = {
    "catalog": catalog_repository.create_schema,
    "ingest": ingest_repository.create_schema,
    "reporting": reporting_repository.create_store,
}


@pytest.mark.parametrize("service", sorted(CREATORS))
def test_replicas_create_the_store_at_once(postgres_url: str, service: str) -> None:
    replicas = 6
    engines = [make_engine(postgres_url) for _ in range(replicas)]
    start = threading.Barrier(replicas)
    errors: list[BaseException] = []

    def replica(engine: Engine) -> None:
        start.wait()
        try:
            CREATORS[service](engine)
        except BaseException as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=replica, args=(engine,)) for engine in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for engine in engines:
        engine.dispose()
    assert errors == []
