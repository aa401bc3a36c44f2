"""Settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Read from `SHINCHOKU_{SERVICE}_*` variables and an optional `.env` (see `.env.example`)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="Where SQLite files and local span files live")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; a SQLite file under data_dir if unset")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="One or more NATS URLs, comma-separated")
    nats_user: str | None = None
    nats_password: str | None = None
    nats_tls_ca_file: Path | None = Field(
        default=None,
        description="CA that signed the NATS servers' certificates: TLS on (a deployment's servers need it)",
    )
    #: Optional: only for servers that ask clients for a certificate (a deployment's do not: agencies log in with
    #: passwords or tokens). The deploy tests exempt these two from "every setting is set".
    nats_tls_cert_file: Path | None = Field(default=None, description="Client certificate, where the servers ask one")
    nats_tls_key_file: Path | None = Field(default=None, description="The client certificate's private key")
    host: str = "127.0.0.1"
    port: int = 8000
    stream_replicas: int = Field(default=1, ge=1, le=5, description="Replicas of the shared streams (3 in a cluster)")
    log_level: str = "INFO"

    def sqlite_default(self, name: str) -> str:
        path = self.data_dir / "db" / f"{name}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]
