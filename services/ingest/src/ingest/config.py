"""Settings of the ingest service (`SHINCHOKU_INGEST_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shinchoku_runtime.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    """How ingest reaches NATS and its store, and how its consumer on STATUS behaves.

    The consumer settings are chosen together (see `subscribers.consumer_config`):
    a batch must finish well inside `ack_wait`, and the retry delays of transient faults
    add up to a long outage before a message is dead-lettered as `undeliverable`.
    """

    model_config = SettingsConfigDict(
        env_prefix="SHINCHOKU_INGEST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    port: int = 8002

    batch_size: int = Field(default=1000, ge=1, le=5000, description="Messages decided and committed together")
    batch_wait: float = Field(
        default=0.05, gt=0, le=5, description="Longest wait (s) to fill a batch before deciding what arrived"
    )
    ack_wait: float = Field(
        default=30.0, ge=5, description="Seconds before an unacknowledged message (crashed replica) is redelivered"
    )
    max_deliver: int = Field(
        default=30, ge=3, description="Deliveries before a message that cannot be processed is dead-lettered"
    )
    max_inflight_batches: int = Field(
        default=4, ge=1, le=32, description="Batches waiting for their PubAcks while the next one is decided"
    )
    max_ack_pending: int = Field(default=20_000, ge=1, description="Unacknowledged messages across all replicas")
    retry_delay_max: float = Field(default=60.0, gt=0, description="Cap (s) of the exponential nak delay")
    catalog_timeout: float = Field(default=2.0, gt=0, description="Seconds to wait for catalog.measure.get")
    publish_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for the PubAcks of one batch")
    sqlite_busy_timeout_ms: int = Field(
        default=5000, ge=0, description="How long a SQLite write waits for a lock before the batch is retried"
    )

    def resolved_database_url(self) -> str:
        """The configured URL, or the SQLite file `data_dir/db/ingest.sqlite`."""
        return self.database_url or self.sqlite_default("ingest")
