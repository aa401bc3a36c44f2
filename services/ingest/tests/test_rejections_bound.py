"""Issue #15, hole 5 (its API part): `/rejections` is bounded in memory whatever the page size.

A rejection keeps the original bytes, and STATUS takes messages up to 1 MiB: a page of 1,000 could hold a GiB
of payloads. A page stops adding payloads at a byte budget, says so (`truncated`, `next_offset`), and the
client pages on. Measured with tracemalloc around the request, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import os
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from ingest import repository
from ingest.app import create_app
from ingest.config import IngestSettings
from ingest.repository import DecisionRecord
from shinchoku.issuer import EmbeddedIssuer, StackAuth

ROWS = 1000
SMALL = 64 * 1024
LARGE = 1024 * 1024
#: Every 100th rejection is a 1 MiB message (refused unread as too large, its bytes kept): ~125 MB in all.
SIZES = [LARGE if i % 100 == 0 else SMALL for i in range(ROWS)]
#: What one request may allocate at its peak, whatever `limit` says.
MEMORY_BOUND = 48 * 1024 * 1024


def rejection(seq: int, size: int) -> DecisionRecord:
    return DecisionRecord(
        stream_seq=seq,
        event_id=None,
        outcome=repository.OUTCOME_REJECTED,
        reason="malformed",
        message="形式不正 (malformed): too large",
        subject="status.mof.1-25",
        agency="mof",
        measure_id=None,
        received_at=datetime(2026, 12, 1, tzinfo=UTC),
        admitted_at=None,
        trace_id=None,
        content_hash=None,
        rejection_id=f"STATUS-{seq}",
        payload=seq.to_bytes(4, "big") + os.urandom(size - 4),
    )


@pytest.fixture
async def http(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Ingest's HTTP app over a store holding ROWS large rejections (no NATS needed to read them)."""
    issuer = EmbeddedIssuer.prepare(tmp_path / "ingest")
    app = create_app(IngestSettings(database_url=database_url, data_dir=tmp_path / "ingest"))
    engine = app.state.runtime.engine
    repository.create_schema(engine)
    for start in range(0, ROWS, 50):
        rows = [rejection(seq, SIZES[seq - 1]) for seq in range(start + 1, min(ROWS, start + 50) + 1)]
        repository.write_batch(engine, decisions=rows, claims=[], late_admissions=[])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest", auth=StackAuth(issuer)) as client:
        yield client
    engine.dispose()


async def test_a_page_of_large_rejections_is_bounded_in_memory_and_pages_on(http: httpx.AsyncClient) -> None:
    seen: list[int] = []
    offset = 0
    pages = 0
    while True:
        tracemalloc.start()
        try:
            response = await http.get("/rejections", params={"limit": 1000, "offset": offset})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 200, response.text
        assert peak < MEMORY_BOUND, f"one page of /rejections allocated {peak / 2**20:.0f} MiB at its peak"
        page = response.json()
        assert page["total"] == ROWS
        items = page["items"]
        assert items, "a page always carries at least one rejection"
        for item in items:
            payload = base64.b64decode(item["payload_b64"])
            assert int.from_bytes(payload[:4], "big") == item["stream_seq"]
            assert len(payload) == SIZES[item["stream_seq"] - 1]
            seen.append(item["stream_seq"])
        pages += 1
        if not page["truncated"]:
            assert page["next_offset"] is None
            break
        assert page["next_offset"] == offset + len(items)
        offset = page["next_offset"]
    assert seen == list(range(ROWS, 0, -1))  # newest first, each once
    assert pages > 1


async def test_a_small_page_is_whole(http: httpx.AsyncClient) -> None:
    page = (await http.get("/rejections", params={"limit": 5})).json()
    assert [i["stream_seq"] for i in page["items"]] == [1000, 999, 998, 997, 996]
    assert page["truncated"] is False
    assert page["next_offset"] is None
