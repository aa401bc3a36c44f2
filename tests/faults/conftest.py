"""Fault suite: each scenario's accounting line goes to artifacts/faults.txt and into the terminal summary (the root
conftest gathers the lines from every xdist worker)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .scenario import HEADER


@pytest.fixture(scope="session")
def fault_report(summary_section: Callable[[str, str | None], Callable[[str], None]]) -> Callable[[str], None]:
    """Record one scenario line (also when output capture is on): artifacts/faults.txt and the terminal summary."""
    return summary_section("faults", HEADER)
