"""A full disk under the data directory: the stack runs on a small tmpfs made for the test, which is then filled.

What an operator sees is recorded in the scenario line; what must hold is the usual: nothing acknowledged is
lost or counted twice. Observed with nats-server 2.15: once a JetStream write fails with ENOSPC the stream
stays unwritable (publishes time out, no error PubAck) even after space is freed, until nats-server restarts;
so recovery here is: free space, restart nats-server (as the operator would), resend what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .load import Outcome, Publishers, plan_reports
from .observe import Stores, admin_connection, catalog_measures, last_seq
from .scenario import Harness, check
from .stack import RunningStack, running_stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(f"{s}.__main__") is None for s in ("catalog", "ingest", "reporting")),
        reason="needs `python -m catalog`, `python -m ingest` and `python -m reporting`",
    ),
]

DISK_MB = 64
#: Left free when the filler is written: the load fills the rest.
HEADROOM = 2 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_MB mounted for this test (we need to be allowed to mount: skipped with the reason if not)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine: cannot make a small filesystem for the full-disk scenario")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): full-disk scenario skipped")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path, headroom: int) -> int:
    """Write a filler file until the filesystem is full, then give back `headroom` bytes; returns its size."""
    with open(path, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        with contextlib.suppress(OSError):
            f.close()
    size = max(0, path.stat().st_size - headroom)
    os.truncate(path, size)
    return size


def told_disk_full(log: Path) -> bool:
    try:
        text = log.read_text("utf-8", errors="replace")
    except OSError:
        return False
    return any(s in text for s in ("no space left on device", "database or disk is full", "No space left on device"))


def health(url: str) -> str:
    try:
        response = httpx.get(f"{url}/healthz", timeout=3)
    except httpx.HTTPError as e:
        return f"unreachable ({type(e).__name__})"
    return str(response.status_code)


@pytest.fixture
def disk_stack(small_disk: Path) -> Iterator[RunningStack]:
    """The stack with its whole data directory (JetStream store, SQLite files, logs) on the small filesystem."""
    overrides = {
        "SHINCHOKU_INGEST_ACK_WAIT": "5",
        "SHINCHOKU_REPORTING_ACK_WAIT": "3",
        "SHINCHOKU_INGEST_PUBLISH_TIMEOUT": "3",
        "SHINCHOKU_INGEST_RETRY_DELAY_MAX": "2",
        "SHINCHOKU_REPORTING_RETRY_DELAY": "1",
        # JetStream reserves each agency's share on the store up front (17 x 256 MiB by default) against its limit,
        # 75 % of this 64 MiB filesystem: 17 x 2 MiB fit, and `digital`'s share of the 1,800 reports is < 1 MiB.
        "SHINCHOKU_STREAM_AGENCY_MAX_BYTES": str(2 * 1024 * 1024),
    }
    with running_stack(small_disk / "var", overrides) as stack:
        yield stack


async def test_full_disk_under_the_data_directory(
    disk_stack: RunningStack, small_disk: Path, fault_report: Callable[[str], None]
) -> None:
    stack, data_dir = disk_stack, disk_stack.data_dir
    started = time.monotonic()
    stores = Stores(
        f"sqlite:///{data_dir / 'db' / 'ingest.sqlite'}", f"sqlite:///{data_dir / 'db' / 'reporting.sqlite'}"
    )
    harness = Harness(stack, stores, catalog_measures(stack.url("catalog")))
    admin = await admin_connection(stack.nats_url, stack.password("admin"))
    status_from = await last_seq(admin, "STATUS") + 1
    accepted_from = await last_seq(admin, "ACCEPTED") + 1
    rejected_from = await last_seq(admin, "REJECTED") + 1
    before = plan_reports(harness.measures, fiscal_year=2012, count=300, seed=12)
    during = plan_reports(harness.measures, fiscal_year=2013, count=1500, seed=13)
    outcome = Outcome()
    notes: list[str] = []
    filler = small_disk / "filler"
    try:
        async with Publishers(stack.nats_url, harness.agency_passwords, timeout=2.0) as pubs:
            await pubs.publish_all(before, rate=300, outcome=outcome)
            assert len(outcome.acked) == len(before)

            size = await asyncio.to_thread(fill, filler, HEADROOM)
            await pubs.publish_all(during, rate=300, deadline=12, outcome=outcome)
            refused = [r for r in during if r.event_id not in outcome.acked]
            notes.append(
                f"disk full after {len(outcome.acked) - len(before)} of {len(during)}; "
                f"{len(refused)} publishes not acknowledged ({dict(outcome.failures)})"
            )
            notes.append(
                f"healthz while full: ingest {health(stack.url('ingest'))}, reporting {health(stack.url('reporting'))}"
            )
            said = [n for n in ("nats-server", "ingest", "reporting") if told_disk_full(stack.stack.log_file(n))]
            notes.append(f"logs naming the full disk: {', '.join(said) or 'none'}")
            # The fault was there to be seen: publishes went unacknowledged or a process said why (its log lines
            # may themselves be lost: the logs live on the full disk too).
            assert refused or said, f"the disk ({DISK_MB} MB, {size >> 20} MB filler) never filled: nothing observed"

            filler.unlink()
            await asyncio.to_thread(stack.restart, "nats-server")
            await pubs.publish_all(refused, rate=600, deadline=60, outcome=outcome)
        result = await harness.account(
            "full disk (tmpfs under data dir)",
            outcome,
            set(),
            admin,
            settle=90,
            starts=(status_from, accepted_from, rejected_from),
        )
    finally:
        filler.unlink(missing_ok=True)
        await admin.close()
        stores.dispose()
    result.notes = notes + result.notes
    result.seconds = time.monotonic() - started
    check(result, fault_report)
