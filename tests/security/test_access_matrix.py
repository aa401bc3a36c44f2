"""The access table of DESIGN.md "Principals and access", route by route, principal by principal, on a real stack.

The routes come from each service's own route table (`access_table` of the app `python -m {service}` builds),
so a route added without a gate, or without a line in `EXPECTED` below saying what each principal gets, fails
`test_every_route_has_a_gate_and_an_expectation`. Each route is then called over HTTP on the running stack by
every caller: the public, agency mof, agency digital, the secretariat, the operator, and three tokens that must
not verify (expired, signed by another key under the issuer's `kid`, for another audience). The status must be
the table's, and nothing of the other agency (its event ids, payload, note, reporter name) may be in a body an
agency reads where DESIGN.md says "its own only"; notes and reporter names never reach the public or the
operator.

The data: each agency publishes one admitted report (with a note and a reporter name that appear nowhere else)
and one rejected report (an unknown measure, its payload marked) in the current quarter (open), and one report
in FY2024Q1, which the secretariat closes (`shinchoku close`): the public reads that quarter, without names.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from contracts.periods import FiscalQuarter
from shinchoku.cli import app
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_runtime.auth import access_table
from tests.faults.stack import RunningStack, wait_until
from tests.security.test_http_read_only import build_app

SERVICES = ("catalog", "ingest", "reporting")
AGENCIES = ("mof", "digital")
VALID = ("public", "mof", "digital", "secretariat", "operator")
INVALID = ("expired", "other-key", "other-audience")
CALLERS = VALID + INVALID


@dataclass
class Published:
    """What one agency published: ids and the strings only it wrote."""

    agency: str
    measure_id: str
    admitted: str
    rejected: str
    note: str
    reporter: str
    payload_mark: str

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.admitted, self.rejected, self.note, self.reporter, self.payload_mark)


CLOSED = FiscalQuarter(2024, 1)


@dataclass
class World:
    stack: RunningStack
    tokens: dict[str, str | None]
    data: dict[str, Published]
    quarter: FiscalQuarter
    #: Per agency, the note and reporter of its report in the closed quarter.
    closed_names: dict[str, tuple[str, str]]
    log: list[str] = field(default_factory=list)

    def headers(self, caller: str) -> dict[str, str]:
        token = self.tokens[caller]
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, service: str, path: str, caller: str) -> httpx.Response:
        return httpx.get(self.stack.url(service) + path, headers=self.headers(caller), timeout=30)


def _tokens(data_dir: Path) -> dict[str, str | None]:
    issuer = EmbeddedIssuer.load(data_dir)
    tokens: dict[str, str | None] = {"public": None}
    for name in ("mof", "digital", "secretariat", "operator"):
        tokens[name] = issuer.mint(principal_named(name, f"matrix-{name}"), ttl=timedelta(minutes=30))
    tokens["expired"] = issuer.mint(
        principal_named("secretariat", "matrix"), ttl=timedelta(minutes=5), now=time.time() - 3600
    )
    tokens["other-audience"] = issuer.mint(
        principal_named("secretariat", "matrix"), ttl=timedelta(minutes=30), audience="another-api"
    )
    # Another key claiming the issuer's own kid: only the signature can tell.
    impostor = ECKey.generate_key("P-256", {"kid": issuer.kid}, private=True)
    claims = {
        "iss": "urn:shinchoku:embedded",
        "aud": "shinchoku",
        "sub": "matrix",
        "iat": int(time.time()),
        "exp": int(time.time()) + 1800,
        "role": "secretariat",
    }
    tokens["other-key"] = jwt.encode({"alg": "ES256", "kid": issuer.kid}, claims, impostor, ["ES256"])
    return tokens


def _sole_lead(stack: RunningStack, agency: str) -> str:
    items = httpx.get(f"{stack.url('catalog')}/measures", params={"agency": agency, "limit": 1000}, timeout=10)
    return str(next(m["id"] for m in items.json()["items"] if m["lead_agencies"] == [agency]))


async def _publish(stack: RunningStack, agency: str, messages: list[dict[str, object]]) -> None:
    nc = await nats.connect(
        stack.nats_url, user=agency, password=stack.password(agency), inbox_prefix=f"_INBOX_{agency}"
    )
    try:
        js = nc.jetstream()
        for message in messages:
            await js.publish(f"status.{agency}.{message['measure_id']}", json.dumps(message).encode())
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def world(security_stack: RunningStack) -> World:
    stack = security_stack
    now = datetime.now(UTC)
    quarter = FiscalQuarter.of_moment(now)
    tokens = _tokens(stack.data_dir)
    data: dict[str, Published] = {}
    closed_names: dict[str, tuple[str, str]] = {}
    for agency in AGENCIES:
        tag = uuid.uuid4().hex[:10]
        published = Published(
            agency=agency,
            measure_id=_sole_lead(stack, agency),
            admitted=str(uuid.uuid4()),
            rejected=str(uuid.uuid4()),
            note=f"note-{agency}-{tag}",
            reporter=f"Reporter {agency.upper()} {tag}",
            payload_mark=f"payload-{agency}-{tag}",
        )
        report = {
            "event_id": published.admitted,
            "measure_id": published.measure_id,
            "agency": agency,
            "fiscal_year": quarter.fiscal_year,
            "quarter": quarter.quarter,
            "status": "on_track",
            "note": published.note,
            "reporter": published.reporter,
            "reported_at": now.isoformat(),
        }
        refused = {**report, "event_id": published.rejected, "measure_id": "9-999", "note": published.payload_mark}
        # A note a spreadsheet would run as a formula: every CSV export must escape it.
        # (No quotes: the JSON bodies are searched for it as it is.)
        names = (f"=HYPERLINK(evil.example/{tag}) closed-note-{agency}", f"Closed Reporter {agency} {tag}")
        old = {
            **report,
            "event_id": str(uuid.uuid4()),
            "fiscal_year": CLOSED.fiscal_year,
            "quarter": CLOSED.quarter,
            "note": names[0],
            "reporter": names[1],
        }
        asyncio.run(_publish(stack, agency, [report, refused, old]))
        data[agency] = published
        closed_names[agency] = names
    w = World(stack=stack, tokens=tokens, data=data, quarter=quarter, closed_names=closed_names)

    def decided() -> bool:
        return all(
            w.get("ingest", f"/events/{p.admitted}", "secretariat").status_code == 200
            and w.get("ingest", f"/events/{p.rejected}", "secretariat").status_code == 200
            for p in data.values()
        )

    wait_until(decided, 60, "ingest's decisions on the published reports", interval=0.3)
    q = f"/rollups/{quarter.fiscal_year}/{quarter.quarter}/measures?limit=1000"

    def in_rollup() -> bool:
        body = w.get("reporting", q, "secretariat").text
        return all(p.admitted in body for p in data.values())

    wait_until(in_rollup, 60, "reporting's rollup with both reports", interval=0.3)

    def in_closed() -> bool:
        path = f"/rollups/{CLOSED.fiscal_year}/{CLOSED.quarter}/measures?limit=1000"
        body = w.get("reporting", path, "secretariat").text
        return all(note in body for note, _ in closed_names.values())

    wait_until(in_closed, 60, "reporting's FY2024Q1 with both reports", interval=0.3)
    closing = CliRunner().invoke(
        app, ["close", str(CLOSED.fiscal_year), str(CLOSED.quarter), "--wait", "--data-dir", str(stack.data_dir)]
    )
    assert closing.exit_code == 0 or "already_closed" in closing.output, closing.output
    path = f"/rollups/{CLOSED.fiscal_year}/{CLOSED.quarter}"
    wait_until(lambda: w.get("reporting", path, "public").status_code == 200, 60, "FY2024Q1 closed for the public")
    return w


# --- what each caller gets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request and the status each valid caller gets (invalid tokens: 401 everywhere)."""

    path: str
    status: dict[str, int]
    #: Callers that may read only their own agency's items: the other agency's strings must not be in the body.
    own_only: tuple[str, ...] = ()
    #: Callers that must never see notes or reporter names in the body.
    no_names: tuple[str, ...] = ()
    #: Callers that must see no payload (rejected bytes, the rejection's message).
    no_payload: tuple[str, ...] = ()
    #: What a token that does not verify gets (401, except on FastAPI's own documentation pages, which read
    #: no header and carry no data).
    invalid: int = 401


EVERYONE = dict.fromkeys(VALID, 200)
OPERATOR_ONLY = {"public": 401, "mof": 403, "digital": 403, "secretariat": 403, "operator": 200}
LIVE = {"public": 401, "mof": 200, "digital": 200, "secretariat": 200, "operator": 403}
TOKEN_READERS = {"public": 401, "mof": 200, "digital": 200, "secretariat": 200, "operator": 200}
DOCS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
OPEN = ("/healthz", "/livez", *DOCS)


def expected(service: str, route: str, w: World) -> list[Case] | None:
    """The DESIGN.md table for one route of one service (None: the test does not know this route)."""
    mof, digital = w.data["mof"], w.data["digital"]
    fy, q = w.quarter.fiscal_year, w.quarter.quarter
    cfy, cq = CLOSED.fiscal_year, CLOSED.quarter
    if route == "/metrics":
        return [Case("/metrics", OPERATOR_ONLY)]
    if route in DOCS:
        return [Case(route, EVERYONE, invalid=200)]
    if route in OPEN:
        return [Case(route, EVERYONE)]
    if service == "catalog":
        # The plan is public: every catalog route (its documents, /asyncapi.json) answers anyone.
        samples = {"/measures/{measure_id}": "/measures/1-25"}
        return [Case(samples.get(route, route), EVERYONE)]
    if service == "ingest":
        if route == "/events/{event_id}":
            return [
                Case(f"/events/{mof.admitted}", {**TOKEN_READERS, "digital": 404}, no_names=("operator",)),
                Case(f"/events/{digital.rejected}", {**TOKEN_READERS, "mof": 404}, no_payload=("operator",)),
                Case(f"/events/{digital.rejected}?agency=digital", {**TOKEN_READERS, "mof": 404}),
            ]
        if route == "/rejections":
            return [
                Case("/rejections?limit=1000", TOKEN_READERS, own_only=AGENCIES, no_payload=("operator",)),
                Case("/rejections?agency=digital", {**TOKEN_READERS, "mof": 403}, own_only=AGENCIES),
            ]
        return None
    if service == "reporting":
        names = ("public", "operator")
        table = {
            "/rollups/{fiscal_year}/{quarter}": [
                Case(f"/rollups/{cfy}/{cq}", EVERYONE),
                Case(f"/rollups/{cfy}/{cq}?format=csv", EVERYONE),
                Case(f"/rollups/{cfy}/{cq}?revision=1", EVERYONE),
                Case(f"/rollups/{cfy}/{cq}?as_of=2024-08-01T00:00:00%2B09:00", LIVE),
                Case(f"/rollups/{fy}/{q}", LIVE),
                Case(f"/rollups/{fy}/{q}?format=csv", LIVE),
                Case(f"/rollups/{fy}/{q}?as_of=2025-01-01T00:00:00%2B09:00", LIVE),
            ],
            # Published revisions: a closed quarter's, public like its rollup.
            "/rollups/{fiscal_year}/{quarter}/revisions": [
                Case(f"/rollups/{cfy}/{cq}/revisions", EVERYONE),
                Case(f"/rollups/{fy}/{q}/revisions", LIVE),
            ],
            "/rollups/{fiscal_year}/{quarter}/measures": [
                Case(f"/rollups/{cfy}/{cq}/measures?limit=1000", EVERYONE, no_names=names),
                Case(f"/rollups/{cfy}/{cq}/measures?agency=mof&format=csv", EVERYONE, no_names=names),
                Case(f"/rollups/{fy}/{q}/measures?limit=1000", LIVE),
                Case(f"/rollups/{fy}/{q}/measures?agency=mof&format=csv", LIVE),
            ],
            # The public and the operator get the closed quarters only: none of the current quarter's names.
            "/rollups/{fiscal_year}": [
                Case(f"/rollups/{fy}", EVERYONE, no_names=names),
                Case(f"/rollups/{cfy}", EVERYONE, no_names=names),
            ],
            "/measures/{measure_id}/history": [
                Case(f"/measures/{mof.measure_id}/history", EVERYONE, no_names=names),
                Case(f"/measures/{digital.measure_id}/history?format=csv", EVERYONE, no_names=names),
            ],
            # The dashboard shows what the API shows its caller: the current quarter is open, FY2024Q1 closed
            # (and the latest quarter the public may read, so its landing page).
            "/": [Case("/", EVERYONE, no_names=names)],
            "/dashboard": [
                Case(f"/dashboard?fy={fy}&q={q}", LIVE),
                Case(f"/dashboard?fy={cfy}&q={cq}", EVERYONE, no_names=names),
            ],
            "/dashboard/live": [Case(f"/dashboard/live?fy={fy}&q={q}", LIVE)],
            "/dashboard/measures/{measure_id}": [
                Case(f"/dashboard/measures/{mof.measure_id}?fy={fy}&q={q}", LIVE, no_names=names),
                Case(f"/dashboard/measures/{mof.measure_id}?fy={cfy}&q={cq}", EVERYONE, no_names=names),
            ],
            "/dashboard/static/{name}": [Case("/dashboard/static/dashboard.css", EVERYONE)],
            # Signing in: the page for anyone; no identity provider in the embedded default; a callback that
            # no sign-in started here is refused.
            "/dashboard/signin": [Case("/dashboard/signin", EVERYONE)],
            "/dashboard/auth/login": [Case("/dashboard/auth/login", dict.fromkeys(VALID, 404))],
            "/dashboard/auth/callback": [Case("/dashboard/auth/callback?code=x&state=y", dict.fromkeys(VALID, 400))],
            "/dashboard/alerts": [
                Case("/dashboard/alerts", {**LIVE, "operator": 403}, own_only=AGENCIES),
                Case("/dashboard/alerts?agency=digital", {**LIVE, "mof": 403, "operator": 403}),
            ],
            "/alerts": [
                Case("/alerts", {**LIVE, "operator": 403}, own_only=AGENCIES),
                Case("/alerts?agency=digital", {**LIVE, "mof": 403, "operator": 403}),
            ],
        }
        return table.get(route)
    return None


def _tables() -> dict[str, list[tuple[str, bool]]]:
    """Each service's routes (GET ones) with whether each has exactly one gate."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for service in SERVICES:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            app = build_app(service, Path(tmp))
            out[service] = [
                (r.path, r.rule is not None) for r in access_table(app) if not r.methods or "GET" in r.methods
            ]
    return out


def test_every_route_has_a_gate_and_an_expectation(world: World) -> None:
    missing_gate = []
    missing_expectation = []
    for service, routes in _tables().items():
        for path, gated in routes:
            if not gated:
                missing_gate.append(f"{service} {path}")
            if expected(service, path, world) is None:
                missing_expectation.append(f"{service} {path}")
    assert not missing_gate, f"routes without exactly one access gate: {missing_gate}"
    assert not missing_expectation, f"routes this test has no DESIGN.md expectation for: {missing_expectation}"


def _cases() -> list[tuple[str, str]]:
    return [(service, path) for service, routes in _tables().items() for path, _ in routes]


@pytest.mark.parametrize(("service", "route"), _cases())
def test_each_caller_gets_what_the_table_says(world: World, service: str, route: str) -> None:
    cases = expected(service, route, world)
    assert cases is not None, f"no expectation for {service} {route}"
    wrong: list[str] = []
    for case in cases:
        for caller in CALLERS:
            response = world.get(service, case.path, caller)
            want = case.invalid if caller in INVALID else case.status[caller]
            if response.status_code != want:
                wrong.append(
                    f"{caller}: {case.path} answered {response.status_code}, not {want}: {response.text[:160]}"
                )
                continue
            if caller in INVALID and want == 401:
                challenge = response.headers.get("www-authenticate", "")
                if 'error="invalid_token"' not in challenge:
                    wrong.append(f"{caller}: {case.path} 401 without error=invalid_token ({challenge!r})")
                continue
            if caller in INVALID:
                continue
            page = service == "reporting" and (case.path == "/" or case.path.startswith("/dashboard"))
            if want == 401 and not page and "bearer" not in response.headers.get("www-authenticate", "").lower():
                wrong.append(f"{caller}: {case.path} 401 without a Bearer challenge")
            body = response.text
            if want >= 400:
                for published in world.data.values():
                    # What the caller named in the path itself may come back (a 404 says which id it lacks).
                    leaked = [s for s in published.secrets if s in body and s not in case.path]
                    if leaked:
                        wrong.append(f"{caller}: {case.path} {want} body carries {leaked}")
                continue
            if caller in case.own_only:
                other = world.data["digital" if caller == "mof" else "mof"]
                leaked = [s for s in other.secrets if s in body]
                if leaked:
                    wrong.append(f"{caller}: {case.path} shows another agency's {leaked}")
            if caller in case.no_names:
                for agency, published in world.data.items():
                    personal = (published.note, published.reporter, *world.closed_names[agency])
                    leaked = [s for s in personal if s in body]
                    if leaked:
                        wrong.append(f"{caller}: {case.path} shows notes or names {leaked}")
            if caller in case.no_payload:
                for published in world.data.values():
                    if published.payload_mark in body or '"payload_b64":"' in body:
                        wrong.append(f"{caller}: {case.path} shows a rejected payload")
    assert not wrong, "\n".join(wrong)


def test_agencies_read_their_own_and_the_secretariat_everything(world: World) -> None:
    """The positive side of the matrix: what is hidden from others is there for its owner and the secretariat."""
    mof, digital = world.data["mof"], world.data["digital"]
    own = world.get("ingest", "/rejections?limit=1000", "mof").json()["items"]
    assert {i["agency"] for i in own} == {"mof"}
    assert mof.rejected in {i["event_id"] for i in own}
    everything = world.get("ingest", "/rejections?limit=1000", "secretariat").json()["items"]
    assert {mof.rejected, digital.rejected} <= {i["event_id"] for i in everything}
    assert any(i["payload_b64"] for i in everything)
    operator = world.get("ingest", "/rejections?limit=1000", "operator").json()["items"]
    assert {mof.rejected, digital.rejected} <= {i["event_id"] for i in operator}
    assert all(i["payload_b64"] is None and i["message"] == "" for i in operator)
    seen = world.get("ingest", f"/events/{mof.admitted}", "operator").json()
    # The stack runs with OTEL_SDK_DISABLED: the trace id is there as a field, null.
    assert seen["outcome"] == "admitted"
    assert "trace_id" in seen
    assert seen["message"] is None
    fy, q = world.quarter.fiscal_year, world.quarter.quarter
    rows = world.get("reporting", f"/rollups/{fy}/{q}/measures?limit=1000", "digital").text
    assert mof.note in rows, "agencies read the open quarter's notes"
    assert mof.reporter in rows, "agencies read the open quarter's reporter names"
    closed = f"/rollups/{CLOSED.fiscal_year}/{CLOSED.quarter}/measures?limit=1000"
    note, reporter = world.closed_names["mof"]
    as_secretariat = world.get("reporting", closed, "secretariat").text
    assert note in as_secretariat
    assert reporter in as_secretariat
    public = world.get("reporting", closed, "public").json()
    reported = [lead for item in public["items"] for lead in item["leads"] if lead["event_id"]]
    assert len(reported) >= 2, "the public reads the closed quarter's reports"
    assert all(lead["note"] is None and lead["reporter"] is None for lead in reported)
    history = world.get("reporting", f"/measures/{mof.measure_id}/history", "public").json()
    assert [i["label"] for i in history["items"]] == [CLOSED.label], "the public's history: closed quarters only"


def _csv_routes() -> set[tuple[str, str]]:
    """Every route that answers CSV (a `format` query parameter), from the apps' OpenAPI documents."""
    out = set()
    for service in SERVICES:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            spec = build_app(service, Path(tmp)).openapi()
        for path, operations in spec["paths"].items():
            parameters = operations.get("get", {}).get("parameters", [])
            if any(p["name"] == "format" and p["in"] == "query" for p in parameters):
                out.add((service, path))
    return out


def test_no_csv_cell_starts_a_formula(world: World) -> None:
    """Notes a spreadsheet would run (`=HYPERLINK(…)`) are exported escaped by every CSV route (OWASP's leading
    apostrophe), for each principal who may read them."""
    cfy, cq = CLOSED.fiscal_year, CLOSED.quarter
    mof = world.data["mof"]
    exports = {
        ("catalog", "/measures"): "/measures?format=csv",
        ("reporting", "/rollups/{fiscal_year}/{quarter}"): f"/rollups/{cfy}/{cq}?format=csv",
        (
            "reporting",
            "/rollups/{fiscal_year}/{quarter}/measures",
        ): f"/rollups/{cfy}/{cq}/measures?agency=mof&format=csv",
        ("reporting", "/rollups/{fiscal_year}"): f"/rollups/{cfy}?format=csv",
        ("reporting", "/measures/{measure_id}/history"): f"/measures/{mof.measure_id}/history?format=csv",
    }
    assert _csv_routes() == set(exports), "a CSV route this test does not read"
    note = world.closed_names["mof"][0]
    seen_note = False
    for (service, _), path in exports.items():
        answer = world.get(service, path, "secretariat")
        assert answer.status_code == 200, (path, answer.text[:200])
        rows = list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))
        assert len(rows) > 1, path
        for row in rows:
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), f"{path}: {cell[:60]!r}"
                seen_note = seen_note or cell == "'" + note
    assert seen_note, "the formula-like note was exported (escaped)"
