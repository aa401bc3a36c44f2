"""Hostile input: outcome counts go to artifacts/hostile.txt and into the terminal summary; one stack per directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.faults.stack import RunningStack, running_stack


@pytest.fixture(scope="session")
def hostile_report(summary_section: Callable[[str, str | None], Callable[[str], None]]) -> Callable[[str], None]:
    """Record one outcome line (visible even with output captured): artifacts/hostile.txt and the summary."""
    return summary_section("hostile", None)


@pytest.fixture(scope="package")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The whole stack as `shinchoku up` runs it (SQLite, free ports), shared by the tests of this directory."""
    with running_stack(tmp_path_factory.mktemp("hostile") / "var") as stack:
        yield stack
