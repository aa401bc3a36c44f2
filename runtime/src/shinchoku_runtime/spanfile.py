"""The local span file: one JSON object per span and line, written by `JsonlSpanExporter`, read by `read_spans`.

`data_dir/spans/{service}.jsonl`, rotated at a size limit (`{service}.jsonl.1` … `.N`), so nothing needs a
collector to work and `shinchoku trace` can read it. Besides the SDK's spans, its batch processor takes
`SpanRecords`: finished spans a hot path hands over in the span file's own terms (`shinchoku_runtime.batchspans`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import Attributes

from shinchoku_runtime.adapters.otel_sdk import plain_attributes, queue_emit, sole_processor

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

_ROTATED = re.compile(r"\.jsonl(\.\d+)?$")


def plain_value(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [plain_value(v) for v in value]
    return str(value)


_SCALARS = (str, int, float, bool)


def _attributes(attributes: Attributes | Mapping[str, object] | None) -> dict[str, object]:
    if not attributes:
        return {}
    # Nearly every attribute is a scalar already: copy without converting unless one is not.
    if all(type(v) in _SCALARS for v in attributes.values()):
        return dict(attributes)
    return {k: plain_value(v) for k, v in attributes.items()}


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
    attributes = plain_attributes(span)  # the dict a span was built with, not copied out of its proxy
    if attributes is None:
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


def span_to_json(span: ReadableSpan) -> str:
    """`span_line` as text."""
    return span_line(span).decode("utf-8")


def env_int(name: str, default: int) -> int:
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
        self.max_bytes = max_bytes if max_bytes is not None else env_int(SPAN_FILE_MAX_BYTES_ENV, SPAN_FILE_MAX_BYTES)
        self.backups = max(1, backups if backups is not None else env_int(SPAN_FILE_BACKUPS_ENV, SPAN_FILE_BACKUPS))
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


class JsonlSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor in front of the span file, also taking `SpanRecords` (see `batchspans.record_sink`)."""

    def __init__(self, exporter: JsonlSpanExporter, **options: Any) -> None:
        super().__init__(exporter, **options)
        #: The SDK's queue, when the `otel-sdk.batch-queue` hook holds (else: spans only).
        self._queue_emit: Callable[[object], None] | None = queue_emit(self)
        self.takes_records = self._queue_emit is not None

    def emit_records(self, records: SpanRecords) -> None:
        """Queue already finished, sampled spans for the span file, as one item."""
        assert self._queue_emit is not None
        self._queue_emit(records)


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
    second hands the span file records instead. With any other exporter, or several, or a processor added to
    the provider, spans take the SDK's way.
    """
    processor = sole_processor(tracer)
    resource = getattr(tracer, "resource", None)
    if isinstance(processor, JsonlSpanProcessor) and processor.takes_records and isinstance(resource, Resource):
        return RecordSink(processor, resource)
    return None
