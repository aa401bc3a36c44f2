"""`shinchoku trace EVENT_ID`: one report's journey, hop by hop, as a tree of spans.

The ingest service keeps each decision's trace id (`GET /events/{id}`); the spans come from the local span
files (`DATA_DIR/spans/*.jsonl`, rotated ones included) or, when `SHINCHOKU_JAEGER_URL` is set, from Jaeger's
query API.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from shinchoku.issuer import bearer_headers
from shinchoku.stack import DEFAULT_DATA_DIR, Stack, StackNotFound
from shinchoku_runtime.telemetry import SPANS_DIR, read_spans

JAEGER_URL_ENV = "SHINCHOKU_JAEGER_URL"
#: Attributes worth a place on a span's line, in this order.
SHOWN_ATTRIBUTES = (
    "shinchoku.event_id",
    "shinchoku.measure_id",
    "shinchoku.agency",
    "shinchoku.outcome",
    "shinchoku.reason",
    "messaging.destination.name",
    "peer.service",
    "db.statement",
    "http.route",
)
_PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta", "bright_green")


class TraceError(Exception):
    """Something the operator can act on: the message says what."""


# ---------------------------------------------------------------------------------------------- span sources


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def jaeger_to_spans(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Jaeger query API traces (`{"data": [{"spans", "processes"}]}`) as span-file records."""
    out: list[dict[str, Any]] = []
    for trace_data in body.get("data") or []:
        processes = trace_data.get("processes") or {}
        for span in trace_data.get("spans") or []:
            tags = {t.get("key"): t.get("value") for t in span.get("tags") or []}
            parent = next(
                (r.get("spanID") for r in span.get("references") or [] if r.get("refType") == "CHILD_OF"), None
            )
            error = tags.get("otel.status_code") == "ERROR" or tags.get("error") in (True, "true")
            start_us = _int(span.get("startTime"))
            events = []
            for entry in span.get("logs") or []:
                fields = {f.get("key"): f.get("value") for f in entry.get("fields") or []}
                events.append({"name": str(fields.pop("event", "log")), "attributes": fields})
            out.append(
                {
                    "trace_id": str(span.get("traceID", "")).rjust(32, "0"),
                    "span_id": str(span.get("spanID", "")).rjust(16, "0"),
                    "parent_span_id": str(parent).rjust(16, "0") if parent else None,
                    "name": span.get("operationName", "?"),
                    "kind": str(tags.get("span.kind", "internal")).upper(),
                    "service": (processes.get(span.get("processID")) or {}).get("serviceName"),
                    "start_ns": start_us * 1000,
                    "end_ns": (start_us + _int(span.get("duration"))) * 1000,
                    "status": "ERROR" if error else str(tags.get("otel.status_code") or "UNSET"),
                    "status_description": tags.get("otel.status_description"),
                    "attributes": {k: v for k, v in tags.items() if k is not None},
                    "events": events,
                }
            )
    return out


def spans_from_jaeger(base_url: str, trace_id: str) -> list[dict[str, Any]]:
    url = f"{base_url.rstrip('/')}/api/traces/{trace_id}"
    try:
        response = httpx.get(url, timeout=10.0)
    except httpx.TransportError as e:
        raise TraceError(
            f"Jaeger does not answer at {base_url} ({e}); unset {JAEGER_URL_ENV} to read span files"
        ) from None
    if response.status_code == 404:
        return []
    if response.status_code != 200:
        raise TraceError(f"Jaeger answered {response.status_code} for {url}: {response.text[:200]}")
    return jaeger_to_spans(response.json())


def collect(fetch: Callable[[], list[dict[str, Any]]], wait: float) -> list[dict[str, Any]]:
    """Read until the trace is whole (every parent present) and stops growing, or `wait` seconds pass.

    Each process writes its spans in batches every half second, so the last hop may land a moment later.
    """
    deadline = time.monotonic() + wait
    previous = -1
    while True:
        spans = fetch()
        ids = {s["span_id"] for s in spans}
        whole = bool(spans) and all(s.get("parent_span_id") in ids for s in spans if s.get("parent_span_id"))
        if (whole and len(spans) == previous) or time.monotonic() >= deadline:
            return spans
        previous = len(spans)
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------- the tree


@dataclass
class SpanNode:
    span: dict[str, Any]
    children: list[SpanNode] = field(default_factory=list)
    orphan: bool = False

    @property
    def start(self) -> int:
        return _int(self.span.get("start_ns"))

    @property
    def duration_ms(self) -> float:
        return max(0, _int(self.span.get("end_ns")) - self.start) / 1e6


def build_tree(spans: list[dict[str, Any]]) -> list[SpanNode]:
    """Roots (and orphans whose parent span is missing) with their children, each level by start time."""
    unique = {s["span_id"]: s for s in spans}
    nodes = {span_id: SpanNode(span) for span_id, span in unique.items()}
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent_id = node.span.get("parent_span_id")
        if parent_id and parent_id in nodes and parent_id != node.span["span_id"]:
            nodes[parent_id].children.append(node)
        else:
            node.orphan = bool(parent_id)
            roots.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.start)
    return sorted(roots, key=lambda n: (n.orphan, n.start))


def services_of(spans: list[dict[str, Any]]) -> list[str]:
    """The services in the trace, in order of their first span."""
    seen: dict[str, int] = {}
    for s in sorted(spans, key=lambda s: _int(s.get("start_ns"))):
        seen.setdefault(str(s.get("service") or "unknown"), 0)
    return list(seen)


def _colour(service: str) -> str:
    return _PALETTE[int(hashlib.sha1(service.encode()).hexdigest(), 16) % len(_PALETTE)]


def _label(node: SpanNode, origin: int) -> Text:
    span = node.span
    service = str(span.get("service") or "unknown")
    text = Text()
    text.append(service, style=f"bold {_colour(service)}")
    text.append(f"  {span.get('name', '?')}")
    text.append(f"  {node.duration_ms:.1f} ms", style="bold")
    text.append(f"  +{(node.start - origin) / 1e6:.1f} ms", style="dim")
    attributes = span.get("attributes") or {}
    shown = [f"{key.removeprefix('shinchoku.')}={attributes[key]}" for key in SHOWN_ATTRIBUTES if key in attributes]
    if shown:
        text.append("  " + " ".join(str(s)[:120] for s in shown), style="dim")
    if span.get("status") == "ERROR":
        text.append(f"  ✗ {span.get('status_description') or 'error'}", style="bold red")
        for event in span.get("events") or []:
            if event.get("name") == "exception":
                a = event.get("attributes") or {}
                text.append(f"  {a.get('exception.type', '')}: {a.get('exception.message', '')}", style="red")
    if node.orphan:
        text.append(f"  (parent {span.get('parent_span_id')} not found)", style="yellow")
    return text


def _add(tree: Tree, node: SpanNode, origin: int) -> None:
    branch = tree.add(_label(node, origin))
    for child in node.children:
        _add(branch, child, origin)


def render(spans: list[dict[str, Any]], title: str) -> Tree:
    roots = build_tree(spans)
    origin = min((n.start for n in roots), default=0)
    tree = Tree(Text.from_markup(title))
    for root in roots:
        _add(tree, root, origin)
    return tree


# ---------------------------------------------------------------------------------------------- the command


def _event(stack: Stack, event_id: str, token: str | None) -> dict[str, Any]:
    url = f"{stack.http['ingest'].rstrip('/')}/events/{event_id}"
    try:
        response = httpx.get(url, timeout=10.0, headers=bearer_headers(stack.data_dir, token))
    except httpx.TransportError as e:
        raise TraceError(f"the ingest service does not answer at {url} ({e}): is the stack running?") from None
    if response.status_code == 404:
        raise TraceError(
            f"ingest has no event {event_id}: it was never published, or is still queued (try again in a moment)"
        )
    if response.status_code != 200:
        raise TraceError(f"ingest answered {response.status_code} for {url}: {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body


def trace_command(
    event_id: Annotated[str, typer.Argument(help="The report's event_id")],
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="The stack's data directory (default ./var)")
    ] = None,
    trace_id: Annotated[
        str | None, typer.Option("--trace-id", help="Show this trace without asking ingest for the event")
    ] = None,
    jaeger_url: Annotated[
        str | None, typer.Option("--jaeger-url", envvar=JAEGER_URL_ENV, help="Read spans from Jaeger's query API")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for spans still being written")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the spans as JSON instead of a tree")] = False,
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token for ingest (default $SHINCHOKU_TOKEN, else minted from the data directory)"),
    ] = None,
) -> None:
    """Show the trace of one report, hop by hop: services, span durations and errors."""
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=160)  # piped or captured: do not wrap span lines at 80 columns
    directory = data_dir or DEFAULT_DATA_DIR
    try:
        event: dict[str, Any] = {}
        if trace_id is None:
            try:
                stack = Stack.load(directory)
            except StackNotFound as e:
                raise TraceError(str(e)) from None
            event = _event(stack, event_id, token)
            trace_id = event.get("trace_id")
            if not trace_id:
                raise TraceError(f"ingest kept no trace id for event {event_id} (tracing was off when it was decided)")
        wanted = trace_id.lower()
        if jaeger_url:
            url = jaeger_url
            spans = collect(lambda: spans_from_jaeger(url, wanted), wait)
            source = f"Jaeger at {jaeger_url}"
        else:
            spans_dir = directory / SPANS_DIR
            spans = collect(lambda: read_spans(spans_dir, wanted), wait)
            source = str(spans_dir)
        if not spans:
            raise TraceError(f"no spans of trace {wanted} in {source}")
    except TraceError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(1) from None

    if as_json:
        typer.echo(json.dumps(sorted(spans, key=lambda s: _int(s.get("start_ns"))), ensure_ascii=False, indent=2))
        return
    outcome = event.get("outcome")
    headline = f"[bold]trace {wanted}[/]  event {escape(event_id)}"
    if outcome:
        style = "green" if outcome == "admitted" else "red"
        headline += f"  [{style}]{escape(str(outcome))}[/]"
        if event.get("reason"):
            headline += f" [red]({escape(str(event['reason']))})[/]"
    console.print(render(spans, headline))
    starts = [_int(s.get("start_ns")) for s in spans]
    ends = [_int(s.get("end_ns")) for s in spans]
    errors = sum(1 for s in spans if s.get("status") == "ERROR")
    console.print(
        f"{len(spans)} spans from {', '.join(services_of(spans))}; "
        f"{(max(ends) - min(starts)) / 1e6:.1f} ms end to end; {errors} with errors; source: {escape(source)}"
    )


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
