"""Running a service: FastAPI and the FastStream broker side by side in one process, `/metrics`, health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shinchoku_runtime.adapters import check_hooks
from shinchoku_runtime.auth.dependencies import install_auth, public, require
from shinchoku_runtime.auth.principal import Principal, Role
from shinchoku_runtime.auth.verifier import TokenVerifier
from shinchoku_runtime.heap import GC_THRESHOLDS, settle_heap
from shinchoku_runtime.http import install_error_handlers
from shinchoku_runtime.telemetry import instrument_app

log = logging.getLogger(__name__)

__all__ = ["GC_THRESHOLDS", "settle_heap"]  # re-exported: services call them from here


#: `/metrics` is the operator's (DESIGN.md "Principals and access"): counters name agencies and reveal activity.
OPERATOR_ONLY = require(Role.operator, note="Prometheus metrics")


def add_metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    """`GET /metrics` for the operator's token (a Prometheus scrape sends it as `authorization.credentials`)."""

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(OPERATOR_ONLY)])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def add_liveness_route(app: FastAPI) -> None:
    """`GET /livez`: 200 while the process serves HTTP at all, whatever its dependencies say (an orchestrator's
    liveness probe: restarting a process does not bring NATS or the database back). Open to anyone, like
    `/healthz` (readiness), and says nothing but that."""

    @app.get("/livez", tags=["health"], dependencies=[Depends(public(note="liveness"))])
    def livez() -> JSONResponse:
        """200 while the process answers HTTP (liveness; readiness is /healthz)."""
        return JSONResponse({"status": "alive"})


def health_response(checks: dict[str, bool], **extra: Any) -> JSONResponse:
    """200 when every check passes, else 503; the body names each check."""
    ok = all(checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks, **extra}
    return JSONResponse(body, status_code=200 if ok else 503)


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run the ASGI app (whose lifespan starts the broker) until SIGINT/SIGTERM."""
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="on")
    server = uvicorn.Server(config)

    async def run() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            settle_heap()
        await serving

    asyncio.run(run())


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def lifespan_of(runtime: Startable) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that starts the service's runtime (broker, consumers) and stops it on shutdown.

    First it probes the library hooks the hot paths rely on (`adapters.check_hooks`): a broken one is named in
    a warning, with the slower public path taken instead.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        check_hooks()
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return lifespan


def service_app(
    runtime: Startable,
    *,
    verifier: TokenVerifier,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    routers: Sequence[APIRouter] = (),
    session: Callable[[Request], Principal | None] | None = None,
    **metadata: Any,
) -> FastAPI:
    """A service's app, the same for the three: FastAPI with `metadata` (title, summary or description, version),
    its lifespan running `runtime`, the platform's error bodies, the token gates (`verifier`; `session`: the
    principal of a browser session), `/metrics` of `registry`, `/livez`, the service's `routers`, HTTP tracing."""
    app = FastAPI(lifespan=lifespan_of(runtime), **metadata)
    install_error_handlers(app)
    install_auth(app, verifier, session=session)
    add_metrics_route(app, registry)
    add_liveness_route(app)
    for router in routers:
        app.include_router(router)
    instrument_app(app, tracer_provider)
    return app
