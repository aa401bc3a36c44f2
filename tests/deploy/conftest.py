"""What the deployment files are checked against: the services' own Settings classes and the generated secrets."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from shinchoku_runtime.auth import AuthSettings
from shinchoku_runtime.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICES = ("catalog", "ingest", "reporting")
#: Settings a deployment leaves unset on purpose: a NATS client certificate is only for servers that ask one,
#: and the deployment's servers do not (agencies log in with passwords or tokens; TLS verifies the servers).
#: A confidential client's secret: a public client (the default) relies on PKCE and has none.
#: The alerts' fixed clock is for demos and tests of a past quarter; a deployment evaluates as of now.
OPTIONAL_SETTINGS = ("NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE", "DASHBOARD_OIDC_CLIENT_SECRET", "ALERT_CLOCK")
#: The token settings every service reads (`shinchoku_runtime.auth.AuthSettings`): a deployment names its provider.
AUTH_SETTINGS = frozenset(f"SHINCHOKU_AUTH_{name.upper()}" for name in AuthSettings.model_fields)


@dataclass(frozen=True)
class ServiceSpec:
    """A service as its own code describes it: the variables it reads and the port it serves on."""

    name: str
    settings: type[BaseSettings]
    env_prefix: str
    env_names: frozenset[str]
    default_port: int


def settings_class(service: str) -> type[BaseSettings]:
    """The one ServiceSettings subclass that `<service>.config` defines."""
    module = importlib.import_module(f"{service}.config")
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceSettings) and cls is not ServiceSettings and cls.__module__ == module.__name__
    ]
    assert len(found) == 1, f"{service}.config should define exactly one Settings class, found {found}"
    return found[0]


def service_spec(service: str) -> ServiceSpec:
    cls = settings_class(service)
    prefix = str(cls.model_config.get("env_prefix") or "")
    assert prefix == f"SHINCHOKU_{service.upper()}_", f"{cls.__name__} reads {prefix!r}"
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        if name.upper() in OPTIONAL_SETTINGS:
            continue
        names.add(alias.upper() if alias else f"{prefix}{name.upper()}")
    port = cls.model_fields["port"].default
    return ServiceSpec(service, cls, prefix, frozenset(names), int(port))


@pytest.fixture(scope="session")
def specs() -> dict[str, ServiceSpec]:
    return {s: service_spec(s) for s in SERVICES}


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/generate.py run as an operator would, into a temporary directory."""
    out = tmp_path_factory.mktemp("generated")
    subprocess.run(
        [sys.executable, str(DEPLOY / "generate.py"), "--out", str(out)], check=True, capture_output=True, timeout=60
    )
    return out


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


@pytest.fixture(scope="session")
def env_files(generated: Path) -> dict[str, dict[str, str]]:
    """The generated env files by name (`catalog`, `ingest`, `reporting`, `postgres`)."""
    return {p.stem: read_env_file(p) for p in sorted((generated / "env").glob("*.env"))}
