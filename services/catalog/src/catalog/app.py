"""Composition root: the database, the seeded registry, the broker and the HTTP app of the catalog."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from fastapi import FastAPI
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Gauge
from sqlmodel import Session

from catalog import handlers, repository
from catalog.api import router
from catalog.config import CatalogSettings
from catalog.handlers import bundled_plan
from catalog.subscribers import register
from contracts.catalog import Measure
from contracts.streams import CATALOG_BUCKET, CATALOG_CHANGED
from shinchoku_runtime.auth import AuthSettings, TokenVerifier
from shinchoku_runtime.broker import make_broker
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.service import service_app
from shinchoku_runtime.telemetry import init_tracing, instrument_engine

log = logging.getLogger(__name__)

PlanLoader = Callable[[], Sequence[Measure]]
#: Longest pause between two attempts to publish the registry on NATS.
MAX_RETRY_DELAY = 30.0


class CatalogRuntime:
    """The running catalog: what the lifespan starts and stops, and what routes and health checks read."""

    def __init__(self, settings: CatalogSettings, *, load_plan: PlanLoader = bundled_plan) -> None:
        self.settings = settings
        self.load_plan = load_plan
        self.engine = make_engine(settings.resolved_database_url())
        self.metrics = CollectorRegistry()
        self.tracer_provider = init_tracing("catalog", settings.data_dir)
        instrument_engine(self.engine, self.tracer_provider)
        self.broker = make_broker(
            settings,
            service="catalog",
            tracer_provider=self.tracer_provider,
            registry=self.metrics,
            reconnected_cb=self._on_reconnected,
        )
        #: The stored registry as Measure JSON by id: what the KV bucket mirrors and request-reply answers.
        self.documents: dict[str, bytes] = {}
        self.changed = register(self.broker, documents=lambda: self.documents)
        self.measures_gauge = Gauge(
            "shinchoku_catalog_measures", "Measures in the stored registry", registry=self.metrics
        )
        self.seed_result: handlers.SeedResult | None = None
        self.mirror_result: handlers.MirrorResult | None = None
        self.mirrored = asyncio.Event()
        self._nats_task: asyncio.Task[None] | None = None
        self._publish_task: asyncio.Task[None] | None = None

    def seed(self) -> handlers.SeedResult:
        repository.create_schema(self.engine)
        result = handlers.seed_registry(self.engine, self.load_plan())
        self.documents = handlers.registry_documents(self.engine)
        self.seed_result = result
        self.measures_gauge.set(result.measures_total)
        return result

    async def start(self) -> None:
        """Seed the registry (HTTP serves only a seeded catalog), then bring up the NATS side in the background.

        NATS may come later than the catalog: until the registry is mirrored, /healthz says so with a 503.
        """
        await asyncio.to_thread(self.seed)
        self._nats_task = asyncio.create_task(self._start_nats(), name="catalog-nats")

    async def stop(self) -> None:
        tasks = [t for t in (self._nats_task, self._publish_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.broker.stop()
        self.engine.dispose()
        self.tracer_provider.shutdown()

    async def _start_nats(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.broker.start()  # keeps trying to connect while NATS is away
                break
            except Exception:
                log.exception("cannot start the broker; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        await self._publish_until_done()

    async def _publish_until_done(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.publish_registry()
                self.mirrored.set()
                return
            except Exception:
                log.exception("cannot publish the registry on NATS; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _on_reconnected(self) -> None:
        """Mirror again after a reconnect: the server may be one that lost or never had the bucket."""
        if self._publish_task is None or self._publish_task.done():
            self._publish_task = asyncio.create_task(self._publish_until_done(), name="catalog-remirror")

    async def bucket(self) -> KeyValue:
        """The CATALOG bucket, created when missing (file storage, the latest value of each key only).

        Declared afresh each time (JetStream treats an identical declaration as a no-op): after a
        reconnect the server may be one that lost the bucket, so no handle is cached.
        """
        js = self.broker.connection.jetstream()
        config = KeyValueConfig(
            bucket=CATALOG_BUCKET,
            description="The registry of measures: key = measure id, value = Measure JSON",
            history=1,
            storage=StorageType.FILE,
            replicas=self.settings.stream_replicas,
        )
        try:
            return await js.create_key_value(config)
        except BadRequestError as e:
            # Exists with other settings (made by an operator or another client version): use it as it is.
            log.warning("bucket %s exists with other settings (%s); using it as it is", CATALOG_BUCKET, e)
            return await js.key_value(CATALOG_BUCKET)

    async def publish_registry(self) -> None:
        """Mirror the stored registry into the KV bucket, then announce a change not yet announced."""
        kv = await self.bucket()
        self.mirror_result = await handlers.mirror_to_kv(kv, self.documents)
        announcement = await asyncio.to_thread(handlers.pending_announcement, self.engine)
        if announcement is None:
            return
        await self.changed.publish(announcement)
        await self.broker.connection.flush()
        await asyncio.to_thread(handlers.record_announcement, self.engine, revision=announcement.revision)
        log.info(
            "announced registry %s on %s (%d ids changed)",
            announcement.revision[:12],
            CATALOG_CHANGED,
            len(announcement.changed_ids),
        )

    def registry_status(self) -> repository.RegistryRow | None:
        """The stored registry row, or None when the database does not answer (the failure is logged)."""
        try:
            with Session(self.engine) as session:
                return repository.get_registry(session)
        except Exception:
            log.warning("database health check failed", exc_info=True)
            return None

    async def nats_ready(self) -> bool:
        return self.mirrored.is_set() and await self.broker.ping(timeout=0.5)


def create_app(
    settings: CatalogSettings | None = None, *, load_plan: PlanLoader = bundled_plan, auth: AuthSettings | None = None
) -> FastAPI:
    """The catalog's ASGI app; its lifespan seeds the registry and runs the NATS side."""
    runtime = CatalogRuntime(settings or CatalogSettings(), load_plan=load_plan)

    app = service_app(
        runtime,
        title="Shinchoku catalog",
        summary="The registry of the Priority Policy Program's 320 measures (デジタル社会の実現に向けた重点計画)",
        version="1.0.0",
        verifier=TokenVerifier.from_settings(auth or AuthSettings(), data_dir=runtime.settings.data_dir),
        registry=runtime.metrics,
        tracer_provider=runtime.tracer_provider,
        routers=[router],
    )
    app.state.runtime = runtime
    return app
