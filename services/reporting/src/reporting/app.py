"""Composition root: FastAPI (HTTP :8003) and the ACCEPTED consumer side by side in one process.

The app's lifespan creates the store, starts the writer, then (in the background, retrying until NATS
answers) declares the shared streams, follows the catalog bucket and pulls from the durable consumer.
The dashboard plugs in with one line: `app.include_router(dashboard.router)`; its routes read
`request.app.state.queries` (a `reporting.queries.RollupQueries`, see `reporting.api.get_queries`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import sqlalchemy as sa
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from contracts.catalog import Measure
from contracts.streams import ACCEPTED_STREAM, ALERTS_STREAM, REPORTING_DURABLE, STATUS_STREAM
from reporting import access, api, dashboard, repository
from reporting.alerts import api as alerts_api
from reporting.alerts import panel as alerts_panel
from reporting.alerts.service import AlertsService, Clock, fixed_clock, system_clock
from reporting.config import ReportingSettings
from reporting.cycle.cursor import init_cursor
from reporting.cycle.outbox import PublicationOutbox
from reporting.dashboard.session import Sessions, session_secret
from reporting.handlers import AppliedEvent
from reporting.metrics import ReportingMetrics
from reporting.queries import RollupQueries
from reporting.registry import CatalogView
from reporting.subscribers import AcceptedPuller, AcceptedWriter, consumer_config, update_consumer
from reporting.workers import make_applier
from shinchoku_runtime.auth import AuthSettings, TokenVerifier
from shinchoku_runtime.broker import ConsumerLag
from shinchoku_runtime.db import in_thread, make_engine
from shinchoku_runtime.natsclient import connect_service
from shinchoku_runtime.service import health_response, service_app
from shinchoku_runtime.streamdefs import StreamDiffers, check_streams
from shinchoku_runtime.telemetry import init_tracing, instrument_engine

log = logging.getLogger(__name__)

#: How often the rollups read lately are checked for staleness when this process committed nothing (another
#: replica's commits, a catalog change, the day turning), and the least time between two warm-ups.
WARM_CHECK_SECONDS = 1.0
WARM_MIN_INTERVAL = 0.2


class ReportingService:
    """The running parts of the service, started and stopped by the app's lifespan."""

    def __init__(self, settings: ReportingSettings, *, clock: Clock = system_clock) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = ReportingMetrics(self.registry)
        self.consumer_lag = ConsumerLag(self.registry)
        self.tracer_provider = init_tracing("reporting", settings.data_dir)
        self.engine = repository.tune(make_engine(settings.resolved_database_url()))
        instrument_engine(self.engine, self.tracer_provider)
        self.catalog = CatalogView()
        self.queries = RollupQueries(self.engine, self.catalog)
        self._changed = asyncio.Event()
        self.outbox = PublicationOutbox(self.engine, self._measures)
        if settings.alert_clock is not None and clock is system_clock:
            clock = fixed_clock(settings.alert_clock)
        self.alerts = AlertsService(self.engine, self.catalog, settings.alert_settings(), clock=clock)
        self.writer = AcceptedWriter(
            make_applier(self.engine, processes=settings.writer_processes),
            self.metrics,
            db_system=self.engine.dialect.name,
            retry_delay=settings.retry_delay,
            hold_delay=settings.hold_delay,
            max_rows=settings.max_rows_per_transaction,
            tracer=self.tracer_provider.get_tracer("reporting.subscribers"),
            on_committed=self._committed,
        )
        self.puller: AcceptedPuller | None = None
        self._nc: Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: Why reporting will not consume (a stream unlike the shared definition): /healthz says it.
        self.refused: str | None = None

    def _measures(self) -> Sequence[Measure] | None:
        snapshot = self.catalog.snapshot
        return snapshot.measures if snapshot.loaded else None

    def _committed(self, events: Sequence[AppliedEvent], publishes: bool) -> None:
        # Readers first: the publications go out and the rollups read lately are brought up to date at once; the
        # alerts' evaluation of the measures touched follows the warm-up rather than competing with it and with the
        # readers who asked the moment the change was acknowledged. The outbox is woken only by a batch that wrote a
        # revision to publish (a close, a restatement): a look for unsent revisions after every report (a thread and
        # a query) would compete with those readers for nothing; it still polls each second.
        self.alerts.touched((e.measure_id for e in events), wake=False)
        self._changed.set()
        if publishes:
            self.outbox.wake.set()

    async def start(self) -> None:
        repository.create_store(self.engine)
        self.alerts.create_tables()
        self.writer.start()
        self._tasks.append(asyncio.create_task(self._run(), name="reporting-nats"))
        self._tasks.append(asyncio.create_task(self._keep_warm(), name="reporting-warm"))

    async def _keep_warm(self) -> None:
        """Recompute the rollups read lately as soon as the store changes, so readers find them computed; then let
        the alerts evaluate the change."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=WARM_CHECK_SECONDS)
            changed = self._changed.is_set()
            self._changed.clear()
            try:
                computed = await in_thread(self.queries.warm)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the database is away: the readers will say so; try again later
                log.debug("could not warm the rollups", exc_info=True)
                computed = 1
            if changed:
                self.alerts.wake()
            if computed:  # leave the consumer most of the process while the store keeps changing
                await asyncio.sleep(WARM_MIN_INTERVAL)

    async def stop(self) -> None:
        # Stop pulling first, then let the writer commit and acknowledge what it holds.
        self._stopping = True
        if self.puller is not None:
            self.puller.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in stuck:
                log.warning("task %s did not stop in time", task.get_name())
        await self.writer.stop()
        await self.alerts.stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)  # the last acknowledgements
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=5)
        self.engine.dispose()
        with contextlib.suppress(Exception):
            self.tracer_provider.force_flush(2000)

    async def _connect(self) -> Client:
        return await connect_service(self.settings, name="shinchoku-reporting")

    async def _run(self) -> None:
        """Connect (retrying until NATS answers), then follow the catalog and consume ACCEPTED."""
        while self._nc is None:
            try:
                nc = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("NATS not available yet (%s: %s); retrying", type(e).__name__, e)
                await asyncio.sleep(2)
                continue
            self._nc = nc
        js = self._nc.jetstream()
        while True:
            try:
                await check_streams(js, (ACCEPTED_STREAM, ALERTS_STREAM), replicas=self.settings.stream_replicas)
                break
            except asyncio.CancelledError:
                raise
            except StreamDiffers as e:
                self.refused = str(e)
                log.critical("reporting refuses to consume %s: %s", ACCEPTED_STREAM.name, e)
                return
            except Exception as e:  # missing (not applied yet) or NATS away: keep trying
                log.warning("cannot check the streams yet (%s: %s); retrying", type(e).__name__, e)
                await asyncio.sleep(2)
        self._tasks.append(asyncio.create_task(self.catalog.follow(self._nc), name="reporting-catalog"))
        self._tasks.append(asyncio.create_task(self.outbox.run(self._nc), name="reporting-publications"))
        self.alerts.start(self._nc)
        self._tasks.append(
            asyncio.create_task(
                self.consumer_lag.watch(js, stream=ACCEPTED_STREAM.name, durable=REPORTING_DURABLE),
                name="reporting-lag",
            )
        )
        config = consumer_config(ack_wait=self.settings.ack_wait, max_ack_pending=self.settings.max_ack_pending)
        while True:
            try:
                floor = await update_consumer(self._nc, config)
                cursor = await in_thread(init_cursor, self.engine, repository.LIVE, floor)
                log.info("applying admitted facts in the log's order from stream sequence %d", cursor + 1)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("could not update the durable consumer (%s: %s); retrying", type(e).__name__, e)
                await asyncio.sleep(2)
        self.puller = AcceptedPuller(self._nc, self.writer.submit, config=config, batch=self.settings.batch_size)
        log.info("consuming %s with durable consumer %s", ACCEPTED_STREAM.name, REPORTING_DURABLE)
        while not self._stopping:
            try:
                await self.puller.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. the stream is not there yet: keep trying
                log.warning("consumer stopped (%s: %s); restarting", type(e).__name__, e)
                await asyncio.sleep(2)

    async def publish_review(self, subject: str, data: bytes, token: str) -> None:
        """Publish a review the dashboard sends for the signed-in secretariat onto STATUS, with that person's bearer
        token (ingest admits it by the token, as from `shinchoku review`: `reporting.dashboard.review`)."""
        if self._nc is None or not self._nc.is_connected:
            raise ConnectionError("reporting is not connected to NATS")
        await self._nc.jetstream().publish(
            subject, data, stream=STATUS_STREAM.name, timeout=5.0, headers={"Authorization": f"Bearer {token}"}
        )

    def health_checks(self) -> dict[str, bool]:
        database = True
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception:
            database = False
        self.metrics.catalog_measures.set(len(self.catalog.snapshot.measures))
        return {
            "database": database,
            "nats": self._nc is not None and self._nc.is_connected,
            "catalog": self.catalog.loaded,
            "consumer": self.puller is not None and self.puller.running and self.writer.running,
            # False while an ACCEPTED message waits for a version that can decode it (an upgrade half done).
            "decoding": not self.writer.held,
        }


def create_app(
    settings: ReportingSettings | None = None, *, clock: Clock = system_clock, auth: AuthSettings | None = None
) -> FastAPI:
    """The reporting app; `clock` tells the alerts the time (tests move it), `auth` how tokens are verified."""
    settings = settings or ReportingSettings()
    service = ReportingService(settings, clock=clock)

    auth = auth or AuthSettings()
    secret = settings.dashboard_session_secret
    sessions = Sessions(
        session_secret(secret.get_secret_value() if secret else None, settings.data_dir),
        ttl=settings.dashboard_session_ttl,
        secure=settings.dashboard_cookie_secure,
    )
    app = service_app(
        service,
        title="Shinchoku reporting",
        description="Quarterly rollups of the Priority Policy Program by fiscal quarter, agency and section.",
        version="1.0.0",
        verifier=TokenVerifier.from_settings(auth, data_dir=settings.data_dir),
        # A signed-in browser reads the API with its session too (the dashboard's CSV links): only GET routes, no
        # CORS, and a SameSite=Lax cookie that another site's sub-requests do not carry.
        session=sessions.principal,
        registry=service.registry,
        tracer_provider=service.tracer_provider,
        routers=[api.router, alerts_api.router, alerts_panel.router, dashboard.router],
    )
    app.state.service = service
    app.state.settings = settings
    app.state.queries = service.queries
    app.state.auth_settings = auth
    app.state.dashboard_sessions = sessions

    @app.get("/healthz", tags=["health"], dependencies=[Depends(access.OPEN)])
    def healthz() -> JSONResponse:
        """200 when the database, NATS, the catalog and the consumer are all up; 503 otherwise."""
        last = None
        with contextlib.suppress(Exception), service.engine.connect() as conn:
            moment = repository.last_admitted(conn)
            last = moment.isoformat() if moment else None
        return health_response(
            service.health_checks(),
            measures=len(service.catalog.snapshot.measures),
            last_admitted_at=last,
            rollup_freshness_seconds=service.metrics.freshness(),
            **({"refused": service.refused} if service.refused else {}),
        )

    return app
