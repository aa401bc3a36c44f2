"""The fence around library internals: every hook holds on the installed libraries, and says which one when not.

`test_hook_holds[<hook>]` probes each registered hook on real objects of the installed nats-py, FastStream and
OpenTelemetry SDK, so an upgrade that moves an internal fails naming the hook. The tests after it check what
the hooks do against a real nats-server, and that a broken hook is named at start-up and at use.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from shinchoku_runtime.adapters import HOOKS, HookBroken, check_hooks, hooks
from shinchoku_runtime.adapters.nats_py import FLUSH_NOW

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _probe_afresh() -> Iterator[None]:
    """Each test sees the hooks as the libraries are now (a test may break one on purpose)."""
    hooks.forget()
    yield
    hooks.forget()


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_holds(name: str) -> None:
    hook = HOOKS[name]
    try:
        hook.probe()
    except HookBroken as e:
        pytest.fail(
            f"{e}\n  touches {', '.join(hook.touches)} of {hook.library} (verified on {hook.verified_on})"
            f"\n  without it: {hook.without}"
        )


def test_every_library_has_its_hooks_registered() -> None:
    assert {hook.library for hook in HOOKS.values()} == {"nats-py", "faststream", "opentelemetry-sdk"}
    for hook in HOOKS.values():
        assert hook.touches, hook.name
        assert hook.name.startswith(("nats-py.", "faststream.", "otel-sdk.")), hook.name


def test_a_broken_hook_is_named_at_start_up(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delattr(Client, "_flush_pending")
    with caplog.at_level(logging.WARNING, logger="shinchoku_runtime.adapters"):
        broken = check_hooks()
    assert [e.hook for e in broken] == [FLUSH_NOW]
    assert FLUSH_NOW in caplog.text
    assert "Msg.ack() one by one" in caplog.text  # what the platform does instead
    with pytest.raises(HookBroken, match=re.escape(FLUSH_NOW)):
        check_hooks(strict=True)
