"""The dashboard's session: who signed in, kept in a signed cookie, and the CSRF token of its forms.

A browser sends no bearer token, so the dashboard signs a person in once (a token pasted or carried by the
link `shinchoku up` prints, or the OpenID Connect authorization-code flow of a deployment, see `signin`)
and keeps the principal the token named in a cookie:

- `shinchoku_session`: `base64url(JSON {role, agency, sub, exp}) . base64url(HMAC-SHA256)`, keyed by the
  session secret; `HttpOnly` (no script reads it), `SameSite=Lax` (not sent by another site's forms or
  sub-requests), `Secure` when the dashboard is served over TLS, `Path=/`. It lasts until the token's own
  expiry or `dashboard_session_ttl` (8 h by default), whichever comes first; a forged or expired cookie is
  the public.
- `shinchoku_review`: for the secretariat only, the bearer token it signed in with, encrypted (AES-256-GCM under
  a key derived from the session secret) and sent back only to `POST /dashboard/review` (`Path`,
  `SameSite=Strict`, `HttpOnly`, `Secure` as above), until the token expires. A review from the measure page
  is published with this token, so ingest verifies the signed-in person exactly as for `shinchoku review`
  (see `reporting.dashboard.review`); no other page ever receives it.
- `shinchoku_csrf`: a random value the sign-in and sign-out forms repeat in a hidden field (double submit);
  `SameSite=Strict`, `HttpOnly`. A POST whose field differs, or whose `Origin` is another site, is refused.

The session secret is `SHINCHOKU_REPORTING_DASHBOARD_SESSION_SECRET` (the same on every replica), else a
random key generated once in `DATA_DIR/auth/dashboard-session.key` (0600), as `shinchoku up` needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import Request, Response

from contracts.agencies import Agency
from shinchoku_runtime.auth import Principal, Role
from shinchoku_runtime.natsconf import write_private

SESSION_COOKIE = "shinchoku_session"
CSRF_COOKIE = "shinchoku_csrf"
SESSION_KEY_FILE = "dashboard-session.key"
REVIEW_TOKEN_COOKIE = "shinchoku_review"
#: The one path the secretariat's token is sent back to (the review form's action).
REVIEW_PATH = "/dashboard/review"
#: A browser keeps cookies up to ~4 KB: a larger token is not kept (reviews then need the CLI).
MAX_REVIEW_COOKIE = 3800


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def session_secret(configured: str | None, data_dir: Path) -> bytes:
    """The key that signs sessions: the setting, else one generated once under `data_dir/auth/` (0600)."""
    if configured:
        return configured.encode("utf-8")
    directory = data_dir / "auth"
    path = directory / SESSION_KEY_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        write_private(path, secrets.token_urlsafe(48) + "\n")
    return path.read_text("utf-8").strip().encode("utf-8")


@dataclass(frozen=True)
class Sessions:
    """Signs and reads session cookies with one key; `ttl` bounds a session's life in seconds."""

    key: bytes
    ttl: int = 8 * 3600
    #: "auto": `Secure` when the request came over https; "always": `Secure` whatever the scheme says.
    secure: str = "auto"

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode("ascii"), hashlib.sha256).digest())

    def encode(self, principal: Principal, *, expires_at: float) -> str:
        body = {"role": principal.role.value, "agency": principal.agency, "sub": principal.subject, "exp": expires_at}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}"

    def decode(self, cookie: str | None, *, now: float | None = None) -> Principal | None:
        """The principal of a cookie this key signed and that has not expired; None for anything else."""
        if not cookie or "." not in cookie:
            return None
        payload, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            role = Role(body["role"])
            agency = Agency(body["agency"]) if body.get("agency") else None
            expires = float(body["exp"])
            subject = body.get("sub")
            principal = Principal(role, agency, subject if isinstance(subject, str) else None)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if principal.is_public or expires <= (time.time() if now is None else now):
            return None
        return principal

    def seal(self, value: Mapping[str, object], *, purpose: str, seconds: int) -> str:
        """`value` signed for `purpose` (a sealed value of one purpose is worthless for another), for `seconds`."""
        payload = _b64(json.dumps({"p": purpose, "v": dict(value), "exp": time.time() + seconds}).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}"

    def unseal(self, sealed: str | None, *, purpose: str) -> dict[str, object] | None:
        if not sealed or "." not in sealed:
            return None
        payload, _, mac = sealed.partition(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(body, dict) or body.get("p") != purpose or float(body.get("exp", 0)) <= time.time():
            return None
        value = body.get("v")
        return value if isinstance(value, dict) else None

    def _review_key(self) -> bytes:
        return hashlib.sha256(b"shinchoku dashboard review token\0" + self.key).digest()

    def keep_review_token(
        self, response: Response, request: Request, principal: Principal, token: str, *, token_exp: float | None
    ) -> None:
        """Keep the secretariat's bearer token for its reviews (encrypted, sent back to REVIEW_PATH only, until the
        token and the session end); for anyone else, clear any kept token."""
        expires = time.time() + self.ttl
        if token_exp is not None:
            expires = min(expires, token_exp)
        if principal.role is not Role.secretariat or not token or expires <= time.time():
            self.drop_review_token(response, request)
            return
        nonce = secrets.token_bytes(12)
        sealed = _b64(nonce + AESGCM(self._review_key()).encrypt(nonce, token.encode("utf-8"), b"review"))
        if len(sealed) > MAX_REVIEW_COOKIE:
            self.drop_review_token(response, request)
            return
        response.set_cookie(
            REVIEW_TOKEN_COOKIE,
            sealed,
            max_age=max(int(expires - time.time()), 0),
            path=REVIEW_PATH,
            secure=self.is_secure(request),
            httponly=True,
            samesite="strict",
        )

    def review_token(self, request: Request) -> str | None:
        """The kept token of the secretariat (None when none is kept, or the cookie is not this key's)."""
        sealed = request.cookies.get(REVIEW_TOKEN_COOKIE)
        if not sealed:
            return None
        try:
            raw = _unb64(sealed)
            return AESGCM(self._review_key()).decrypt(raw[:12], raw[12:], b"review").decode("utf-8")
        except (InvalidTag, ValueError, binascii.Error):
            return None

    def drop_review_token(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            REVIEW_TOKEN_COOKIE, path=REVIEW_PATH, secure=self.is_secure(request), httponly=True, samesite="strict"
        )

    def is_secure(self, request: Request) -> bool:
        return self.secure == "always" or request.url.scheme == "https"

    def sign_in(self, response: Response, request: Request, principal: Principal, *, token_exp: float | None) -> None:
        """Set the session cookie for `principal`, ending at the token's expiry or after `ttl`."""
        expires = time.time() + self.ttl
        if token_exp is not None:
            expires = min(expires, token_exp)
        response.set_cookie(
            SESSION_COOKIE,
            self.encode(principal, expires_at=expires),
            max_age=max(int(expires - time.time()), 0),
            path="/",
            secure=self.is_secure(request),
            httponly=True,
            samesite="lax",
        )

    def sign_out(self, response: Response, request: Request) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", secure=self.is_secure(request), httponly=True, samesite="lax")
        self.drop_review_token(response, request)

    def principal(self, request: Request) -> Principal | None:
        return self.decode(request.cookies.get(SESSION_COOKIE))


# -- CSRF: a double-submitted random value, and the Origin of the POST ----------------------------------------


def csrf_token(request: Request) -> str:
    """The browser's CSRF value (from its cookie), or a new one the response must set (`keep_csrf`)."""
    current = request.cookies.get(CSRF_COOKIE)
    if current and len(current) >= 32:
        return current
    fresh: str = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
    request.state.new_csrf = fresh
    return fresh


def keep_csrf(response: Response, request: Request, sessions: Sessions) -> None:
    """Set the CSRF cookie when `csrf_token` made a new value for this request."""
    fresh = getattr(request.state, "new_csrf", None)
    if fresh:
        response.set_cookie(
            CSRF_COOKIE,
            fresh,
            max_age=24 * 3600,
            path="/dashboard",
            secure=sessions.is_secure(request),
            httponly=True,
            samesite="strict",
        )


def csrf_problem(request: Request, submitted: str | None) -> str | None:
    """Why a form POST is refused (None when it is not): another site's Origin, or a missing or wrong token."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin.rstrip("/") != own:
            return f"this form was sent from another site ({origin})"
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not submitted or not hmac.compare_digest(expected, submitted):
        return "the form's security token is missing or stale: open the sign-in page again and resend"
    return None
