"""The embedded stack started the way `shinchoku up` starts it (plan_launch + Supervisor), for fault and hostile tests.

The supervisor runs in a background thread: a process killed by a test is restarted by the supervisor,
exactly as under `shinchoku up`. Tests add what `up` does not do: pausing a process (SIGSTOP/SIGCONT),
changing a service's settings before its next restart, reading the stores and the streams as admin.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shinchoku.issuer import StackAuth
from shinchoku.launch import NATS, SERVICES, Launch, StackSettings, plan_launch
from shinchoku.stack import Stack
from shinchoku.supervisor import ProcessSpec, Supervisor
from shinchoku_runtime.natsserver import free_port


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ replaced by `values` for a moment (plan_launch reads the service settings from it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def stack_environment(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without SHINCHOKU_* settings, free ports for NATS and the services, `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHINCHOKU_")}
    env["SHINCHOKU_NATS_PORT"] = str(free_port())
    for service in SERVICES:
        env[f"SHINCHOKU_{service.upper()}_PORT"] = str(free_port())
        env[f"SHINCHOKU_{service.upper()}_LOG_LEVEL"] = "WARNING"
    env["OTEL_SDK_DISABLED"] = "true"
    env.update(overrides or {})
    return env


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class RunningStack:
    """nats-server, catalog, ingest and reporting under a Supervisor running in a background thread."""

    launch: Launch
    supervisor: Supervisor
    env: dict[str, str]
    log: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None

    @property
    def stack(self) -> Stack:
        return self.launch.stack

    @property
    def data_dir(self) -> Path:
        return Path(self.stack.data_dir)

    def url(self, service: str) -> str:
        return str(self.stack.http[service])

    @property
    def auth(self) -> StackAuth:
        """httpx auth reading as the secretariat (every agency's items), `/metrics` as the operator."""
        return StackAuth.of(self.data_dir)

    @property
    def process_names(self) -> tuple[str, ...]:
        return (NATS, *SERVICES)

    @property
    def nats_url(self) -> str:
        return str(self.stack.nats_plain_url)

    def password(self, user: str) -> str:
        return str(self.stack.password(user))

    def spec(self, name: str) -> ProcessSpec:
        return next(s for s in self.launch.specs if s.name == name)

    def pid(self, name: str) -> int | None:
        pid = self.supervisor.pids().get(name)
        return None if pid is None else int(pid)

    # --- faults ---------------------------------------------------------------------------------------

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal the process; the supervisor restarts it once it has died. Returns the pid signalled."""
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        os.kill(pid, sig)
        return pid

    def pause(self, name: str) -> int:
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        os.kill(pid, signal.SIGSTOP)
        return pid

    def resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def set_env(self, name: str, values: dict[str, str]) -> None:
        """Settings for the next start of `name` (the supervisor restarts with the spec's environment)."""
        self.spec(name).env.update(values)

    def restart(self, name: str, timeout: float = 60.0) -> None:
        """SIGTERM the process and wait until the supervisor's restart of it is healthy."""
        old = self.kill(name, signal.SIGTERM)
        self.wait_restarted(name, old, timeout)

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60.0) -> None:
        wait_until(
            lambda: self.pid(name) not in (None, old_pid) and self.healthy(name),
            timeout,
            f"{name} restarted and healthy",
            interval=0.2,
        )

    def healthy(self, name: str) -> bool:
        if name == NATS:
            return bool(self.spec(NATS).is_healthy())
        try:
            return httpx.get(self.url(name) + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # --- lifecycle ------------------------------------------------------------------------------------

    def _start(self, startup_timeout: float) -> None:
        supervisor = self.supervisor
        if self.launch.nats is not None:
            supervisor.start([NATS])
            supervisor.wait_ready([NATS], timeout=30.0)
        supervisor.start(SERVICES)
        supervisor.wait_ready(SERVICES, timeout=startup_timeout)
        self._thread = threading.Thread(target=supervisor.run, name="fault-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.supervisor.stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        # Anything paused must be able to hear SIGTERM.
        for pid in self.supervisor.pids().values():
            self.resume(pid)
        self.supervisor.stop_all()


@contextlib.contextmanager
def running_stack(
    data_dir: Path, overrides: dict[str, str] | None = None, *, startup_timeout: float = 120.0
) -> Iterator[RunningStack]:
    """Start the whole stack on `data_dir` (free ports, `overrides` as SHINCHOKU_* settings); stop it after."""
    env = stack_environment(overrides)
    with environment(env):
        settings = StackSettings()
        launch = plan_launch(data_dir, settings, base_env=env)
    launch.stack.save()
    running = RunningStack(launch=launch, supervisor=None, env=env)  # type: ignore[arg-type]  # set just below
    running.supervisor = Supervisor(
        launch.specs, run_dir=launch.stack.run_dir, logs_dir=launch.stack.logs_dir, log=running.log.append
    )
    try:
        try:
            with environment(env):  # the administrator's stream settings (e.g. the agencies' shares) as overridden
                running._start(startup_timeout)
        except Exception as e:
            tails = "\n".join(f"--- {name}:\n{log_tail(running, name)}" for name in (NATS, *SERVICES))
            raise RuntimeError(f"the stack did not start: {e}\n{tails}") from e
        yield running
    finally:
        running.stop()


def log_tail(stack: RunningStack, name: str, lines: int = 30) -> str:
    path = stack.stack.log_file(name)
    try:
        return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
