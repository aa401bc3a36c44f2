"""The registry of library hooks: every place the runtime relies on a private part of nats-py, FastStream or the
OpenTelemetry SDK, by name.

A hook is registered with what it touches, what it buys, what happens without it and a probe that checks it on
real objects of the installed library (built without a server, in well under a millisecond). `check_hooks()`
runs every probe at a service's start and logs a warning naming each broken hook and the slower path taken
instead (`strict=True` raises); `tests/runtime/test_adapters.py` runs them one test per hook, so an upgrade
that moves an internal fails by name. An adapter that finds its hook broken on a live object says so once,
naming it, and takes the public path (`broken`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger("shinchoku_runtime.adapters")


class HookBroken(RuntimeError):
    """A library no longer has the private part a hook relies on (or it no longer behaves as the hook expects)."""

    def __init__(self, hook: str, detail: str) -> None:
        super().__init__(f"library hook {hook!r} is broken: {detail}")
        self.hook = hook
        self.detail = detail


@dataclass(frozen=True)
class Hook:
    """One reliance on a library's internals."""

    name: str
    #: The distribution whose internals these are, and the versions the hook was verified on.
    library: str
    verified_on: str
    #: The private names (or private behaviour) it relies on.
    touches: tuple[str, ...]
    #: What it is for, and what the platform does when it is broken.
    why: str
    without: str
    probe: Callable[[], None]


HOOKS: dict[str, Hook] = {}


def register(hook: Hook) -> Hook:
    if hook.name in HOOKS:
        raise ValueError(f"hook {hook.name!r} registered twice")
    HOOKS[hook.name] = hook
    return hook


def need(hook: str, condition: bool, detail: str) -> None:
    """Inside a probe: raise `HookBroken` naming `hook` unless `condition` holds."""
    if not condition:
        raise HookBroken(hook, detail)


def source_says(hook: str, obj: object, text: str, detail: str) -> None:
    """Inside a probe: `obj`'s source contains `text` (how the library calls what the hook replaces).

    Skipped when the source is not installed (the structural checks of the probe still run).
    """
    try:
        source = inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        log.debug("no source for %r: %s checked without it", obj, hook)
        return
    need(hook, text in source, detail)


_said: set[str] = set()


def broken(error: HookBroken) -> None:
    """An adapter found its hook broken on a live object: warn once, naming the hook and the way taken instead."""
    if error.hook in _said:
        return
    _said.add(error.hook)
    hook = HOOKS.get(error.hook)
    log.warning("%s; %s", error, hook.without if hook else "taking the public path")


def installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_hooks(*, strict: bool = False) -> list[HookBroken]:
    """Probe every registered hook; log a warning naming each broken one (raise the first when `strict`).

    Also says, once, when an installed library differs from the version its hooks were verified on (the
    probes passing, they still hold; the note tells an operator where to look first if something is off).
    """
    found: list[HookBroken] = []
    for hook in HOOKS.values():
        try:
            hook.probe()
        except HookBroken as e:
            found.append(e)
        except Exception as e:  # a probe that trips over a changed library is a broken hook, not a crash
            found.append(HookBroken(hook.name, f"{type(e).__name__}: {e}"))
        _holds[hook.name] = not found or found[-1].hook != hook.name
    for error in found:
        _said.add(error.hook)
        log.warning("%s; %s", error, HOOKS[error.hook].without)
    seen: set[tuple[str, str]] = set()
    for hook in HOOKS.values():
        version = installed(hook.library)
        if version is not None and not version.startswith(hook.verified_on) and (hook.library, version) not in seen:
            seen.add((hook.library, version))
            log.info("%s %s installed; its hooks were verified on %s", hook.library, version, hook.verified_on)
    if strict and found:
        raise found[0]
    return found


_holds: dict[str, bool] = {}


def holds(hook: str) -> bool:
    """Whether a hook holds, probed once per process; a broken one is reported by name (see `broken`)."""
    answer = _holds.get(hook)
    if answer is None:
        try:
            HOOKS[hook].probe()
            answer = True
        except HookBroken as e:
            broken(e)
            answer = False
        except Exception as e:  # a probe tripping over a changed library: the hook is broken
            broken(HookBroken(hook, f"{type(e).__name__}: {e}"))
            answer = False
        _holds[hook] = answer
    return answer


def forget() -> None:
    """Probe again on next use (tests that break a hook on purpose, then mend it)."""
    _holds.clear()
    _said.clear()


def assume(hook: str, holding: bool) -> None:
    """Take a hook as holding or broken without probing it (benchmarks comparing a hook with the public path)."""
    if hook not in HOOKS:
        raise KeyError(hook)
    _holds[hook] = holding
