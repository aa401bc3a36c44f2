"""Settings of the reporting service (environment prefix `SHINCHOKU_REPORTING_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shinchoku_runtime.settings import ServiceSettings


class ReportingSettings(ServiceSettings):
    """Read from `SHINCHOKU_REPORTING_*` variables, e.g. `SHINCHOKU_REPORTING_DATABASE_URL`."""

    model_config = SettingsConfigDict(
        env_prefix="SHINCHOKU_REPORTING_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    port: int = 8003
    nats_user: str | None = "reporting"
    batch_size: int = Field(default=1000, ge=1, le=10_000, description="Messages asked for by each pull request")
    max_rows_per_transaction: int = Field(
        default=4000, ge=1, description="Queued batches are merged into one transaction up to this many events"
    )
    max_ack_pending: int = Field(default=20_000, ge=100, description="Consumer's max_ack_pending (durable config)")
    ack_wait: float = Field(
        default=30.0, gt=0, description="Seconds before an unacknowledged message is redelivered (consumer config)"
    )
    retry_delay: float = Field(
        default=2.0, gt=0, description="Seconds before a batch that hit a database fault returns"
    )
    writer_processes: int = Field(
        default=1,
        ge=0,
        le=1,
        description="1: decode and write batches in a child process (a second core); 0: in a thread of this one",
    )
    ingest_url: str = Field(
        default="http://127.0.0.1:8002",
        description="Ingest's HTTP base URL as a browser reaches it: the dashboard links each event id there",
    )

    def resolved_database_url(self) -> str:
        """The configured URL, or the SQLite file `data_dir/db/reporting.sqlite` (its directory created)."""
        if not self.database_url:
            return self.sqlite_default("reporting")
        if self.database_url.startswith("sqlite:///") and not self.database_url.startswith("sqlite:///:memory:"):
            Path(self.database_url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
        return self.database_url
