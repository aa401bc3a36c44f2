"""The gates of DESIGN.md "Principals and access" on a small app: 401/403/404 as specified, and the route table.

Tokens are minted by the embedded issuer (`shinchoku.issuer`) and verified through its `file://` JWKS, the
path every service of `shinchoku up` takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from starlette.staticfiles import StaticFiles

from contracts.agencies import Agency
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_runtime.auth import (
    AccessRule,
    AuthSettings,
    Principal,
    Role,
    TokenVerifier,
    access_table,
    ensure,
    hide_from,
    install_auth,
    public,
    require,
)
from shinchoku_runtime.http import NotFound, install_error_handlers

Anyone = Annotated[Principal, Depends(public(note="open quarters: agency, secretariat"))]
Readers = Annotated[Principal, Depends(require(Role.agency, Role.secretariat, Role.operator))]
Operator = Annotated[Principal, Depends(require(Role.operator))]

EVENTS = {"e-mof": Agency.mof, "e-digital": Agency.digital}


def build_app(data_dir: Path) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_auth(app, TokenVerifier.from_settings(AuthSettings(_env_file=None), data_dir=data_dir))

    @app.get("/measures")
    def measures(principal: Anyone) -> dict[str, str]:
        return {"as": principal.label}

    @app.get("/rollups/{quarter}")
    def rollup(quarter: str, principal: Anyone) -> dict[str, str]:
        if quarter == "open":
            ensure(principal, {Role.agency, Role.secretariat}, "an open quarter")
        return {"quarter": quarter}

    @app.get("/events/{event_id}")
    def event(event_id: str, principal: Readers) -> dict[str, str]:
        owner = EVENTS.get(event_id)
        if owner is None:
            raise NotFound(f"no event {event_id}")
        hide_from(principal, owner, f"no event {event_id}")
        return {"event_id": event_id, "agency": owner}

    @app.get("/metrics", dependencies=[Depends(require(Role.operator))])
    def metrics() -> dict[str, int]:
        return {"up": 1}

    @app.get("/forgotten")
    def forgotten() -> dict[str, str]:
        return {"no": "gate"}

    admin = APIRouter(dependencies=[Depends(require(Role.secretariat))])

    @admin.get("/closes")
    def closes() -> list[str]:
        return []

    app.include_router(admin, prefix="/admin")
    return app


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedIssuer:
    return EmbeddedIssuer.prepare(tmp_path_factory.mktemp("var"))


def http_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


@pytest.fixture
async def client(issuer: EmbeddedIssuer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(build_app(issuer.data_dir)) as http:
        yield http


def bearer(issuer: EmbeddedIssuer, name: str, **mint: object) -> dict[str, str]:
    token = issuer.mint(principal_named(name, f"{name}-person"), **mint)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


async def test_public_routes_answer_anyone(client: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    assert (await client.get("/measures")).json() == {"as": "the public"}
    assert (await client.get("/measures", headers=bearer(issuer, "mof"))).json() == {"as": "agency mof"}
    assert (await client.get("/rollups/closed")).status_code == 200


async def test_missing_token_where_needed_is_401_with_a_challenge(client: httpx.AsyncClient) -> None:
    for path in ("/events/e-mof", "/metrics", "/rollups/open", "/admin/closes"):
        response = await client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == 'Bearer realm="shinchoku"'
        assert "needs a bearer token" in response.json()["detail"]


async def test_invalid_tokens_are_401_invalid_token_everywhere(
    client: httpx.AsyncClient, issuer: EmbeddedIssuer, tmp_path: Path
) -> None:
    other = EmbeddedIssuer.prepare(tmp_path)  # another stack's key
    cases = {
        "expired": bearer(issuer, "secretariat", ttl=timedelta(minutes=5), now=0),
        "another key": bearer(other, "secretariat"),
        "another audience": bearer(issuer, "secretariat", audience="reporting-elsewhere"),
        "garbage": {"Authorization": "Bearer not.a.token"},
        "another scheme": {"Authorization": "Basic c2VjcmV0YXJpYXQ6eA=="},
    }
    for what, headers in cases.items():
        for path in ("/measures", "/events/e-mof", "/metrics"):
            response = await client.get(path, headers=headers)
            assert response.status_code == 401, (what, path, response.text)
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith('Bearer realm="shinchoku", error="invalid_token"'), challenge
            assert set(response.json()) == {"detail"}


async def test_a_valid_token_without_the_right_is_403(client: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    response = await client.get("/metrics", headers=bearer(issuer, "secretariat"))
    assert response.status_code == 403
    assert response.json() == {"detail": "secretariat may not read /metrics (it is for operator)"}
    assert (await client.get("/metrics", headers=bearer(issuer, "operator"))).json() == {"up": 1}
    opened = await client.get("/rollups/open", headers=bearer(issuer, "operator"))
    assert opened.status_code == 403
    assert "an open quarter" in opened.json()["detail"]
    assert (await client.get("/rollups/open", headers=bearer(issuer, "cfa"))).status_code == 200
    assert (await client.get("/admin/closes", headers=bearer(issuer, "mof"))).status_code == 403
    assert (await client.get("/admin/closes", headers=bearer(issuer, "secretariat"))).status_code == 200


async def test_another_agencys_event_is_404_like_a_missing_one(
    client: httpx.AsyncClient, issuer: EmbeddedIssuer
) -> None:
    mof = bearer(issuer, "mof")
    assert (await client.get("/events/e-mof", headers=mof)).json() == {"event_id": "e-mof", "agency": "mof"}
    hidden, missing = (
        await client.get("/events/e-digital", headers=mof),
        await client.get("/events/e-none", headers=mof),
    )
    assert (hidden.status_code, missing.status_code) == (404, 404)
    assert hidden.json() == {"detail": "no event e-digital"}
    assert (await client.get("/events/e-digital", headers=bearer(issuer, "digital"))).status_code == 200
    assert (await client.get("/events/e-digital", headers=bearer(issuer, "secretariat"))).status_code == 200


async def test_keys_that_cannot_be_read_answer_503(tmp_path: Path, issuer: EmbeddedIssuer) -> None:
    async with http_client(build_app(tmp_path / "no-stack-here")) as http:
        assert (await http.get("/measures")).status_code == 200  # the public needs no keys
        response = await http.get("/measures", headers=bearer(issuer, "mof"))
        assert response.status_code == 503
        assert "cannot verify tokens" in response.json()["detail"]


def test_the_route_table_names_each_routes_gate(issuer: EmbeddedIssuer, tmp_path: Path) -> None:
    app = build_app(issuer.data_dir)
    app.mount("/static", StaticFiles(directory=tmp_path), name="static")
    table = {(entry.path, tuple(sorted(entry.methods))): entry for entry in access_table(app)}
    rules = {path: entry.rule for (path, _), entry in table.items()}
    assert rules["/measures"] == AccessRule("public", frozenset(Role), "open quarters: agency, secretariat"), (
        "the gate, not the principal dependency inside it"
    )
    assert rules["/events/{event_id}"] == AccessRule(
        "agency+secretariat+operator", frozenset({Role.agency, Role.secretariat, Role.operator})
    )
    assert rules["/metrics"] == AccessRule("operator", frozenset({Role.operator}))
    assert rules["/admin/closes"] == AccessRule("secretariat", frozenset({Role.secretariat}))
    assert rules["/openapi.json"] is not None
    assert rules["/openapi.json"].public
    ungated = sorted(path for path, rule in rules.items() if rule is None)
    assert ungated == ["/forgotten", "/static"]
    # A mount's rule can be given by path.
    extra = {"/static": AccessRule("public", frozenset(Role), "assets")}
    assert [e.path for e in access_table(app, extra) if e.rule is None] == ["/forgotten"]


def test_require_takes_token_roles_only() -> None:
    with pytest.raises(ValueError, match="public"):
        require(Role.public)
    with pytest.raises(ValueError, match="public"):
        require()
