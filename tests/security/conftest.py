"""A stack started the way `shinchoku up` starts it, shared by the security tests that need running services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.stack import RunningStack, running_stack


@pytest.fixture(scope="package")
def security_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("security") / "var") as running:
        yield running
