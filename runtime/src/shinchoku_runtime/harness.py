"""Real multi-process parts for tests and benchmarks: a NATS cluster on loopback and service processes (the small
OTLP/HTTP trace receiver they are observed with is `shinchoku_runtime.otlpreceiver`).

Everything here runs on 127.0.0.1 with free ports and temporary directories, and stops what it started.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shinchoku_runtime.certs import CertificateAuthority, TlsFiles
from shinchoku_runtime.natsconf import (
    ROUTE_USER,
    SECRETS_FILE,
    AuthCallout,
    ensure_secret,
    load_or_create_secrets,
    user_url,
)
from shinchoku_runtime.natsserver import NatsServer, NatsServerExited, free_port
from shinchoku_runtime.natstransport import tls_options
from shinchoku_runtime.otlpreceiver import OtlpReceiver as OtlpReceiver  # where tests found it before

log = logging.getLogger(__name__)


def _write_secrets(directory: Path, secrets: Mapping[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SECRETS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(dict(secrets), indent=2, sort_keys=True) + "\n")


@dataclass
class NatsCluster:
    """N nats-servers from the wheel on loopback, one JetStream cluster, the same users and secrets on each.

    `secure=True` is a deployment's transport: a CA of the cluster's own (`directory/tls`), TLS required on the
    client port and mutual TLS on the routes (each node's certificate names `localhost` and the loopback
    address), and route authorization with a generated password. `auth_callout` hands the authentication of
    every client but the services to a responder (`shinchoku_runtime.authcallout`).
    """

    directory: Path
    nodes: list[NatsServer]
    host: str = "127.0.0.1"
    ca_file: Path | None = None

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        size: int = 3,
        name: str = "shinchoku",
        host: str = "127.0.0.1",
        secure: bool = False,
        auth_callout: AuthCallout | None = None,
    ) -> NatsCluster:
        load_or_create_secrets(directory)
        route_password = ensure_secret(directory, ROUTE_USER) if secure else None
        secrets = load_or_create_secrets(directory)
        ca = CertificateAuthority.load_or_create(directory / "tls", name=f"{name} test CA") if secure else None
        cluster_ports = [free_port(host) for _ in range(size)]
        nodes = []
        for i in range(size):
            node_dir = directory / f"n{i + 1}"
            _write_secrets(node_dir, secrets)
            routes = tuple(f"nats-route://{host}:{p}" for j, p in enumerate(cluster_ports) if j != i)
            tls: TlsFiles | None = None
            if ca is not None:
                tls = ca.issue(node_dir / "tls", f"{name}-{i + 1}", dns=["localhost"], ips=[host], client=True)
            nodes.append(
                NatsServer.create(
                    node_dir,
                    host=host,
                    server_name=f"{name}-{i + 1}",
                    cluster_name=name,
                    cluster_port=cluster_ports[i],
                    routes=routes,
                    monitor_port=free_port(host),
                    tls=tls,
                    cluster_tls=tls,
                    route_password=route_password,
                    auth_callout=auth_callout,
                )
            )
        return cls(directory=directory, nodes=nodes, host=host, ca_file=ca.cert_file if ca is not None else None)

    def tls_options(self) -> dict[str, Any]:
        """The nats-py `connect` options a client of this cluster needs (none unless it is `secure`)."""
        return tls_options(self.ca_file)

    @property
    def passwords(self) -> dict[str, str]:
        return load_or_create_secrets(self.directory)

    def urls(self, user: str | None = None, *, running_only: bool = False) -> str:
        """Comma-separated client URLs of every node (the services' `nats_url` form), with credentials if `user`."""
        nodes = [n for n in self.nodes if n.running] if running_only else self.nodes
        if user is None:
            return ",".join(n.plain_url for n in nodes)
        return ",".join(user_url(self.host, n.options.port, user, self.passwords[user]) for n in nodes)

    def start(self, timeout: float = 30.0, *, attempts: int = 3, only: tuple[int, ...] | None = None) -> NatsCluster:
        """Start every node (or the nodes at the indexes `only`) and wait until JetStream is up. A node that exits
        because a port picked for it was taken meanwhile (by another test's process) has the cluster start again
        on fresh ports."""
        for attempt in range(1, attempts + 1):
            try:
                for i, node in enumerate(self.nodes):
                    if only is None or i in only:
                        node.start()
                self.wait_ready(timeout)
                return self
            except NatsServerExited as e:
                self.stop()
                if "address already in use" not in e.log_tail or attempt == attempts:
                    raise
                log.warning("%s; starting the cluster again on other ports", e)
                self._other_ports()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _other_ports(self) -> None:
        """Fresh client, route and monitor ports for every node (the routes follow)."""
        cluster_ports = [free_port(self.host) for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            routes = tuple(f"nats-route://{self.host}:{p}" for j, p in enumerate(cluster_ports) if j != i)
            node.options = dataclasses.replace(
                node.options,
                port=free_port(self.host),
                cluster_port=cluster_ports[i],
                routes=routes,
                monitor_port=free_port(self.host),
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running node's `/healthz` says JetStream is up (a meta leader is elected)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.running:
                continue
            url = f"http://{self.host}:{node.options.monitor_port}/healthz"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"NATS node {node.options.server_name} not healthy after {timeout}s")
                time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- service processes


def service_env(
    service: str,
    *,
    nats_url: str,
    nats_password: str,
    port: int,
    data_dir: Path,
    database_url: str | None = None,
    stream_replicas: int = 1,
    nats_user: str | None = None,
    host: str = "127.0.0.1",
    log_level: str = "INFO",
    **extra: str,
) -> dict[str, str]:
    """The `SHINCHOKU_{SERVICE}_*` variables of one service process (the ServiceSettings fields)."""
    values: dict[str, str | None] = {
        "data_dir": str(data_dir),
        "database_url": database_url,
        "nats_url": nats_url,
        "nats_user": nats_user or service,
        "nats_password": nats_password,
        "host": host,
        "port": str(port),
        "stream_replicas": str(stream_replicas),
        "log_level": log_level,
        **extra,
    }
    return {service_variable(service, k): v for k, v in values.items() if v is not None}


def service_variable(service: str, field: str) -> str:
    """The environment variable of one ServiceSettings field of a service: `SHINCHOKU_{SERVICE}_{FIELD}`."""
    return f"SHINCHOKU_{service.upper()}_{field.upper()}"


@dataclass
class ServiceProcess:
    """One service as its own OS process (`python -m <module>`), its output in a log file."""

    name: str
    module: str
    env: dict[str, str]
    port: int
    log_file: Path
    host: str = "127.0.0.1"
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServiceProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_size(self) -> int:
        """Where the log ends now: what a start writes comes after it (`bind_failed`)."""
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def bind_failed(self, since: int) -> bool:
        """Whether the process exited because its HTTP port was taken (uvicorn's bind error in its log after `since`).

        `free_port` cannot reserve a port: a stopped service's port is anyone's until it starts again (another
        test's `free_port`, an outgoing connection's ephemeral port)."""
        if self.running:
            return False
        with open(self.log_file, "rb") as log:
            log.seek(since)
            return b"address already in use" in log.read().lower()

    def move_to_free_port(self) -> None:
        """Serve on another free port from the next start (`SHINCHOKU_{MODULE}_PORT`)."""
        self.port = free_port(self.host)
        self.env[service_variable(self.module, "port")] = str(self.port)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text("utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_healthy(self, timeout: float = 60.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.process and self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not healthy after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful: spans are flushed), SIGKILL after `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class ProcessGroup:
    """Processes started together and stopped together, in reverse order, whatever happens."""

    processes: list[ServiceProcess] = field(default_factory=list)

    def add(self, process: ServiceProcess) -> ServiceProcess:
        self.processes.append(process)
        return process

    def __iter__(self) -> Iterator[ServiceProcess]:
        return iter(self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception:  # keep stopping the others; a process that will not die is killed by stop()
                process.kill()
