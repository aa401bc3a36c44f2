"""Settings of the ingest service (`SHINCHOKU_INGEST_*`), and the retry horizon they imply.

The horizon is how long ingest's own retries of one STATUS message can go on publishing copies of its
decision; ACCEPTED's and REJECTED's duplicate windows must cover it, or a copy would reach their readers.
Ingest refuses to start when they do not (settings at load, the live streams once connected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from nats.js import JetStreamContext
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from contracts.streams import ACCEPTED_STREAM, REJECTED_STREAM
from shinchoku_runtime.settings import ServiceSettings

#: The longest the consumer pauses between batches that all failed (`BatchHandler._pause_if_failing`).
PAUSE_MAX = 10.0


def retry_delay(delivered: int, cap: float) -> float:
    """The nak delay after a message's `delivered`-th delivery failed: 1 s, 2 s, 4 s … up to the cap."""
    return float(min(cap, 2 ** max(0, delivered - 1)))


@dataclass(frozen=True)
class HandlerOptions:
    """How the batch handler retries, publishes and overlaps its batches (from `IngestSettings`)."""

    max_deliver: int = 30
    retry_delay_max: float = 60.0
    publish_timeout: float = 10.0
    #: Batches waiting for their PubAcks while the next one is decided.
    max_inflight: int = 4

    @classmethod
    def of(cls, settings: IngestSettings) -> HandlerOptions:
        return cls(
            max_deliver=settings.max_deliver,
            retry_delay_max=settings.retry_delay_max,
            publish_timeout=settings.publish_timeout,
            max_inflight=settings.max_inflight_batches,
        )

    @property
    def failure_horizon(self) -> float:
        """The longest a failing message takes to come back (its retry delay, a pause, a publish timeout)."""
        return self.retry_delay_max + PAUSE_MAX + self.publish_timeout


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
    reconcile_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between the outbox's passes: a decision seen unpublished by two passes is published again",
    )
    unpublished_alarm: float = Field(
        default=300.0, gt=0, description="/healthz is 503 while a decision stays unpublished longer than this (s)"
    )

    @model_validator(mode="after")
    def _windows_cover_the_retry_horizon(self) -> Self:
        """Refuse settings whose retries outlast the duplicate windows of the shared stream definitions."""
        horizon = retry_horizon(self)
        for spec in (ACCEPTED_STREAM, REJECTED_STREAM):
            if spec.duplicate_window_seconds < horizon:
                raise ValueError(_too_short(spec.name, spec.duplicate_window_seconds, horizon, self))
        return self

    def resolved_database_url(self) -> str:
        """The configured URL, or the SQLite file `data_dir/db/ingest.sqlite`."""
        return self.database_url or self.sqlite_default("ingest")


def retry_horizon(settings: IngestSettings) -> float:
    """The longest ingest's consumer can keep retrying one STATUS message, first delivery to last publish (s).

    Each gap between two deliveries is at most a batch held until `ack_wait` ran out, then that delivery's nak
    delay, then a pause of the failing consumer; the last delivery's publish may wait `publish_timeout`. With
    the defaults: 29 gaps of 30 s + (1, 2 … 32, then 60 s) + 10 s, and 10 s: about 44 minutes. After its last
    delivery a stored decision is the outbox's to publish (`reconciler`): a copy published later than this is
    harmless by the log's own property (readers count by agency and event_id), not by the window.
    """
    gaps = sum(
        settings.ack_wait + retry_delay(n, settings.retry_delay_max) + PAUSE_MAX for n in range(1, settings.max_deliver)
    )
    return gaps + settings.publish_timeout


class DuplicateWindowTooShort(RuntimeError):
    """A stream ingest publishes on keeps copies for less time than ingest may retry: ingest will not run."""


def _too_short(stream: str, window: float, horizon: float, settings: IngestSettings) -> str:
    return (
        f"{stream}'s duplicate window is {window:.0f} s but ingest's retry horizon is {horizon:.0f} s "
        f"(max_deliver={settings.max_deliver}, retry_delay_max={settings.retry_delay_max:g} s, "
        f"ack_wait={settings.ack_wait:g} s, publish_timeout={settings.publish_timeout:g} s): a retry after the "
        "window would publish a copy. Lower max_deliver or retry_delay_max, or lengthen the stream's window"
    )


async def check_duplicate_windows(js: JetStreamContext, settings: IngestSettings) -> None:
    """Raise DuplicateWindowTooShort when a live stream's duplicate window is shorter than the retry horizon."""
    horizon = retry_horizon(settings)
    for spec in (ACCEPTED_STREAM, REJECTED_STREAM):
        window = (await js.stream_info(spec.name)).config.duplicate_window or 0.0
        if window < horizon:
            raise DuplicateWindowTooShort(_too_short(spec.name, window, horizon, settings))
