"""Running a service: FastAPI and the FastStream broker side by side in one process, `/metrics`, health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


def add_metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def health_response(checks: dict[str, bool], **extra: Any) -> JSONResponse:
    """200 when every check passes, else 503; the body names each check."""
    ok = all(checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks, **extra}
    return JSONResponse(body, status_code=200 if ok else 503)


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run the ASGI app (whose lifespan starts the broker) until SIGINT/SIGTERM."""
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    asyncio.run(server.serve())


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def lifespan_of(runtime: Startable) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that starts the service's runtime (broker, consumers) and stops it on shutdown."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return lifespan
