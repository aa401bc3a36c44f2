"""The services on the proxied cluster as deployed: one catalog, two ingest and two reporting replicas, each pair
sharing one PostgreSQL database and one durable consumer, every process reaching NATS through the client proxies.

A process may run under a wrapper (Debian's `faketime` for a skewed clock) and with another Python: the
`SHINCHOKU_FAULTS_PYTHON` variable names the interpreter of an older checkout, to run a scenario once
against the code before a fix.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shinchoku.issuer import EmbeddedIssuer, StackAuth
from shinchoku_runtime.harness import ServiceProcess, service_env
from shinchoku_runtime.natsserver import free_port

from .cluster import ProxiedCluster

#: Another checkout's interpreter for every service process (the code before a fix); this one's by default.
PYTHON = os.environ.get("SHINCHOKU_FAULTS_PYTHON") or sys.executable


@dataclass
class Replica(ServiceProcess):
    """A service process, optionally under a wrapper command (`faketime -f -6h`)."""

    wrapper: tuple[str, ...] = ()
    python: str = PYTHON

    def start(self) -> Replica:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, self.python, "-m", self.module, *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def _signal_group(self, sig: signal.Signals) -> None:
        """The whole process group (a wrapper such as faketime runs the service as its child)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class ClusterDeployment:
    """The processes of the deployed topology, and what the fault harness asks of a target (see scenario.Target)."""

    cluster: ProxiedCluster
    directory: Path
    databases: dict[str, str]
    settings: dict[str, dict[str, str]]
    processes: dict[str, Replica] = field(default_factory=dict)

    # --- the harness's view ---------------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        return self.cluster.url

    def password(self, user: str) -> str:
        return self.cluster.passwords[user]

    def url(self, service: str) -> str:
        """A service's HTTP base URL; a replica by its name (`ingest-2`), a service by its first replica."""
        return self.processes[service if service in self.processes else f"{service}-1"].url

    @property
    def process_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.cluster.nodes) + tuple(self.processes)

    @property
    def issuer(self) -> EmbeddedIssuer:
        """The issuer every replica trusts (as a deployment's identity provider would be)."""
        return EmbeddedIssuer.prepare(self.directory / "issuer")

    @property
    def auth(self) -> StackAuth:
        return StackAuth(self.issuer)

    def healthy(self, name: str) -> bool:
        if name in self.processes:
            try:
                return httpx.get(self.processes[name].url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        return self.cluster.node(name).healthy()

    # --- processes ------------------------------------------------------------------------------------

    def add(self, service: str, name: str, *, wrapper: tuple[str, ...] = ()) -> Replica:
        port = free_port()
        env = service_env(
            service,
            nats_url=self.cluster.url,
            nats_password=self.cluster.passwords[service],
            port=port,
            data_dir=self.directory / name,
            database_url=self.databases.get(service),
            stream_replicas=self.cluster.replicas,
            log_level="WARNING",
            **self.settings.get(service, {}),
        )
        env["OTEL_SDK_DISABLED"] = "true"
        env["SHINCHOKU_AUTH_JWKS_URL"] = self.issuer.jwks_path.as_uri()
        if wrapper:
            # The wall clock is skewed, not the monotonic one (asyncio's timers would be).
            env["DONT_FAKE_MONOTONIC"] = "1"
        replica = Replica(
            name=name,
            module=service,
            env=env,
            port=port,
            log_file=self.directory / "logs" / f"{name}.log",
            wrapper=wrapper,
        )
        self.processes[name] = replica
        return replica

    def start(self, names: list[str], timeout: float = 180.0) -> None:
        """Start `names` one after the other (two replicas creating one schema at once race on CREATE TABLE)."""
        for name in names:
            self.start_healthy(name, timeout)

    def start_healthy(self, name: str, timeout: float = 180.0, *, attempts: int = 3) -> None:
        """Start `name` and wait until it is healthy; on a fresh port when its own was taken meanwhile.

        `free_port` cannot reserve a port, and a stopped replica's port is free for anyone until it starts again
        (another test's `free_port`, or any outgoing connection's ephemeral port): seen once in CI as a replica's
        restart exiting with `address already in use`. Only that exit is retried; any other one is raised."""
        process = self.processes[name]
        for attempt in range(1, attempts + 1):
            since = process.log_size()
            process.start()
            try:
                self.wait_healthy(name, timeout)
                return
            except RuntimeError:
                if attempt == attempts or not process.bind_failed(since):
                    raise
            process.move_to_free_port()

    def wait_healthy(self, name: str, timeout: float = 180.0) -> None:
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        while not self.healthy(name):
            if not process.running:
                raise RuntimeError(
                    f"{name} exited with {process.process and process.process.returncode}:\n{process.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not healthy after {timeout:.0f}s:\n{process.log_tail()}")
            time.sleep(0.25)

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def pause(self, name: str) -> int:
        """SIGSTOP (a hung process: its connections stay open, it answers nothing); returns the pid."""
        process = self.processes[name].process
        assert process is not None, f"{name} is not running"
        os.kill(process.pid, signal.SIGSTOP)
        return process.pid

    def resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def restart(self, name: str, *, wrapper: tuple[str, ...] | None = None, timeout: float = 180.0) -> None:
        """Stop (SIGTERM) and start again, optionally under another wrapper."""
        process = self.processes[name]
        process.stop()
        if wrapper is not None:
            process.wrapper = wrapper
            if wrapper:
                process.env["DONT_FAKE_MONOTONIC"] = "1"
        self.start_healthy(name, timeout)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            with contextlib.suppress(Exception):
                process.stop(10)
            with contextlib.suppress(Exception):
                process.kill()


def deploy(
    cluster: ProxiedCluster,
    directory: Path,
    databases: dict[str, str],
    settings: dict[str, dict[str, str]],
    *,
    log: Callable[[str], None] = lambda _line: None,
) -> ClusterDeployment:
    """catalog, ingest-1, ingest-2, reporting-1, reporting-2 on `cluster`, started and healthy."""
    deployment = ClusterDeployment(cluster, directory, databases, settings)
    deployment.add("catalog", "catalog")
    for service in ("ingest", "reporting"):
        for i in (1, 2):
            deployment.add(service, f"{service}-{i}")
    started = time.monotonic()
    try:
        deployment.start(list(deployment.processes))
    except BaseException:
        deployment.stop()
        raise
    log(f"services healthy after {time.monotonic() - started:.0f}s")
    return deployment
