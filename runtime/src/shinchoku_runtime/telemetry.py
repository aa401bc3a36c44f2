"""OpenTelemetry for every Shinchoku process: traces configured by the standard OTEL_* variables, JSON logs.

Where spans go:

* `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set: OTLP/HTTP (protobuf) to it;
  headers, timeout and compression come from the standard `OTEL_EXPORTER_OTLP_*` variables.
* otherwise (the embedded default): a local span file `data_dir/spans/{service}.jsonl`, one JSON object per
  span, rotated at a size limit (`{service}.jsonl.1` … `.N`), so nothing needs a collector to work and
  `shinchoku trace` can read it.
* `OTEL_TRACES_EXPORTER` chooses explicitly, comma-separated: `otlp`, `jsonl` (the local span file),
  `console`, `none`; e.g. `otlp,jsonl` writes both.

`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and `OTEL_SDK_DISABLED`
are honoured as the specification says.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

try:  # POSIX: serialise rotation between processes sharing one span file (replicas on one data dir)
    import fcntl
except ImportError:  # pragma: no cover - not a target platform
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SPAN_FILE_MAX_BYTES = 20 * 1024 * 1024
SPAN_FILE_BACKUPS = 3
SPANS_DIR = "spans"
#: Override the span file's size limit and number of rotated files kept.
SPAN_FILE_MAX_BYTES_ENV = "SHINCHOKU_SPAN_FILE_MAX_BYTES"
SPAN_FILE_BACKUPS_ENV = "SHINCHOKU_SPAN_FILE_BACKUPS"
#: Fresh span files matter more than batching here: `shinchoku trace` reads them right after a report.
DEFAULT_SCHEDULE_DELAY_MILLIS = 500
#: Room for a few seconds of spans at thousands of messages a second (the SDK's 2,048 overflowed and dropped
#: spans under load), exported in large batches (one write each).
DEFAULT_MAX_QUEUE_SIZE = 32_768
DEFAULT_MAX_EXPORT_BATCH_SIZE = 2_048
#: Requests that are not worth a trace (probes every few seconds, scrapes).
DEFAULT_EXCLUDED_URLS = "/healthz,/metrics"

_ROTATED = re.compile(r"\.jsonl(\.\d+)?$")


# ---------------------------------------------------------------------------------------------- span file


def _plain(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return str(value)


_SCALARS = (str, int, float, bool)


def _attributes(attributes: Attributes | Mapping[str, object] | None) -> dict[str, object]:
    if not attributes:
        return {}
    # Nearly every attribute is a scalar already: copy without converting unless one is not.
    if all(type(v) in _SCALARS for v in attributes.values()):
        return dict(attributes)
    return {k: _plain(v) for k, v in attributes.items()}


def span_to_dict(span: ReadableSpan) -> dict[str, object]:
    """One span as the span file stores it (ids in W3C hex, times in Unix nanoseconds)."""
    ctx = span.get_span_context()
    parent = span.parent
    resource = span.resource.attributes
    scope = span.instrumentation_scope
    status = span.status
    attributes = span.attributes
    return {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": resource.get("service.name"),
        "service_instance": resource.get("service.instance.id"),
        "scope": scope.name if scope else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": status.status_code.name,
        "status_description": status.description,
        "attributes": _attributes(attributes) if attributes else {},
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": _attributes(e.attributes)} for e in span.events
        ]
        if span.events
        else [],
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ]
        if span.links
        else [],
    }


_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_STATUS_NAMES = {code: code.name for code in StatusCode}
#: service.name and service.instance.id of the resources seen (a process has one or two).
_services: dict[int, tuple[Resource, object, object]] = {}


def _service(resource: Resource) -> tuple[object, object]:
    seen = _services.get(id(resource))
    if seen is None or seen[0] is not resource:
        attributes = resource.attributes
        if len(_services) > 64:
            _services.clear()
        seen = (resource, attributes.get("service.name"), attributes.get("service.instance.id"))
        _services[id(resource)] = seen
    return seen[1], seen[2]


def span_line(span: ReadableSpan) -> bytes:
    """One span as a compact JSON line of the span file (UTF-8, without the newline): what `span_to_dict` says.

    Built for speed (ingest writes four spans per report): the fields are gathered without the conversions
    `span_to_dict` makes for readability and encoded by orjson in about 0.5 µs, a tenth of what the standard
    library takes. Text orjson refuses (a lone surrogate in an attribute, an integer beyond 64 bits) is
    written by the standard library with `\\u` escapes instead, so the span is kept.
    """
    ctx = span.get_span_context()
    parent = span.parent
    status = span.status
    scope = span.instrumentation_scope
    service, instance = _service(span.resource)
    attributes = getattr(span, "_attributes", None)  # the plain dict a span was built with, when it was
    if type(attributes) is not dict:
        attributes = dict(span.attributes) if span.attributes else {}
    events = span.events
    links = span.links
    doc = {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "kind": _KIND_NAMES[span.kind],
        "service": service,
        "service_instance": instance,
        "scope": scope.name if scope else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": _STATUS_NAMES[status.status_code],
        "status_description": status.description,
        "attributes": attributes,
        "events": [{"name": e.name, "time_ns": e.timestamp, "attributes": _attributes(e.attributes)} for e in events]
        if events
        else [],
        "links": [{"trace_id": f"{x.context.trace_id:032x}", "span_id": f"{x.context.span_id:016x}"} for x in links]
        if links
        else [],
    }
    try:
        return orjson.dumps(doc, default=str)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(span_to_dict(span), ensure_ascii=True, separators=(",", ":"), default=str).encode()


#: A finished span handed over by a hot path without building a `ReadableSpan` (see `record_sink`), in the span
#: file's terms: (name, trace_id, span_id, parent_span_id or None, kind, start_ns, end_ns, status,
#: status_description, attributes, scope, service, service_instance); ids in W3C hex, kind and status by name.
SpanRecord = tuple[str, str, str, str | None, str, int, int, str, str | None, Mapping[str, object], str, object, object]


class SpanRecords(list[SpanRecord]):
    """Spans handed over together as one item of the batch processor's queue."""

    __slots__ = ()


def record_line(record: SpanRecord) -> bytes:
    """One `SpanRecord` as a line of the span file: the same JSON object `span_line` writes for a span."""
    name, trace_id, span_id, parent, kind, start, end, status, description, attributes, scope, service, instance = (
        record
    )
    doc = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "service": service,
        "service_instance": instance,
        "scope": scope,
        "start_ns": start,
        "end_ns": end,
        "status": status,
        "status_description": description,
        "attributes": attributes,
        "events": [],
        "links": [],
    }
    try:
        return orjson.dumps(doc, default=str)
    except (orjson.JSONEncodeError, TypeError):
        doc["attributes"] = _attributes(attributes)
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), default=str).encode()


class RecordSink:
    """Where a hot path hands finished spans as `SpanRecord`s: the span file's batch processor, directly.

    Only offered when that processor is the tracer's only one (see `record_sink`), so the records reach every
    place a span would have.
    """

    def __init__(self, processor: JsonlSpanProcessor, resource: Resource) -> None:
        self._emit = processor.emit_records
        attributes = resource.attributes
        self.service: object = attributes.get("service.name")
        self.instance: object = attributes.get("service.instance.id")

    def emit(self, records: SpanRecords) -> None:
        if records:
            self._emit(records)


def record_sink(tracer: object) -> RecordSink | None:
    """A `RecordSink` for an SDK tracer whose spans all go to the span file alone, else None.

    Building a `ReadableSpan`, passing it through the processors and reading it back costs about three times
    what writing its line does; a service recording several spans per message at thousands of messages a
    second (ingest) hands the span file records instead. With any other exporter, or several, or a processor
    added to the provider, spans take the SDK's way.
    """
    processors = getattr(getattr(tracer, "span_processor", None), "_span_processors", None)
    resource = getattr(tracer, "resource", None)
    if (
        isinstance(processors, tuple)
        and len(processors) == 1
        and isinstance(processors[0], JsonlSpanProcessor)
        and processors[0].takes_records
        and isinstance(resource, Resource)
    ):
        return RecordSink(processors[0], resource)
    return None


def span_to_json(span: ReadableSpan) -> str:
    """`span_line` as text."""
    return span_line(span).decode("utf-8")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        log.warning("%s=%r is not an integer: using %d", name, raw, default)
        return default


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans as JSON lines to a file, rotating it at a size limit.

    Several processes may share one file (replicas on one data directory): each batch is one `O_APPEND`
    write, and rotation happens under an exclusive lock on `{file}.lock`.
    """

    def __init__(self, path: Path, max_bytes: int | None = None, backups: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes if max_bytes is not None else _env_int(SPAN_FILE_MAX_BYTES_ENV, SPAN_FILE_MAX_BYTES)
        self.backups = max(1, backups if backups is not None else _env_int(SPAN_FILE_BACKUPS_ENV, SPAN_FILE_BACKUPS))
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _rotate_if_full(self) -> None:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                # Another process may have rotated while we waited for the lock.
                if not self.path.exists() or self.path.stat().st_size < self.max_bytes:
                    return
                self.rotated(self.backups).unlink(missing_ok=True)
                for i in range(self.backups - 1, 0, -1):
                    if self.rotated(i).exists():
                        self.rotated(i).replace(self.rotated(i + 1))
                self.path.replace(self.rotated(1))
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def export(self, spans: Sequence[ReadableSpan | SpanRecords]) -> SpanExportResult:
        lines: list[bytes] = []
        for item in spans:
            if isinstance(item, SpanRecords):
                lines.extend([record_line(r) for r in item])
            else:
                lines.append(span_line(item))
        if not lines:
            return SpanExportResult.SUCCESS
        lines.append(b"")
        payload = b"\n".join(lines)
        try:
            with self._lock:
                self._rotate_if_full()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    view = memoryview(payload)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                finally:
                    os.close(fd)
        except OSError as e:
            log.warning("could not write spans to %s: %s", self.path, e)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        del timeout_millis  # every export is written synchronously
        return True


def span_files(spans_dir: Path) -> list[Path]:
    """Every span file under `spans_dir`, current and rotated (`*.jsonl`, `*.jsonl.N`), oldest first."""
    if not spans_dir.is_dir():
        return []
    found = [p for p in spans_dir.iterdir() if p.is_file() and _ROTATED.search(p.name)]

    def age(p: Path) -> tuple[str, int]:
        suffix = p.name.rsplit(".", 1)[-1]
        return (p.name.split(".jsonl", 1)[0], -int(suffix) if suffix.isdigit() else 0)

    return sorted(found, key=age)


def read_spans(spans_dir: Path, trace_id: str | None = None) -> list[dict[str, Any]]:
    """The spans in the span files (of one trace when `trace_id` is given); torn or foreign lines are skipped."""
    wanted = trace_id.lower() if trace_id else None
    out: list[dict[str, Any]] = []
    for path in span_files(spans_dir):
        try:
            text = path.read_text("utf-8", errors="replace")
        except OSError:
            continue  # rotated away while we listed the directory
        for line in text.splitlines():
            if wanted is not None and wanted not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and (wanted is None or record.get("trace_id") == wanted):
                out.append(record)
    return out


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


class JsonlSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor in front of the span file, also taking `SpanRecords` (see `record_sink`)."""

    def __init__(self, exporter: JsonlSpanExporter, **options: Any) -> None:
        super().__init__(exporter, **options)
        batch = getattr(self, "_batch_processor", None)
        #: The SDK's queue, when this version of it has the one known here (else: spans only).
        self._queue_emit = getattr(batch, "emit", None)
        self.takes_records = callable(self._queue_emit)

    def emit_records(self, records: SpanRecords) -> None:
        """Queue already finished, sampled spans for the span file, as one item."""
        assert self._queue_emit is not None
        self._queue_emit(records)


def _batch_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    """The SDK's batch processor with this project's defaults; an `OTEL_BSP_*` variable that is set wins."""
    queue_set = bool(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE"))
    batch: int | None = None
    if not os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        # A smaller queue set by the operator bounds the batch (the SDK requires batch <= queue).
        queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE) if queue_set else DEFAULT_MAX_QUEUE_SIZE
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


# ---------------------------------------------------------------------------------------------- logs

# Standard LogRecord attributes, and uvicorn's ANSI-coloured duplicate of the message.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, carrying the current trace and span ids and any `extra=` fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = trace.get_current_span().get_span_context()
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out.setdefault(key, _plain(value))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def init_logging(service: str, level: str = "INFO") -> None:
    """JSON logs on stderr for the whole process (uvicorn's and FastStream's loggers included)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
