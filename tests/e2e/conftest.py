"""Run `shinchoku up` as a subprocess on a temporary data directory, on free ports, and clean up after it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from shinchoku.issuer import StackAuth
from shinchoku_runtime.natsserver import free_port

SHINCHOKU = str(Path(sys.executable).parent / "shinchoku")
FAKE_SERVICES = Path(__file__).parent / "fake_services"
NAMES = ("nats-server", "catalog", "ingest", "reporting")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def _ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"nats-server" in cmdline or b"-m\0" in cmdline


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Up:
    """One `shinchoku up` child with its data directory, environment and output file."""

    data_dir: Path
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    output: Path = field(init=False)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.output = self.cwd / f"up-{self.data_dir.name}.out"

    @property
    def auth(self) -> StackAuth:
        """httpx auth reading as the secretariat (`/metrics` as the operator), from the stack's issuer."""
        return StackAuth.of(self.data_dir)

    def start(self) -> Up:
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                [SHINCHOKU, "up", "--data-dir", str(self.data_dir)],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(self.process)
        return self

    def run_again(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A second `up` on the same data directory, to completion."""
        return subprocess.run(
            [SHINCHOKU, "up", "--data-dir", str(self.data_dir)],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @property
    def log(self) -> str:
        path = self.data_dir / "logs" / "up.log"
        return path.read_text("utf-8") if path.exists() else ""

    def text(self) -> str:
        return self.output.read_text("utf-8", errors="replace") if self.output.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait for the supervisor's `all healthy` line; returns the seconds it took."""
        t0 = time.monotonic()
        marks = self.log.count("all healthy")

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"`up` exited with {self.process.returncode}:\n{self.text()}\n{self.log}")
            return self.log.count("all healthy") > marks

        wait_for(ready, timeout, "all healthy")
        return time.monotonic() - t0

    def pids(self) -> dict[str, int]:
        out = {}
        for name in NAMES:
            path = self.data_dir / "run" / f"{name}.pid"
            with contextlib.suppress(FileNotFoundError, ValueError):
                out[name] = int(path.read_text().strip())
        return out

    def stack(self) -> dict[str, object]:
        body: dict[str, object] = json.loads((self.data_dir / "stack.json").read_text())
        return body

    def url(self, service: str) -> str:
        http = self.stack()["http"]
        assert isinstance(http, dict)
        return str(http[service])

    def healthy(self, service: str) -> bool:
        try:
            return httpx.get(self.url(service) + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def cleanup(self) -> None:
        """Whatever happened, leave nothing running: `up`, then anything its pid files still name."""
        for process in self.started:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        for pid in self.pids().values():
            if pid_alive(pid) and _ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def stack_env(tmp_path: Path, *, fake: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHINCHOKU_")}
    env["SHINCHOKU_NATS_PORT"] = str(free_port())
    for service in ("CATALOG", "INGEST", "REPORTING"):
        env[f"SHINCHOKU_{service}_PORT"] = str(free_port())
    env["SHINCHOKU_STARTUP_TIMEOUT"] = "90"
    if fake:
        env["PYTHONPATH"] = str(FAKE_SERVICES)
    return env


@pytest.fixture
def make_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Factory: `make_up(fake=True)` runs `up` with stand-in services; `fake=False` with the real ones."""
    ups: list[Up] = []

    def factory(*, fake: bool, data_dir: Path | None = None, env: dict[str, str] | None = None) -> Up:
        up = Up(data_dir=data_dir or tmp_path / "var", env=env or stack_env(tmp_path, fake=fake), cwd=tmp_path)
        ups.append(up)
        return up

    yield factory
    for up in ups:
        up.cleanup()
