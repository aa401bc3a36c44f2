"""Fault suite: each scenario's accounting line goes to artifacts/faults.txt and into the terminal summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .scenario import HEADER

_LINES: list[str] = []


@pytest.fixture(scope="session")
def fault_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record one scenario line (also when output capture is on): artifacts/faults.txt and the terminal summary."""
    path = Path(request.config.rootpath) / "artifacts" / "faults.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n", "utf-8")

    def add(line: str) -> None:
        _LINES.append(line)
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LINES:
        terminalreporter.section("fault scenarios (also in artifacts/faults.txt)")
        terminalreporter.write_line(HEADER)
        for line in _LINES:
            terminalreporter.write_line(line)
