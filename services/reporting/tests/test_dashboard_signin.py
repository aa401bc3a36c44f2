"""Signing in to the dashboard with a token: the session cookie, CSRF, the security headers, hidden characters.

The reporting app is built as `python -m reporting` builds it (its lifespan is not run: signing in needs no
store and no NATS); tokens come from an embedded issuer prepared in its data directory, as under
`shinchoku up`. The OpenID Connect sign-in is driven in Chromium in tests/browser/test_signin_browser.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from reporting.app import create_app
from reporting.config import ReportingSettings
from reporting.dashboard.session import CSRF_COOKIE, SESSION_COOKIE, Sessions
from reporting.dashboard.text import reveal
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_runtime.auth import Principal, Role

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def issuer(tmp_path: Path) -> EmbeddedIssuer:
    return EmbeddedIssuer.prepare(tmp_path)


@pytest.fixture
async def app(tmp_path: Path, issuer: EmbeddedIssuer) -> FastAPI:
    settings = ReportingSettings(
        _env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}", nats_url="nats://x:1"
    )
    app: FastAPI = create_app(settings)
    return app


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client keeping cookies, as a browser does (over https, so that the cookies are Secure)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://dashboard.test") as client:
        yield client


async def csrf_of(browser: httpx.AsyncClient) -> str:
    page = await browser.get("/dashboard/signin")
    assert page.status_code == 200
    found = CSRF_FIELD.search(page.text)
    assert found is not None
    return found.group(1)


async def test_a_token_signs_in_with_a_strict_cookie(browser: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    csrf = await csrf_of(browser)
    token = issuer.mint(principal_named("mof", "tanaka"))
    answer = await browser.post(
        "/dashboard/signin", data={"csrf": csrf, "token": token, "next": "/dashboard?fy=2024&q=3"}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard?fy=2024&q=3"
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=lax", "path=/"} <= flags
    assert token not in cookie, "the session keeps the principal, not the token"
    page = await browser.get("/dashboard/signin")
    assert "agency mof" in page.text
    assert "tanaka" in page.text


async def test_the_sign_in_form_refuses_a_post_without_its_csrf_token(
    browser: httpx.AsyncClient, issuer: EmbeddedIssuer
) -> None:
    """A page of another site that posts a token (or a session fixation) to the dashboard is refused."""
    token = issuer.mint(principal_named("secretariat", "x"))
    await csrf_of(browser)  # the browser has its CSRF cookie; the attacker's form cannot read it
    missing = await browser.post("/dashboard/signin", data={"token": token})
    assert missing.status_code == 403
    wrong = await browser.post("/dashboard/signin", data={"token": token, "csrf": "x" * 43})
    assert wrong.status_code == 403
    csrf = await csrf_of(browser)
    elsewhere = await browser.post(
        "/dashboard/signin", data={"token": token, "csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status_code == 403
    assert "another site" in elsewhere.text
    for answer in (missing, wrong, elsewhere):
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    signout = await browser.post("/dashboard/signout", data={})
    assert signout.status_code == 403


async def test_invalid_tokens_do_not_sign_in(browser: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    expired = issuer.mint(principal_named("mof", "x"), now=time.time() - 7200)
    for token, status in ((expired, 401), ("not.a.token", 401), ("", 401)):
        csrf = await csrf_of(browser)
        answer = await browser.post("/dashboard/signin", data={"csrf": csrf, "token": token})
        assert answer.status_code == status, answer.text
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


async def test_after_signing_in_goes_nowhere_but_this_site(browser: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    token = issuer.mint(principal_named("secretariat", "x"))
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        csrf = await csrf_of(browser)
        answer = await browser.post("/dashboard/signin", data={"csrf": csrf, "token": token, "next": target})
        assert answer.headers["location"] == "/dashboard"


async def test_signing_out_ends_the_session(browser: httpx.AsyncClient, issuer: EmbeddedIssuer) -> None:
    csrf = await csrf_of(browser)
    await browser.post("/dashboard/signin", data={"csrf": csrf, "token": issuer.mint(principal_named("mof", "x"))})
    assert browser.cookies.get(SESSION_COOKIE)
    answer = await browser.post("/dashboard/signout", data={"csrf": browser.cookies[CSRF_COOKIE]})
    assert answer.status_code == 303
    assert not browser.cookies.get(SESSION_COOKIE)


async def test_pages_carry_a_content_security_policy(browser: httpx.AsyncClient) -> None:
    page = await browser.get("/dashboard/signin")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy.split("style-src-attr")[0], "no inline script or style element"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text, "no inline script (the fragment's token is read by the static script)"


def test_a_forged_or_expired_session_is_the_public() -> None:
    sessions = Sessions(b"k" * 32)
    mof = Principal(Role.agency, principal_named("mof", "x").agency, "x")
    cookie = sessions.encode(mof, expires_at=time.time() + 60)
    assert sessions.decode(cookie) == mof
    payload, _, mac = cookie.partition(".")
    forged = sessions.encode(Principal(Role.secretariat, None, "x"), expires_at=time.time() + 60).split(".")[0]
    assert sessions.decode(f"{forged}.{mac}") is None
    assert Sessions(b"other" * 8).decode(cookie) is None
    assert sessions.decode(sessions.encode(mof, expires_at=time.time() - 1)) is None
    assert sessions.decode(payload) is None
    flow = sessions.seal({"state": "s"}, purpose="oidc-flow", seconds=60)
    assert sessions.decode(flow) is None, "a sealed flow is no session"
    assert sessions.unseal(cookie, purpose="oidc-flow") is None


@pytest.mark.parametrize(
    ("note", "marks"),
    [
        ("進捗 50%\u202e%001 済了完", ["U+202E"]),  # right-to-left override: shows "完了済 100%"
        ("承認\u200b済み", ["U+200B"]),  # zero-width space inside a word
        ("a\u2066b\u2069c\u200fd\ufeff", ["U+2066", "U+2069", "U+200F", "U+FEFF"]),
        ("<script>alert(1)</script>", []),
    ],
)
def test_invisible_characters_are_shown_and_nothing_is_markup(note: str, marks: list[str]) -> None:
    html = str(reveal(note))
    assert re.findall(r"⟦(U\+[0-9A-F]{4})⟧", html) == marks
    assert not any(ch in html for ch in "\u202e\u200b\u2066\u2069\u200f\ufeff")
    assert "<script>" not in html
    assert html.startswith("<bdi")
