"""OpenTelemetry for every Shinchoku process: traces configured by the standard OTEL_* variables, JSON logs.

Where spans go:

* `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set: OTLP/HTTP (protobuf) to it;
  headers, timeout and compression come from the standard `OTEL_EXPORTER_OTLP_*` variables.
* otherwise (the embedded default): a local span file `data_dir/spans/{service}.jsonl`, one JSON object per
  span, rotated at a size limit (`{service}.jsonl.1` … `.N`), so nothing needs a collector to work and
  `shinchoku trace` can read it (`shinchoku_runtime.spanfile`).
* `OTEL_TRACES_EXPORTER` chooses explicitly, comma-separated: `otlp`, `jsonl` (the local span file),
  `console`, `none`; e.g. `otlp,jsonl` writes both.

`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and `OTEL_SDK_DISABLED`
are honoured as the specification says. This module sets up providers and instrumentation; the span file is
`spanfile`, JSON logs are `logs` (their names are re-exported here).
"""

from __future__ import annotations

import logging
import os
import socket
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span

from shinchoku_runtime.logs import JsonLogFormatter, init_logging
from shinchoku_runtime.spanfile import (
    SPAN_FILE_BACKUPS,
    SPAN_FILE_BACKUPS_ENV,
    SPAN_FILE_MAX_BYTES,
    SPAN_FILE_MAX_BYTES_ENV,
    SPANS_DIR,
    JsonlSpanExporter,
    JsonlSpanProcessor,
    SpanRecord,
    SpanRecords,
    env_int,
    read_spans,
    record_line,
    span_files,
    span_line,
    span_to_dict,
    span_to_json,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

#: Fresh span files matter more than batching here: `shinchoku trace` reads them right after a report.
DEFAULT_SCHEDULE_DELAY_MILLIS = 500
#: Room for a few seconds of spans at thousands of messages a second (the SDK's 2,048 overflowed and dropped
#: spans under load), exported in large batches (one write each).
DEFAULT_MAX_QUEUE_SIZE = 32_768
DEFAULT_MAX_EXPORT_BATCH_SIZE = 2_048
#: Requests that are not worth a trace (probes every few seconds, scrapes).
DEFAULT_EXCLUDED_URLS = "/healthz,/metrics"

__all__ = [
    "DEFAULT_EXCLUDED_URLS",
    "DEFAULT_MAX_EXPORT_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_SCHEDULE_DELAY_MILLIS",
    "SPANS_DIR",
    "SPAN_FILE_BACKUPS",
    "SPAN_FILE_BACKUPS_ENV",
    "SPAN_FILE_MAX_BYTES",
    "SPAN_FILE_MAX_BYTES_ENV",
    "InsideSpansOnly",
    "JsonLogFormatter",
    "JsonlSpanExporter",
    "JsonlSpanProcessor",
    "SpanRecord",
    "SpanRecords",
    "current_trace_id",
    "exporter_names",
    "init_logging",
    "init_tracing",
    "instrument_app",
    "instrument_engine",
    "make_exporters",
    "make_resource",
    "otlp_configured",
    "read_spans",
    "record_line",
    "span_files",
    "span_line",
    "span_to_dict",
    "span_to_json",
]


# ---------------------------------------------------------------------------------------------- providers


def otlp_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def exporter_names() -> list[str]:
    """The exporters to install: `OTEL_TRACES_EXPORTER` when set, else OTLP with an endpoint, else the span file."""
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if raw:
        return [n.strip().lower() for n in raw.split(",") if n.strip()]
    return ["otlp"] if otlp_configured() else ["jsonl"]


def _otlp_exporter() -> SpanExporter:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported here: exporting with http/protobuf", protocol)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers, timeout, compression and certificates come from the OTEL_EXPORTER_OTLP_* variables.
    return OTLPSpanExporter()


def make_exporters(service_name: str, data_dir: Path | None) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in exporter_names():
        if name == "none":
            continue
        if name == "otlp":
            exporters.append(_otlp_exporter())
        elif name in ("jsonl", "file"):
            if data_dir is None:
                log.warning("span file requested but no data directory given: spans of %s are dropped", service_name)
                continue
            exporters.append(JsonlSpanExporter(data_dir / SPANS_DIR / f"{service_name}.jsonl"))
        elif name == "console":
            exporters.append(ConsoleSpanExporter(service_name=service_name))
        else:
            log.warning("OTEL_TRACES_EXPORTER names an unknown exporter %r: ignored", name)
    return exporters


def make_resource(service_name: str) -> Resource:
    """`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` first, then this process's own name and identity."""
    detected = Resource.create()
    attributes = dict(detected.attributes)
    if str(attributes.get("service.name", "unknown_service")).startswith("unknown_service"):
        attributes["service.name"] = service_name
    attributes.setdefault("service.namespace", "shinchoku")
    attributes.setdefault("service.instance.id", f"{socket.gethostname()}-{os.getpid()}")
    return Resource(attributes, detected.schema_url)


def _batch_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    """The SDK's batch processor with this project's defaults; an `OTEL_BSP_*` variable that is set wins."""
    queue_set = bool(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE"))
    batch: int | None = None
    if not os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        # A smaller queue set by the operator bounds the batch (the SDK requires batch <= queue).
        queue = env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE) if queue_set else DEFAULT_MAX_QUEUE_SIZE
        batch = min(DEFAULT_MAX_EXPORT_BATCH_SIZE, queue)
    kind = JsonlSpanProcessor if isinstance(exporter, JsonlSpanExporter) else BatchSpanProcessor
    return kind(
        exporter,  # type: ignore[arg-type]
        max_queue_size=None if queue_set else DEFAULT_MAX_QUEUE_SIZE,
        schedule_delay_millis=None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else DEFAULT_SCHEDULE_DELAY_MILLIS,
        max_export_batch_size=batch,
    )


def init_tracing(service_name: str, data_dir: Path | None = None) -> TracerProvider:
    """A TracerProvider for this service (see the module docstring for where its spans go).

    The first one in a process also becomes the global provider (`opentelemetry.trace.get_tracer`); later
    ones (several services composed in one test process) stay private to the service that asked, so each
    keeps its own name and shutting one down leaves the others alone.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracerProvider()  # the SDK hands out no-op tracers when disabled
    provider = TracerProvider(resource=make_resource(service_name))  # the sampler comes from OTEL_TRACES_SAMPLER
    for exporter in make_exporters(service_name, data_dir):
        provider.add_span_processor(_batch_processor(exporter))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    return provider


# ---------------------------------------------------------------------------------------------- instrumentation

_instrumented_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


class InsideSpansOnly(trace.Tracer):
    """A tracer that records a span only inside another one.

    Database statements are traced inside a request or message span, never as traces of their own: health
    checks and background polls would otherwise fill the span file with one-statement traces.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(self, name: str, context: Context | None = None, *args: Any, **kwargs: Any) -> Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Context | None = None, *args: Any, end_on_exit: bool = True, **kwargs: Any
    ) -> Iterator[Span]:
        span = self.start_span(name, context, *args, **kwargs)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


def instrument_engine(engine: Engine, tracer_provider: trace.TracerProvider | None = None) -> Engine:
    """Trace every statement the engine runs (as children of the current span); idempotent per engine."""
    if engine in _instrumented_engines:
        return engine
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as sqlalchemy_instrumentation_version

    scope = "opentelemetry.instrumentation.sqlalchemy"
    tracer = InsideSpansOnly(trace.get_tracer(scope, sqlalchemy_instrumentation_version, tracer_provider))
    connections_usage = metrics.get_meter(scope).create_up_down_counter(
        name="db.client.connections.usage", unit="connections", description="Connections in use or idle"
    )
    EngineTracer(tracer, engine, connections_usage)  # type: ignore[no-untyped-call]
    _instrumented_engines.add(engine)
    return engine


def instrument_app(app: FastAPI, tracer_provider: trace.TracerProvider | None = None) -> FastAPI:
    """Trace every HTTP request but the probes and scrapes (`OTEL_PYTHON_FASTAPI_EXCLUDED_URLS` overrides)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    excluded = None if os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") else DEFAULT_EXCLUDED_URLS
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, excluded_urls=excluded, exclude_spans=["receive", "send"]
    )
    return app


def current_trace_id() -> str | None:
    """The W3C trace id of the current span, for storing beside a decision; None outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
