"""A FastStream NATS broker with the middlewares every service carries (traces, Prometheus metrics)."""

from __future__ import annotations

import logging
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.security import SASLPlaintext
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from shinchoku_runtime.settings import ServiceSettings

log = logging.getLogger(__name__)


def make_broker(
    settings: ServiceSettings,
    *,
    service: str,
    tracer_provider: TracerProvider | None,
    registry: CollectorRegistry,
    **kwargs: Any,
) -> NatsBroker:
    """The service's broker: its own NATS user, reconnecting for ever, no per-message access log.

    FastStream's access log halves consumer throughput, so it is off; decisions are logged by the handlers.
    """
    security = None
    if settings.nats_user:
        security = SASLPlaintext(username=settings.nats_user, password=settings.nats_password or "")

    async def error_cb(e: Exception) -> None:
        log.warning("nats error: %s", e)

    return NatsBroker(
        settings.nats_servers,
        name=f"shinchoku-{service}",
        security=security,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=error_cb,
        middlewares=[
            NatsTelemetryMiddleware(tracer_provider=tracer_provider),
            NatsPrometheusMiddleware(registry=registry, app_name=service, metrics_prefix="shinchoku"),
        ],
        logger=None,
        **kwargs,
    )
