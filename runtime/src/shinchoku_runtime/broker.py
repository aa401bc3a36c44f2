"""A FastStream NATS broker with the middlewares every service carries (traces, Prometheus metrics)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.nats.security import NatsSecurity, NatsUserPassword
from nats.js import JetStreamContext
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry, Gauge

from shinchoku_runtime.natsclient import connection_options
from shinchoku_runtime.settings import ServiceSettings

log = logging.getLogger(__name__)


def make_broker(
    settings: ServiceSettings,
    *,
    service: str,
    tracer_provider: TracerProvider | None,
    registry: CollectorRegistry,
    telemetry: bool = True,
    **kwargs: Any,
) -> NatsBroker:
    """The service's broker: its own NATS connection (`natsclient.connection_options`), no per-message access log.

    FastStream's access log halves consumer throughput, so it is off; decisions are logged by the handlers.
    `telemetry=False` leaves out FastStream's span middleware, for a service that records its messages'
    spans itself (on a batch subscriber it would add a batch span linking every message, extracting each
    message's trace context once more).
    """
    options = connection_options(settings, name=f"shinchoku-{service}", **kwargs)
    servers = options.pop("servers")
    user = options.pop("user", None)
    password = options.pop("password", None)
    tls = {"ssl_context": options.pop("tls", None), "tls_hostname": options.pop("tls_hostname", None)}
    security = NatsUserPassword(user, password or "", **tls) if user else NatsSecurity(**tls)
    return NatsBroker(
        servers,
        security=security,
        **options,
        middlewares=[
            *([NatsTelemetryMiddleware(tracer_provider=tracer_provider)] if telemetry else []),
            NatsPrometheusMiddleware(registry=registry, app_name=service, metrics_prefix="shinchoku"),
        ],
        logger=None,
    )


class ConsumerLag:
    """Prometheus gauges for a durable consumer's backlog, refreshed from JetStream every few seconds.

    `shinchoku_consumer_pending_messages` is what the stream holds that the consumer has not yet been handed
    (the lag); `shinchoku_consumer_ack_pending_messages` what it was handed and has not yet acknowledged.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["stream", "consumer"]
        self.pending = Gauge(
            "shinchoku_consumer_pending_messages",
            "Messages in the stream not yet delivered to the durable consumer (consumer lag)",
            labels,
            registry=registry,
        )
        self.ack_pending = Gauge(
            "shinchoku_consumer_ack_pending_messages",
            "Messages delivered to the durable consumer and not yet acknowledged",
            labels,
            registry=registry,
        )
        self.redelivered = Gauge(
            "shinchoku_consumer_redelivered_messages",
            "Messages delivered more than once and not yet acknowledged",
            labels,
            registry=registry,
        )

    async def refresh(self, js: JetStreamContext, *, stream: str, durable: str) -> None:
        info = await js.consumer_info(stream, durable)
        self.pending.labels(stream, durable).set(info.num_pending or 0)
        self.ack_pending.labels(stream, durable).set(info.num_ack_pending or 0)
        self.redelivered.labels(stream, durable).set(info.num_redelivered or 0)

    async def watch(self, js: JetStreamContext, *, stream: str, durable: str, interval: float = 5.0) -> None:
        """Refresh until cancelled (run it as a task in the service's lifespan); failures are logged, not fatal."""
        while True:
            try:
                await self.refresh(js, stream=stream, durable=durable)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS unreachable or consumer not yet created: try again next round
                log.debug("consumer lag of %s/%s unavailable: %s", stream, durable, e)
            await asyncio.sleep(interval)
