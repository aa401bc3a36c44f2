"""Run a few OS processes as one: start in order, wait until healthy, restart what dies, stop in order.

Each process writes `run/{name}.pid` and appends its output to `logs/{name}.log`. Children run in their
own session (so a Ctrl-C in the terminal reaches only the supervisor, which then stops them in order)
and are asked by the kernel to terminate if the supervisor itself dies (PR_SET_PDEATHSIG), so no
process outlives it even after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

#: Backoff between restarts of a process that keeps dying: 0.5 s, 1 s, 2 s, then 4 s at most.
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 4.0
#: A process that stayed up this long is healthy again: its next failure restarts it after BACKOFF_FIRST.
BACKOFF_RESET_AFTER = 30.0

_PR_SET_PDEATHSIG = 1


class AlreadyRunning(Exception):
    """Another supervisor holds the lock of this data directory."""

    def __init__(self, pid: int | None, lock_path: Path) -> None:
        super().__init__(f"a stack is already running on this data directory (pid {pid}, lock {lock_path})")
        self.pid = pid


#: A process that exits this many times before it was ever healthy is broken, not unlucky: `up` gives up.
STARTUP_ATTEMPTS = 4


class StartupFailed(Exception):
    """A process did not become healthy in time, or kept exiting before it did."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


def backoff_delay(consecutive_failures: int) -> float:
    """Seconds to wait before the n-th consecutive restart (n ≥ 1)."""
    return float(min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, consecutive_failures - 1)))


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one supervised process and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    #: Ready when GET answers 200 …
    health_url: str | None = None
    #: … or, for a process without HTTP, when it accepts TCP connections here.
    health_tcp: tuple[str, int] | None = None
    #: Run once the process is healthy (on every start, restarts included), e.g. declaring streams.
    on_ready: Callable[[], None] | None = None
    cwd: Path | None = None

    def is_healthy(self) -> bool:
        if self.health_url is not None:
            try:
                return httpx.get(self.health_url, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False
        if self.health_tcp is not None:
            try:
                with socket.create_connection(self.health_tcp, timeout=0.5):
                    return True
            except OSError:
                return False
        return True


@dataclass
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None
    ready: bool = False


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM it when the supervisor dies, even by SIGKILL.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def pid_alive(pid: int) -> bool:
    """Whether a process runs under that pid (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class DirectoryLock:
    """An exclusive flock on `path` holding our pid; refuses with AlreadyRunning when another process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise AlreadyRunning(int(text) if text.isdigit() else None, self.path) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # The file stays (unlinking a lock file races with the next holder); only the pid goes.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class Supervisor:
    """Starts, watches and stops the processes of `specs` (in that order; stops in reverse groups)."""

    specs: list[ProcessSpec]
    run_dir: Path
    logs_dir: Path
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))  # noqa: T201
    stop_timeout: float = 10.0
    poll_interval: float = 0.1
    stopping: threading.Event = field(default_factory=threading.Event)
    _children: dict[str, _Child] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._children = {spec.name: _Child(spec) for spec in self.specs}

    # -- pid files -------------------------------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    # -- starting --------------------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / f"{spec.name}.log", "ab") as log_file:
            child.process = subprocess.Popen(
                spec.argv,
                env=spec.env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child.started_at = time.monotonic()
        child.ready = False
        child.restart_at = None
        self.pid_file(spec.name).write_text(f"{child.process.pid}\n", encoding="ascii")

    def start(self, names: Iterable[str]) -> None:
        for name in names:
            self._spawn(self._children[name])

    def wait_ready(self, names: Iterable[str], timeout: float) -> None:
        """Block until each named process is healthy (restarting any that dies meanwhile)."""
        pending = [self._children[n] for n in names]
        deadline = time.monotonic() + timeout
        while pending:
            if self.stopping.is_set():
                return
            if time.monotonic() > deadline:
                names_left = [c.spec.name for c in pending]
                raise StartupFailed(f"not healthy after {timeout:.0f}s: {', '.join(names_left)}", names_left)
            self.tick()
            broken = [c.spec.name for c in pending if c.failures >= STARTUP_ATTEMPTS]
            if broken:
                raise StartupFailed(
                    f"exited {STARTUP_ATTEMPTS} times before it was healthy: {', '.join(broken)}", broken
                )
            for child in list(pending):
                if child.process is not None and child.process.poll() is None and child.spec.is_healthy():
                    self._became_ready(child)
                    pending.remove(child)
                    self.log(f"{child.spec.name} healthy after {time.monotonic() - child.started_at:.1f}s")
            if pending:
                self.stopping.wait(self.poll_interval)

    def _became_ready(self, child: _Child, *, strict: bool = True) -> None:
        child.ready = True
        if child.spec.on_ready is None:
            return
        try:
            child.spec.on_ready()
        except Exception as e:
            if strict:
                raise
            # After a restart the services keep running on what exists; say so rather than stop them all.
            self.log(f"{child.spec.name}: after restart, {e}")

    # -- supervising -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Notice deaths, schedule restarts with backoff, perform those that are due."""
        now = time.monotonic()
        for child in self._children.values():
            process = child.process
            if process is not None and process.poll() is not None:
                code = process.returncode
                uptime = now - child.started_at
                child.process = None
                self.pid_file(child.spec.name).unlink(missing_ok=True)
                child.failures = 1 if uptime >= BACKOFF_RESET_AFTER else child.failures + 1
                delay = backoff_delay(child.failures)
                child.restart_at = now + delay
                self.log(
                    f"{child.spec.name} (pid {process.pid}) exited with {_describe_exit(code)} after {uptime:.1f}s: "
                    f"restarting in {delay:.1f}s (see {self.logs_dir / (child.spec.name + '.log')})"
                )
            elif child.process is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
                self.log(f"{child.spec.name} restarted (pid {child.process.pid if child.process else '?'})")
            elif child.process is not None and not child.ready and child.restarts and child.spec.is_healthy():
                self._became_ready(child, strict=False)
                self.log(f"{child.spec.name} is healthy again")

    def run(self) -> None:
        """Supervise until `stopping` is set."""
        while not self.stopping.is_set():
            self.tick()
            self.stopping.wait(self.poll_interval)

    def pids(self) -> dict[str, int]:
        return {n: c.process.pid for n, c in self._children.items() if c.process is not None}

    def restarts(self) -> dict[str, int]:
        return {n: c.restarts for n, c in self._children.items()}

    # -- stopping --------------------------------------------------------------------------------

    def stop(self, groups: Iterable[Iterable[str]]) -> None:
        """Stop group by group: SIGTERM to a whole group, wait, SIGKILL what is left; pid files removed."""
        for group in groups:
            children = [self._children[n] for n in group]
            for child in children:
                child.restart_at = None
                if child.process is not None and child.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.terminate()
            deadline = time.monotonic() + self.stop_timeout
            for child in children:
                if child.process is None:
                    continue
                try:
                    child.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.log(f"{child.spec.name} did not stop within {self.stop_timeout:.0f}s: killing it")
                    child.process.kill()
                    child.process.wait(5)
                child.process = None
            for child in children:
                self.pid_file(child.spec.name).unlink(missing_ok=True)

    def stop_all(self) -> None:
        self.stop([[spec.name] for spec in reversed(self.specs)])


def clear_stale(run_dir: Path, markers: dict[str, str], log: Callable[[str], None], timeout: float = 10.0) -> None:
    """Pid files left by a supervisor that died: a process they name that is still ours stops, the file goes.

    `markers` maps a process name to a piece of its command line, so a recycled pid is never signalled.
    """
    for name, marker in markers.items():
        path = run_dir / f"{name}.pid"
        if not path.exists():
            continue
        text = path.read_text("ascii").strip()
        pid = int(text) if text.isdigit() else None
        if pid is not None and pid_alive(pid) and marker in _cmdline(pid):
            log(f"{name}: a process left by an earlier run is still alive (pid {pid}): stopping it")
            _terminate_pid(pid, timeout)
        path.unlink(missing_ok=True)


def _terminate_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@contextlib.contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP set `event` (a second SIGINT as well: stopping is already orderly)."""
    previous = {}

    def handler(_signum: int, _frame: object) -> None:
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
