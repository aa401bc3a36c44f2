"""Hostile input: outcome counts go to artifacts/hostile.txt and into the terminal summary; one stack per directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.stack import RunningStack, running_stack

_LINES: list[str] = []


@pytest.fixture(scope="session")
def hostile_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record one outcome line (visible even with output captured): artifacts/hostile.txt and the summary."""
    path = Path(request.config.rootpath) / "artifacts" / "hostile.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", "utf-8")

    def add(line: str) -> None:
        _LINES.append(line)
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    return add


@pytest.fixture(scope="package")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The whole stack as `shinchoku up` runs it (SQLite, free ports), shared by the tests of this directory."""
    with running_stack(tmp_path_factory.mktemp("hostile") / "var") as stack:
        yield stack


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LINES:
        terminalreporter.section("hostile input outcomes (also in artifacts/hostile.txt)")
        for line in _LINES:
            terminalreporter.write_line(line)
