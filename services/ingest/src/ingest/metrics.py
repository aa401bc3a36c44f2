"""Ingest's Prometheus metrics, on the service's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class IngestMetrics:
    admitted: Counter
    rejected: Counter
    duplicates: Counter
    transient: Counter
    batch_seconds: Histogram
    batch_size: Histogram
    phase_seconds: Histogram
    unpublished: Gauge
    oldest_unpublished: Gauge
    republished: Counter
    stream_shortfalls: Counter
    stream_shortfall: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        return cls(
            admitted=Counter(
                "shinchoku_ingest_admitted",
                "Status events admitted (published on ACCEPTED)",
                ["agency"],
                registry=registry,
            ),
            rejected=Counter(
                "shinchoku_ingest_rejected",
                "STATUS messages rejected (published on REJECTED), by reason code",
                ["agency", "reason"],
                registry=registry,
            ),
            duplicates=Counter(
                "shinchoku_ingest_duplicates",
                "Identical resends of admitted events (counted once, not republished)",
                ["agency"],
                registry=registry,
            ),
            transient=Counter(
                "shinchoku_ingest_transient_faults",
                "Messages put back for a later retry, by what was unavailable",
                ["fault"],
                registry=registry,
            ),
            batch_seconds=Histogram(
                "shinchoku_ingest_batch_seconds",
                "Time to decide, store, publish and acknowledge one batch",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            phase_seconds=Histogram(
                "shinchoku_ingest_phase_seconds",
                "Time per batch in each phase: read (idempotency records), catalog, store (commit), publish (PubAcks)",
                ["phase"],
                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            batch_size=Histogram(
                "shinchoku_ingest_batch_size",
                "Messages per batch",
                buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
                registry=registry,
            ),
            unpublished=Gauge(
                "shinchoku_ingest_unpublished_decisions",
                "Decisions stored and not (yet) acknowledged by ACCEPTED/REJECTED: the outbox",
                registry=registry,
            ),
            oldest_unpublished=Gauge(
                "shinchoku_ingest_oldest_unpublished_seconds",
                "How long the oldest unpublished decision has been seen unpublished",
                registry=registry,
            ),
            republished=Counter(
                "shinchoku_ingest_republished",
                "Stored decisions published again by the outbox (reconciler, or an identical resend)",
                ["stream"],
                registry=registry,
            ),
            stream_shortfalls=Counter(
                "shinchoku_ingest_stream_shortfalls",
                "Times a stream was found holding less than ingest published there (reset, restored, truncated)",
                ["stream"],
                registry=registry,
            ),
            stream_shortfall=Gauge(
                "shinchoku_ingest_stream_shortfall",
                "Sequences a stream lacks below the greatest ingest published there, at the last check (0: whole)",
                ["stream"],
                registry=registry,
            ),
        )
