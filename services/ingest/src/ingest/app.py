"""Composition root: the store, the broker, the catalog mirror, the batch handler and its roles, the HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from contracts.streams import (
    ACCEPTED_STREAM,
    INGEST_DURABLE,
    INGEST_MAX_DELIVERIES_ADVISORY,
    REJECTED_STREAM,
    STATUS_STREAM,
)
from ingest import queries, repository
from ingest.api import router
from ingest.commands import CommandWorld
from ingest.config import DuplicateWindowTooShort, HandlerOptions, IngestSettings, check_duplicate_windows
from ingest.deciding import BatchDecider
from ingest.handlers import BatchHandler
from ingest.health import WorkHealth
from ingest.lookup import MeasureMirror
from ingest.metrics import IngestMetrics
from ingest.observer import BatchObserver
from ingest.publishing import PubAcks, Publisher
from ingest.reconciler import OutboxStatus, Reconciler, Republisher
from ingest.settling import Settler
from ingest.subscribers import ensure_consumer, register, tune_pull_fetch
from shinchoku_runtime.auth import AuthSettings, TokenVerifier
from shinchoku_runtime.broker import ConsumerLag, make_broker
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.service import service_app
from shinchoku_runtime.streamdefs import StreamDiffers, StreamMissing, check_streams
from shinchoku_runtime.telemetry import init_tracing, instrument_engine

#: The streams ingest reads or writes: checked against the shared definition at start-up (never changed).
INGEST_STREAMS = (STATUS_STREAM, ACCEPTED_STREAM, REJECTED_STREAM)

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 30.0


class IngestRuntime:
    """The running ingest: what the lifespan starts and stops, and what routes and health checks read."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        tracer_provider: TracerProvider | None = None,
        auth: AuthSettings | None = None,
    ) -> None:
        self.settings = settings
        #: Verifies the bearer tokens of the secretariat's commands (`SHINCHOKU_AUTH_*`, as for HTTP).
        self.verifier = TokenVerifier.from_settings(auth or AuthSettings(), data_dir=settings.data_dir)
        self.engine = repository.tune(make_engine(settings.resolved_database_url()))
        repository.set_sqlite_busy_timeout(self.engine, milliseconds=settings.sqlite_busy_timeout_ms)
        self.registry = CollectorRegistry()
        self.metrics = IngestMetrics.create(self.registry)
        self._owns_tracer = tracer_provider is None
        self.tracer_provider = tracer_provider or init_tracing("ingest", settings.data_dir)
        instrument_engine(self.engine, self.tracer_provider)
        # No FastDepends: the handler takes the raw batch and decodes each message itself (~6x faster).
        # No FastStream spans: the handler records each message's own (a batch span would only link them).
        self.broker = make_broker(
            settings,
            service="ingest",
            tracer_provider=self.tracer_provider,
            registry=self.registry,
            telemetry=False,
            apply_types=False,
        )
        self.options = HandlerOptions.of(settings)
        #: Whether the batches can write to the store and publish: what /healthz reports of ingest's own work.
        self.health = WorkHealth(horizon=self.options.failure_horizon)
        #: PubAcks not yet recorded in the store (the outbox's marks).
        self.pub_acks = PubAcks(self.engine)
        self.mirror: MeasureMirror | None = None
        self.handler: BatchHandler | None = None
        self.reconciler: Reconciler | None = None
        #: Why ingest will not consume (a stream that breaks its promises), or None.
        self.refused: str | None = None
        self.consuming = asyncio.Event()
        register(self.broker, settings, self._handler)
        self._task: asyncio.Task[None] | None = None
        self._lag: asyncio.Task[None] | None = None
        self._reconciling: asyncio.Task[None] | None = None
        self._advisories: Any = None

    async def _on_max_deliveries(self, msg: Msg) -> None:
        if self.handler is not None:
            await self.handler.on_max_deliveries(msg.data)

    def _handler(self) -> BatchHandler:
        assert self.handler is not None, "the consumer starts only after the handler exists"
        return self.handler

    async def start(self) -> None:
        """Bring up the store and NATS in the background: /healthz answers 503 until both are there."""
        self._task = asyncio.create_task(self._start(), name="ingest-start")

    async def _start(self) -> None:
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(repository.create_schema, self.engine)
                nc = await self.broker.connect()
                js = nc.jetstream()
                await check_streams(js, INGEST_STREAMS, replicas=self.settings.stream_replicas)
                await check_duplicate_windows(js, self.settings)
                await ensure_consumer(js, self.settings)
                if self.mirror is None:
                    self.mirror = MeasureMirror(nc, timeout=self.settings.catalog_timeout)
                    await self.mirror.start()
                if self.handler is None:
                    self.handler = await self._make_handler(nc)
                if self._reconciling is None:
                    assert self.reconciler is not None
                    self._reconciling = asyncio.create_task(self.reconciler.run(), name="ingest-reconciler")
                if self._advisories is None:
                    self._advisories = await nc.subscribe(INGEST_MAX_DELIVERIES_ADVISORY, cb=self._on_max_deliveries)
                await self.broker.start()
                tune_pull_fetch(self.broker)
                self.consuming.set()
                self._lag = asyncio.create_task(
                    ConsumerLag(self.registry).watch(js, stream=STATUS_STREAM.name, durable=INGEST_DURABLE),
                    name="ingest-consumer-lag",
                )
                log.info("ingest consuming STATUS as durable %r", "ingest")
                return
            except asyncio.CancelledError:
                raise
            except (DuplicateWindowTooShort, StreamDiffers) as e:
                self.refused = str(e)
                log.critical("ingest refuses to consume STATUS: %s", e)
                return
            except StreamMissing as e:
                log.warning("ingest cannot start yet (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
            except Exception:
                log.exception("ingest cannot start yet; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _make_handler(self, nc: Any) -> BatchHandler:
        assert self.mirror is not None
        republisher = Republisher(
            engine=self.engine,
            nc=nc,
            pub_acks=self.pub_acks,
            health=self.health,
            metrics=self.metrics,
            timeout=self.settings.publish_timeout,
        )
        self.reconciler = Reconciler(
            engine=self.engine,
            nc=nc,
            republisher=republisher,
            pub_acks=self.pub_acks,
            metrics=self.metrics,
            interval=self.settings.reconcile_interval,
        )
        observer = BatchObserver(
            self.tracer_provider.get_tracer("ingest"), self.metrics, db_system=self.engine.dialect.name
        )
        commands = CommandWorld(engine=self.engine, js=nc.jetstream(), verifier=self.verifier)
        options = self.options
        return BatchHandler(
            engine=self.engine,
            decider=BatchDecider(engine=self.engine, mirror=self.mirror, commands=commands, observer=observer),
            publisher=Publisher(nc, self.health, self.pub_acks, timeout=options.publish_timeout),
            settler=Settler(
                nc=nc,
                engine=self.engine,
                observer=observer,
                pub_acks=self.pub_acks,
                max_deliver=options.max_deliver,
                retry_delay_max=options.retry_delay_max,
                publish_timeout=options.publish_timeout,
            ),
            observer=observer,
            republisher=republisher,
            pub_acks=self.pub_acks,
            health=self.health,
            max_inflight=options.max_inflight,
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in (self._lag, self._reconciling):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        # Stop fetching, let the batches in flight get their PubAcks and acks, then close the connection.
        for subscriber in self.broker.subscribers:
            try:
                await subscriber.stop()
            except Exception:
                log.exception("stopping the STATUS consumer")
        if self.handler is not None:
            await self.handler.drain()
        else:
            await self.pub_acks.stop()
        try:
            await self.broker.stop()
        except Exception as e:  # e.g. NATS away at shutdown: drain() refuses while reconnecting
            log.warning("broker did not stop cleanly (%s); closing the connection", e)
            with contextlib.suppress(Exception):
                await self.broker.connection.close()
        if self.mirror is not None:
            await self.mirror.stop()
        self.engine.dispose()
        if self._owns_tracer:
            self.tracer_provider.shutdown()

    def nats_connected(self) -> bool:
        try:
            return bool(self.consuming.is_set() and self.broker.connection.is_connected)
        except Exception:
            return False

    async def outbox_status(self) -> OutboxStatus | None:
        """The outbox as /healthz shows it (None until ingest is connected)."""
        if self.reconciler is None:
            return None
        try:
            return await self.reconciler.status()
        except Exception:  # the store is what /healthz's database check reports
            log.warning("outbox status unavailable", exc_info=True)
            return None

    def database_ready(self) -> bool:
        """The store answers, and the last batch could write to it (a locked SQLite file still answers reads)."""
        if self.health.store_failing:
            # The last batch could not write: ready again as soon as a write could start.
            if not queries.writable(self.engine):
                return False
            self.health.store_ok()
        return queries.ping(self.engine)


def create_app(
    settings: IngestSettings | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    auth: AuthSettings | None = None,
) -> FastAPI:
    runtime = IngestRuntime(settings or IngestSettings(), tracer_provider=tracer_provider, auth=auth)

    app = service_app(
        runtime,
        title="Shinchoku ingest",
        summary="Admits each ministry status event exactly once, or rejects it with a reason code",
        version="1.0.0",
        verifier=runtime.verifier,
        registry=runtime.registry,
        tracer_provider=runtime.tracer_provider,
        routers=[router],
    )
    app.state.runtime = runtime
    return app
