"""No HTTP endpoint writes: every route of catalog, ingest and reporting answers GET (and HEAD) only.

Reports enter through NATS with an agency's credentials, never over HTTP. Checked three ways: each app's
route table (built in-process, so routes left out of the OpenAPI document count too), each running
service's OpenAPI document, and real HTTP against the running stack, where POST, PUT, PATCH and DELETE on
every route must answer 405 with an `Allow` header that names no writing method.

The exceptions: the dashboard's session (issue #16): `POST /dashboard/signin` and `/dashboard/signout`
set or clear the browser's session cookie and write nothing else; each refuses a post without the form's CSRF
token (403), which is what is checked here for them. And the secretariat's review form (issue #17),
`POST /dashboard/review`: it writes nothing over HTTP either, it publishes the signed-in secretariat's review
on NATS for ingest to decide; without a session or token it answers 401 (tests/security/test_dashboard_reviews.py
and services/reporting/tests/test_dashboard_review.py check the rest).
"""

from __future__ import annotations

import importlib.util
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from tests.faults.stack import RunningStack

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(f"{s}.__main__") is None for s in ("catalog", "ingest", "reporting")),
    reason="needs `python -m catalog`, `python -m ingest` and `python -m reporting`",
)

SERVICES = ("catalog", "ingest", "reporting")
READ = {"GET", "HEAD"}
WRITE = ("POST", "PUT", "PATCH", "DELETE")
#: Routes that change a browser's session, not data: (service, path) → the one writing method each takes.
SESSION_ROUTES = {
    ("reporting", "/dashboard/signin"): "POST",
    ("reporting", "/dashboard/signout"): "POST",
    ("reporting", "/dashboard/review"): "POST",
}
#: What an anonymous post without the form's CSRF token gets on each of them.
REFUSED_WITHOUT_FORM = {"/dashboard/review": 401}
SAMPLE_PARAMS = {
    "event_id": str(uuid.UUID(int=1)),
    "fiscal_year": "2024",
    "fy": "2024",
    "quarter": "3",
    "q": "3",
    "measure_id": "1-25",
    "id": "1-25",
    "agency": "mof",
    "section": "1",
}


def build_app(service: str, data_dir: Path) -> FastAPI:
    """The service's FastAPI app as `python -m {service}` builds it (its lifespan is not run: nothing connects)."""
    settings_values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": f"sqlite:///{data_dir / (service + '.sqlite')}",
        "nats_url": "nats://127.0.0.1:1",
    }
    if service == "catalog":
        from catalog.app import create_app as catalog_app
        from catalog.config import CatalogSettings

        return catalog_app(CatalogSettings(**settings_values))
    if service == "ingest":
        from ingest.app import create_app as ingest_app
        from ingest.config import IngestSettings

        return ingest_app(IngestSettings(**settings_values))
    from reporting.app import create_app as reporting_app
    from reporting.config import ReportingSettings

    app: FastAPI = reporting_app(ReportingSettings(**settings_values))
    return app


def route_table(routes: Sequence[BaseRoute], prefix: str = "") -> list[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route, mounts included (a mount answers under its path).

    FastAPI ≥ 0.16x keeps an included router as one entry holding the original router: walk into it.
    """
    out: list[tuple[str, set[str]]] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            out += route_table(included.routes, prefix + str(getattr(context, "prefix", "") or ""))
        elif isinstance(route, WebSocketRoute):
            out.append((prefix + route.path, {"WEBSOCKET"}))
        elif isinstance(route, Route):
            out.append((prefix + route.path, set(route.methods or ())))
        elif isinstance(route, Mount):
            out.append((prefix + route.path.rstrip("/") + "/{path}", {"MOUNT"}))
        else:
            out.append((prefix + str(getattr(route, "path", repr(route))), {"UNKNOWN"}))
    return out


def concrete(path: str) -> str:
    """A path template with sample values in its parameters."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLE_PARAMS.get(m.group(1), "x"), path)


@pytest.fixture
def stack(security_stack: RunningStack) -> RunningStack:
    return security_stack


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, set[str]]]]:
    base = tmp_path_factory.mktemp("apps")
    out = {}
    for service in SERVICES:
        (base / service).mkdir()
        out[service] = route_table(build_app(service, base / service).routes)
    return out


@pytest.mark.parametrize("service", SERVICES)
def test_route_tables_are_read_only(routes: dict[str, list[tuple[str, set[str]]]], service: str) -> None:
    writing = [
        (path, sorted(methods - READ))
        for path, methods in routes[service]
        if methods - READ - {"MOUNT"} - {SESSION_ROUTES.get((service, path), "")}
    ]
    assert writing == [], f"{service} has routes that accept more than GET/HEAD: {writing}"
    assert any(path == "/healthz" for path, _ in routes[service])


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_documents_only_reads(stack: RunningStack, service: str) -> None:
    document = httpx.get(f"{stack.url(service)}/openapi.json", timeout=10).json()
    operations = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    assert operations, f"{service} documents no operation"
    writing = sorted(
        (p, m)
        for p, m in operations
        if m not in READ | {"PARAMETERS", "SUMMARY", "DESCRIPTION"} and SESSION_ROUTES.get((service, p)) != m
    )
    assert writing == [], f"{service} documents writing operations: {writing}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_refuses_writes_over_http(
    stack: RunningStack, routes: dict[str, list[tuple[str, set[str]]]], service: str
) -> None:
    document = httpx.get(f"{stack.url(service)}/openapi.json", timeout=10).json()
    paths = {p for p, _ in routes[service]} | set(document["paths"])
    answers: dict[str, int] = {}
    wrong: list[str] = []
    with httpx.Client(base_url=stack.url(service), timeout=10) as http:
        for template in sorted(paths):
            path = concrete(template)
            for method in WRITE:
                response = http.request(method, path, json={"status": "completed"})
                answers[f"{method} {template}"] = response.status_code
                if SESSION_ROUTES.get((service, template)) == method:
                    # No CSRF token (nor session): refused, nothing signed in or out, no review sent.
                    if response.status_code != REFUSED_WITHOUT_FORM.get(template, 403):
                        wrong.append(f"{method} {path} without the form's CSRF token → {response.status_code}")
                    continue
                allow = {m.strip().upper() for m in response.headers.get("allow", "").split(",") if m.strip()}
                session_write = (
                    {SESSION_ROUTES[(service, template)]} if (service, template) in SESSION_ROUTES else set()
                )
                if response.status_code != 405 or allow - READ - session_write:
                    wrong.append(
                        f"{method} {path} → {response.status_code} (Allow: {sorted(allow)}) {response.text[:120]}"
                    )
    assert not wrong, f"{service}: writes not refused with 405:\n" + "\n".join(wrong)
    print(f"{service}: {len(answers)} write requests on {len(paths)} routes, all 405")  # noqa: T201
