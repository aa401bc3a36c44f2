"""Signing in to the dashboard: with a token (the embedded default), or with a deployment's OpenID Connect provider.

- `GET /dashboard/signin`: the sign-in page. It takes a token (from `shinchoku token`, or carried in the
  link's fragment `#token=…` that `shinchoku up` prints: a fragment never reaches a server log or a
  `Referer`, and the page's script submits it), and links to the provider's sign-in when one is configured.
- `POST /dashboard/signin`: the token is verified like any bearer token (issuer, audience, expiry, signature),
  then the principal it names is kept in the session cookie (`session`). CSRF: a double-submitted token and
  the `Origin` header.
- `GET /dashboard/auth/login` → the provider's authorization endpoint (authorization-code flow, PKCE S256,
  `state` and `nonce`), `GET /dashboard/auth/callback` ← its answer: the code is exchanged with the PKCE
  verifier (authlib's OAuth 2 client), the ID token verified (signature by the issuer's JWKS, `iss`, `aud` = the
  client id, `exp`, and its `nonce` equal to this sign-in's: a token minted for another sign-in or replayed
  is refused), the access token verified as a bearer token, the session set. The
  flow's state, verifier and nonce travel in a short-lived signed cookie, so any replica can finish it.
- `POST /dashboard/signout`: ends the session (CSRF-checked too).

Settings (`SHINCHOKU_REPORTING_DASHBOARD_*`): `OIDC_CLIENT_ID` (enables the provider's sign-in; the provider is
`SHINCHOKU_AUTH_ISSUER`), `OIDC_CLIENT_SECRET` (for a confidential client; a public one relies on PKCE),
`OIDC_SCOPE`, `PUBLIC_URL` (the dashboard's address as browsers reach it, for the redirect URI).
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from reporting import access
from reporting.access import DashboardReader
from reporting.dashboard.i18n import TEXT, Lang
from reporting.dashboard.session import Sessions, csrf_problem, csrf_token, keep_csrf
from shinchoku_runtime.auth import InvalidToken, KeysUnavailable, NoPrincipal, Principal, TokenVerifier
from shinchoku_runtime.auth.jwks import read_document
from shinchoku_runtime.auth.settings import insecure_url

router = APIRouter(include_in_schema=False)

FLOW_COOKIE = "shinchoku_oidc"
FLOW_SECONDS = 600
MAX_FORM_BYTES = 64 * 1024


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.dashboard_sessions
    return sessions


def viewer(principal: DashboardReader) -> Principal:
    """Who looks at the dashboard: a bearer token's principal, else the session's (the gate reads both), else
    the public."""
    return principal


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never `//host` or a URL), else the overview."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/dashboard"


def oidc_client_id(request: Request) -> str | None:
    settings = request.app.state.settings
    auth = request.app.state.auth_settings
    client_id: str | None = getattr(settings, "dashboard_oidc_client_id", None)
    return client_id if client_id and auth.mode == "oidc" else None


async def read_form(request: Request) -> dict[str, str]:
    """A form post's fields (the first value of each); none for a body over MAX_FORM_BYTES."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items() if v}


def _page(request: Request, *, status_code: int = 200, message: str | None = None, token: str = "") -> Response:
    from reporting.dashboard.routes import render  # routes imports this module

    lang: Lang = "en" if request.query_params.get("lang") == "en" else "ja"
    context: dict[str, Any] = {
        "lang": lang,
        "t": TEXT[lang],
        "message": message,
        "next": safe_next(request.query_params.get("next")),
        "provider": oidc_client_id(request) is not None,
        "lang_toggle": "",
        "token": token,
    }
    return render(request, "signin.html", context, status_code=status_code)


@router.get("/dashboard/signin", dependencies=[Depends(access.DASHBOARD)])
async def signin_page(request: Request) -> Response:
    """The sign-in page: a token field (and its link's fragment), and the provider's sign-in when configured."""
    return _page(request)


@router.post("/dashboard/signin", dependencies=[Depends(access.DASHBOARD)])
async def signin_with_token(request: Request) -> Response:
    """Verify a pasted token and keep its principal in the session."""
    form = await read_form(request)
    problem = csrf_problem(request, form.get("csrf"))
    if problem:
        return _page(request, status_code=403, message=problem)
    token = form.get("token", "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        claims = await verifier.claims(token)
        principal = await verifier.verify(token)
    except InvalidToken as e:
        return _page(request, status_code=401, message=f"the token is not valid: {e}")
    except NoPrincipal as e:
        return _page(request, status_code=403, message=str(e))
    except KeysUnavailable as e:
        return _page(request, status_code=503, message=str(e))
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    exp = claims.get("exp")
    sessions = sessions_of(request)
    sessions.sign_in(response, request, principal, token_exp=float(exp) if exp else None)
    # The secretariat's reviews from the measure page go out with this very token (`reporting.dashboard.review`).
    sessions.keep_review_token(response, request, principal, token, token_exp=float(exp) if exp else None)
    return response


@router.post("/dashboard/signout", dependencies=[Depends(access.DASHBOARD)])
async def signout(request: Request) -> Response:
    """End the session."""
    form = await read_form(request)
    problem = csrf_problem(request, form.get("csrf"))
    if problem:
        return _page(request, status_code=403, message=problem)
    response = RedirectResponse("/dashboard", status_code=303)
    sessions_of(request).sign_out(response, request)
    return response


# -- OpenID Connect: the authorization-code flow with PKCE ------------------------------------------------------


async def _endpoints(request: Request) -> dict[str, str]:
    """The provider's authorization and token endpoints, from its discovery document (kept once read)."""
    cached: dict[str, str] | None = getattr(request.app.state, "oidc_endpoints", None)
    if cached:
        return cached
    auth = request.app.state.auth_settings
    issuer = str(auth.issuer).rstrip("/")
    document = await read_document(issuer + "/.well-known/openid-configuration", auth.http_timeout)
    if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != issuer:
        raise ValueError(f"the discovery document of {issuer} names another issuer")
    endpoints = {k: document.get(k) for k in ("authorization_endpoint", "token_endpoint")}
    for name, url in endpoints.items():
        problem = insecure_url(url, f"the provider's {name}") if isinstance(url, str) else f"no {name}"
        if problem:
            raise ValueError(problem)
    request.app.state.oidc_endpoints = endpoints
    return {k: str(v) for k, v in endpoints.items()}


def _redirect_uri(request: Request) -> str:
    public: str | None = getattr(request.app.state.settings, "dashboard_public_url", None)
    base = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return base + "/dashboard/auth/callback"


def _client(request: Request) -> AsyncOAuth2Client:
    settings = request.app.state.settings
    secret = getattr(settings, "dashboard_oidc_client_secret", None)
    return AsyncOAuth2Client(
        client_id=oidc_client_id(request),
        client_secret=secret.get_secret_value() if secret else None,
        scope=settings.dashboard_oidc_scope,
        redirect_uri=_redirect_uri(request),
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        timeout=request.app.state.auth_settings.http_timeout,
    )


@router.get("/dashboard/auth/login", dependencies=[Depends(access.DASHBOARD)])
async def oidc_login(request: Request) -> Response:
    """Off to the provider's sign-in (authorization-code flow with PKCE S256, state and nonce)."""
    if oidc_client_id(request) is None:
        return _page(request, status_code=404, message="no identity provider is configured for the dashboard")
    try:
        endpoints = await _endpoints(request)
    except (OSError, ValueError) as e:
        return _page(request, status_code=502, message=f"the identity provider does not answer: {e}")
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(24)
    nonce = secrets.token_urlsafe(24)
    async with _client(request) as client:
        url, _ = client.create_authorization_url(
            endpoints["authorization_endpoint"],
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
    sessions = sessions_of(request)
    flow = {"state": state, "verifier": verifier, "nonce": nonce, "next": safe_next(request.query_params.get("next"))}
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        FLOW_COOKIE,
        sessions.seal(flow, purpose="oidc-flow", seconds=FLOW_SECONDS),
        max_age=FLOW_SECONDS,
        path="/dashboard/auth",
        secure=sessions.is_secure(request),
        httponly=True,
        samesite="lax",
    )
    return response


async def _id_token_refusal(
    verifier: TokenVerifier, id_token: object, access_token: str, client_id: str, flow: dict[str, Any]
) -> str | None:
    """Why the provider's ID token cannot stand for this sign-in (OIDC Core 3.1.3.7), or None when it can: signed
    by a key of the issuer's JWKS, `iss` the issuer, `aud` holding the client id (and `azp` it, when present),
    not expired, its `nonce` the one this sign-in sent (kept in the sealed flow cookie), and its `sub` the access
    token's."""
    if not isinstance(id_token, str) or not id_token:
        return "the identity provider gave no ID token (the scope must include openid): sign-in refused"
    checker = TokenVerifier(
        issuer=verifier.issuer,
        keys=verifier.keys,
        audience=client_id,
        algorithms=verifier.algorithms,
        leeway=verifier.leeway,
        mapping=verifier.mapping,
    )
    try:
        claims = await checker.claims(id_token)
    except InvalidToken as e:
        return f"the provider's ID token is not valid for this sign-in: {str(e).replace('the token', 'the ID token')}"
    azp = claims.get("azp")
    if azp is not None and azp != client_id:
        return f"the provider's ID token was issued to another client ({azp!r}): sign-in refused"
    nonce = claims.get("nonce")
    expected = str(flow.get("nonce") or "")
    if not isinstance(nonce, str) or not expected or not secrets.compare_digest(nonce, expected):
        return (
            "the provider's ID token does not carry this sign-in's nonce (replayed or for another sign-in): try again"
        )
    # The ID token says who signed in, the access token what they may do: both must name the same person.
    try:
        access = await verifier.claims(access_token)
    except InvalidToken:
        return None  # the access token's own verification, next, says why it cannot stand
    if claims.get("sub") != access.get("sub"):
        return "the provider's ID token and access token name different people (sub): sign-in refused"
    return None


@router.get("/dashboard/auth/callback", dependencies=[Depends(access.DASHBOARD)])
async def oidc_callback(request: Request) -> Response:
    """Back from the provider: check the state, exchange the code with the PKCE verifier, verify, sign in."""
    sessions = sessions_of(request)
    flow = sessions.unseal(request.cookies.get(FLOW_COOKIE), purpose="oidc-flow")
    params = request.query_params
    if flow is None or not params.get("state") or not secrets.compare_digest(str(flow["state"]), params["state"]):
        return _page(request, status_code=400, message="this sign-in was not started here, or took too long: try again")
    if params.get("error"):
        return _page(request, status_code=401, message=f"the identity provider refused: {params.get('error')}")
    if oidc_client_id(request) is None or not params.get("code"):
        return _page(request, status_code=400, message="no authorization code")
    try:
        endpoints = await _endpoints(request)
        async with _client(request) as client:
            tokens = await client.fetch_token(
                endpoints["token_endpoint"], code=params["code"], code_verifier=str(flow["verifier"])
            )
    except Exception as e:  # authlib's OAuth errors, HTTP errors: the provider's answer, shown
        return _page(request, status_code=502, message=f"the identity provider did not give a token: {e}")
    access_token = str(tokens.get("access_token") or "")
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        refusal = await _id_token_refusal(
            verifier, tokens.get("id_token"), access_token, str(oidc_client_id(request)), flow
        )
    except KeysUnavailable as e:
        return _page(request, status_code=503, message=str(e))
    if refusal is not None:
        return _page(request, status_code=401, message=refusal)
    try:
        principal = await verifier.verify(access_token)
    except InvalidToken as e:
        return _page(request, status_code=401, message=f"the provider's token is not valid here: {e}")
    except NoPrincipal as e:
        return _page(request, status_code=403, message=str(e))
    except KeysUnavailable as e:
        return _page(request, status_code=503, message=str(e))
    response = RedirectResponse(str(flow.get("next") or "/dashboard"), status_code=303)
    # The session outlives a short access token (it lasts the session's ttl): the person signed in, once, and
    # the provider's token was verified then; the session does not keep it (only the review cookie does, below).
    sessions.sign_in(response, request, principal, token_exp=None)
    # The secretariat's reviews go out with the provider's access token, kept while it is valid: after that the
    # session still reads, and a review asks to sign in again (`reporting.dashboard.review`).
    try:
        access_exp = (await verifier.claims(access_token)).get("exp")
    except (InvalidToken, KeysUnavailable):
        access_exp = None
    sessions.keep_review_token(
        response, request, principal, access_token, token_exp=float(access_exp) if access_exp else time.time()
    )
    response.delete_cookie(FLOW_COOKIE, path="/dashboard/auth")
    return response


__all__ = ["csrf_token", "keep_csrf", "router", "viewer"]
