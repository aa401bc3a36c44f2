"""What `shinchoku up` runs: settings, the NATS port, the generated NATS config and one spec per process.

Settings come from environment variables and an optional `.env` (documented in `.env.example`):
`SHINCHOKU_*` for the stack as a whole, `SHINCHOKU_{CATALOG,INGEST,REPORTING}_*` for each service.
A per-service variable the user set always wins; what is unset is filled in for the embedded stack
(a SQLite file under DATA_DIR/db, the embedded nats-server with the service's generated password).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shinchoku.issuer import EmbeddedIssuer
from shinchoku.stack import Stack, StackNotFound
from shinchoku.supervisor import ProcessSpec
from shinchoku_runtime.auth.settings import AuthSettings
from shinchoku_runtime.natsclient import connect, ensure_streams
from shinchoku_runtime.natsconf import ServerOptions, load_or_create_secrets, write_config
from shinchoku_runtime.natsserver import free_port, nats_server_binary, port_is_free
from shinchoku_runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

SERVICES: tuple[str, ...] = ("catalog", "ingest", "reporting")
DEFAULT_PORTS: dict[str, int] = {"catalog": 8001, "ingest": 8002, "reporting": 8003}
NATS = "nats-server"


class ConfigurationError(Exception):
    """A setting makes the stack impossible to start; the message says which and what to do."""


class StackSettings(BaseSettings):
    """Settings of the stack as a whole (`SHINCHOKU_*`)."""

    model_config = SettingsConfigDict(
        env_prefix="SHINCHOKU_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(default=Path("var"), description="Data directory of the embedded stack")
    nats_url: str | None = Field(
        default=None, description="External NATS (comma-separated URLs): when set, `up` starts no nats-server"
    )
    nats_host: str = Field(default="127.0.0.1", description="Address of the embedded nats-server")
    nats_port: int | None = Field(
        default=None, description="Port of the embedded nats-server (default 4222, or a free one when taken)"
    )
    nats_admin_user: str = "admin"
    nats_admin_password: str | None = Field(
        default=None, description="External NATS only: an admin allowed to declare the streams (else assumed declared)"
    )
    stream_replicas: int = Field(default=1, ge=1, le=5, description="Replicas of the shared streams")
    startup_timeout: float = Field(default=60.0, gt=0, description="Seconds each process may take to become healthy")


def service_settings(service: str) -> ServiceSettings:
    """The settings `python -m {service}` would read (same prefix, same `.env`), with its default port."""
    prefix = f"SHINCHOKU_{service.upper()}_"
    cls = type(
        f"{service.capitalize()}Settings",
        (ServiceSettings,),
        {
            "model_config": SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore"),
            "__annotations__": {"port": int},
            "port": DEFAULT_PORTS[service],
        },
    )
    settings: ServiceSettings = cls()
    return settings


def choose_nats_port(settings: StackSettings, remembered: int | None) -> int:
    """An explicit SHINCHOKU_NATS_PORT, else the port remembered from the last run, else 4222, else a free one."""
    host = settings.nats_host
    if settings.nats_port is not None:
        if not port_is_free(settings.nats_port, host):
            raise ConfigurationError(
                f"SHINCHOKU_NATS_PORT={settings.nats_port} but {host}:{settings.nats_port} is in use: "
                "choose another port or unset it to let `up` pick one"
            )
        return settings.nats_port
    for candidate in (remembered, 4222):
        if candidate is not None and port_is_free(candidate, host):
            return candidate
    return free_port(host)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


@dataclass
class Launch:
    """Everything `up` starts, in order: NATS (unless external) then the services."""

    stack: Stack
    nats: ProcessSpec | None
    services: list[ProcessSpec]
    #: External NATS with an admin: declare the streams before the services start (embedded: on NATS ready).
    declare_streams: Callable[[], None] | None = None

    @property
    def specs(self) -> list[ProcessSpec]:
        return ([self.nats] if self.nats else []) + self.services


def _declare_streams(url: str, user: str, password: str, replicas: int, timeout: float = 15.0) -> None:
    """Declare the shared streams as admin, retrying while JetStream is still coming up."""

    async def declare() -> None:
        nc = await connect(url, name="shinchoku-up", user=user, password=password, max_reconnect_attempts=0)
        try:
            await ensure_streams(nc.jetstream(), replicas=replicas)
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(declare())
            return
        except Exception as e:
            if time.monotonic() > deadline:
                raise ConfigurationError(f"could not declare the streams on {url}: {e}") from e
            time.sleep(0.2)


def _auth_environment(data_dir: Path, stack: Stack) -> dict[str, str]:
    """The token settings every service gets: in embedded mode the issuer `up` is (its key made on first start).

    Settings the user gave (`SHINCHOKU_AUTH_*`) reach the services unchanged through the environment.
    """
    try:
        auth = AuthSettings()
    except ValidationError as e:
        problems = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        raise ConfigurationError(f"SHINCHOKU_AUTH_* settings: {problems}") from None
    stack.auth_issuer = auth.expected_issuer
    if auth.mode != "embedded":
        return {}
    try:
        issuer = EmbeddedIssuer.prepare(data_dir)
    except ValueError as e:
        raise ConfigurationError(str(e)) from None
    return {
        "SHINCHOKU_AUTH_MODE": "embedded",
        "SHINCHOKU_AUTH_ISSUER": auth.expected_issuer,
        "SHINCHOKU_AUTH_JWKS_URL": auth.jwks_url or issuer.jwks_path.as_uri(),
    }


def plan_launch(data_dir: Path, settings: StackSettings, *, base_env: dict[str, str] | None = None) -> Launch:
    """Prepare the data directory (NATS config and secrets, once) and describe every process to run."""
    data_dir = data_dir.resolve()
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONUNBUFFERED"] = "1"
    try:
        previous: Stack | None = Stack.load(data_dir)
    except StackNotFound:
        previous = None

    stack = Stack(data_dir=data_dir)
    for directory in (stack.run_dir, stack.logs_dir, stack.db_dir):
        directory.mkdir(parents=True, exist_ok=True)
    auth_env = _auth_environment(data_dir, stack)

    nats_spec: ProcessSpec | None = None
    if settings.nats_url:
        stack.external_nats_url = settings.nats_url
        nats_url = settings.nats_url
        passwords: dict[str, str] = {}
    else:
        port = choose_nats_port(settings, previous.nats_port if previous and not previous.external_nats_url else None)
        stack.nats_host, stack.nats_port = _client_host(settings.nats_host), port
        stack.nats_dir.mkdir(parents=True, exist_ok=True)
        stack.nats_dir.chmod(0o700)
        passwords = load_or_create_secrets(stack.nats_dir)
        # The config is a pure function of the secrets (generated once) and the port: rewriting it is idempotent.
        config = write_config(
            stack.nats_dir,
            ServerOptions(host=settings.nats_host, port=port, store_dir=stack.nats_dir / "jetstream"),
        )
        nats_url = stack.nats_plain_url
        admin_password = passwords["admin"]
        nats_spec = ProcessSpec(
            name=NATS,
            argv=[nats_server_binary(), "-c", str(config)],
            env=env,
            health_tcp=(stack.nats_host, port),
            on_ready=lambda: _declare_streams(nats_url, "admin", admin_password, settings.stream_replicas),
        )

    services = []
    taken: dict[int, str] = {}
    for name in SERVICES:
        svc = service_settings(name)
        explicit = svc.model_fields_set
        prefix = f"SHINCHOKU_{name.upper()}_"
        child_env: dict[str, Any] = {"DATA_DIR": str(data_dir), "PORT": svc.port, "HOST": svc.host}
        if "database_url" not in explicit:
            child_env["DATABASE_URL"] = f"sqlite:///{stack.db_dir / (name + '.sqlite')}"
        if "nats_url" not in explicit:
            child_env["NATS_URL"] = nats_url
        if "nats_user" not in explicit:
            child_env["NATS_USER"] = name
        if "nats_password" not in explicit:
            if name not in passwords:
                raise ConfigurationError(
                    f"with an external NATS ({nats_url}) set {prefix}NATS_USER and {prefix}NATS_PASSWORD "
                    "(the service's credentials there)"
                )
            child_env["NATS_PASSWORD"] = passwords[name]
        if "stream_replicas" not in explicit:
            child_env["STREAM_REPLICAS"] = settings.stream_replicas
        if svc.port in taken:
            raise ConfigurationError(f"{name} and {taken[svc.port]} are both set to port {svc.port}")
        taken[svc.port] = name
        if not port_is_free(svc.port, _client_host(svc.host)):
            raise ConfigurationError(
                f"port {svc.port} for {name} is in use: stop what listens there or set {prefix}PORT (e.g. in .env)"
            )
        url = f"http://{_client_host(svc.host)}:{svc.port}"
        stack.http[name] = url
        services.append(
            ProcessSpec(
                name=name,
                argv=[sys.executable, "-m", name],
                env={**env, **auth_env, **{prefix + k: str(v) for k, v in child_env.items()}},
                health_url=f"{url}/healthz",
            )
        )

    external_streams = None
    if nats_spec is None and settings.nats_admin_password:
        user, password = settings.nats_admin_user, settings.nats_admin_password

        def external_streams() -> None:
            _declare_streams(nats_url, user, password, settings.stream_replicas)

    return Launch(stack=stack, nats=nats_spec, services=services, declare_streams=external_streams)
