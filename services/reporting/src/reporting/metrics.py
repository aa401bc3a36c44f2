"""Prometheus metrics of the reporting service (served on `/metrics`)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReportingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_applied = Counter(
            "shinchoku_reporting_events_applied",
            "Admitted events written to the reporting store (redeliveries included)",
            registry=registry,
        )
        self.batches = Counter(
            "shinchoku_reporting_batches",
            "Transactions applying admitted events, by outcome (committed, retried)",
            ["outcome"],
            registry=registry,
        )
        self.malformed = Counter(
            "shinchoku_reporting_malformed_messages",
            "ACCEPTED messages this version cannot decode (held: redelivered after hold_delay, never dropped)",
            registry=registry,
        )
        self.held = Gauge(
            "shinchoku_reporting_held_messages",
            "ACCEPTED messages held because this version cannot decode them (/healthz is 503 while any is)",
            registry=registry,
        )
        self.ignored_fields = Counter(
            "shinchoku_reporting_ignored_fields",
            "Fields of a newer contract left out to decode an ACCEPTED message (a newer ingest's additive fields)",
            ["field"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "shinchoku_reporting_batch_seconds",
            "Time to apply one batch in one database transaction",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.apply_lag = Histogram(
            "shinchoku_reporting_apply_lag_seconds",
            "From ingest admitting an event to the rollup store committing it",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
        self.last_applied = Gauge(
            "shinchoku_reporting_last_applied_timestamp_seconds",
            "Unix time of the last committed batch of admitted events",
            registry=registry,
        )
        self.catalog_measures = Gauge(
            "shinchoku_reporting_catalog_measures", "Measures in reporting's copy of the catalog", registry=registry
        )
        self._last_applied_monotonic: float | None = None
        freshness = Gauge(
            "shinchoku_reporting_rollup_freshness_seconds",
            "Seconds since the last admitted event was applied to the rollups (-1 before the first)",
            registry=registry,
        )
        freshness.set_function(self.freshness)

    def applied(self, count: int) -> None:
        self.events_applied.inc(count)
        self.batches.labels("committed").inc()
        self.last_applied.set_to_current_time()
        self._last_applied_monotonic = time.monotonic()

    def freshness(self) -> float:
        if self._last_applied_monotonic is None:
            return -1.0
        return time.monotonic() - self._last_applied_monotonic
