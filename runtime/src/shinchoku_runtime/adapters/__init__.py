"""The fence around library internals: every private part of nats-py, FastStream or the OpenTelemetry SDK that
the platform relies on is used here and nowhere else, one module per library, each hook registered by name
with a probe (`hooks.HOOKS`, `hooks.check_hooks`). Outside this package only public APIs are used.
"""

from shinchoku_runtime.adapters import faststream_nats, nats_py, otel_sdk
from shinchoku_runtime.adapters.hooks import HOOKS, Hook, HookBroken, check_hooks

__all__ = ["HOOKS", "Hook", "HookBroken", "check_hooks", "faststream_nats", "nats_py", "otel_sdk"]
