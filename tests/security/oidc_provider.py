"""A small OpenID Connect provider for tests, built on authlib (its Flask authorization server) and joserfc.

It serves what a real provider serves and nothing a test could not meet in a deployment:

- `/.well-known/openid-configuration` (OIDC Discovery 1.0) and `/jwks` (the public keys, each with a `kid`);
- `/authorize`: the authorization-code flow (RFC 6749 §4.1) for a public client with PKCE (RFC 7636),
  S256 only and required; a GET shows a sign-in form (pick a user), its POST redirects back with the code;
- `/token`: the code (once, with the PKCE verifier) for an access token (a JWT per RFC 9068, `aud` = the
  provider's audience, with the DESIGN.md `role` / `agency` claims of the user) and an ID token.

Keys rotate like a real provider's: `rotate()` signs with a new key and publishes it next to the old one;
`retire()` stops publishing all but the signing key. Tests change `audience` or `access_token_ttl` to get
tokens for another audience or already expired, and `id_token_nonce` to get ID tokens carrying another nonce
than the sign-in sent (a forged or replayed ID token).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, Response, jsonify, request
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

CLIENT_ID = "shinchoku-dashboard"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never fetched: the test reads the redirect's Location
SIGNING_ALG = "RS256"


@dataclass(frozen=True)
class User:
    """A person at the provider with the claims its tokens carry about them."""

    sub: str
    name: str
    claims: dict[str, Any] = field(default_factory=dict)

    def get_user_id(self) -> str:
        return self.sub


USERS = {
    "tanaka": User("tanaka", "田中 花子", {"role": "agency", "agency": "mof"}),
    "suzuki": User("suzuki", "鈴木 一郎", {"role": "agency", "agency": "digital"}),
    "sato": User("sato", "佐藤 次郎", {"role": "secretariat"}),
    "ito": User("ito", "伊藤 三郎", {"role": "operator"}),
    "nobody": User("nobody", "名無し", {}),
}


@dataclass
class Client:
    """The dashboard: a public client (no secret), which therefore must use PKCE."""

    client_id: str = CLIENT_ID
    redirect_uris: tuple[str, ...] = (REDIRECT_URI,)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "profile", "shinchoku"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


class S256Only(CodeChallenge):  # type: ignore[misc]  # authlib is untyped
    """PKCE required at the authorization endpoint too, and only with S256 (plain is refused)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE is required: code_challenge with code_challenge_method=S256")
        super().validate_code_challenge(grant, redirect_uri)


class TestIdentityProvider:
    """The provider's state (keys, codes, what its next tokens look like) and its Flask app."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, redirect_uris: tuple[str, ...] = (REDIRECT_URI,)) -> None:
        self.issuer = ""  # set once the server listens
        self.redirect_uris = redirect_uris
        self.keys: list[RSAKey] = [RSAKey.generate_key(2048, auto_kid=True)]
        self.audience: str | list[str] = "shinchoku"
        self.access_token_ttl = 300
        #: When set, the ID tokens carry this nonce instead of the one the sign-in sent.
        self.id_token_nonce: str | None = None
        self.id_token_subject: str | None = None
        self.codes: dict[str, Code] = {}
        self.jwks_requests = 0
        self.app = self._build_app()

    # -- keys ------------------------------------------------------------------------------------

    @property
    def signing_key(self) -> RSAKey:
        return self.keys[-1]

    def rotate(self) -> RSAKey:
        """Sign with a new key from now on, publishing it next to the previous ones."""
        self.keys.append(RSAKey.generate_key(2048, auto_kid=True))
        return self.signing_key

    def retire(self) -> None:
        """Publish only the signing key."""
        self.keys = [self.signing_key]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False, use="sig", alg=SIGNING_ALG) for k in self.keys]}

    # -- the authorization server ----------------------------------------------------------------

    def _build_app(self) -> Flask:
        provider = self
        app = Flask("test-oidc-provider")
        client = Client(redirect_uris=provider.redirect_uris)

        class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["none"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                provider.codes[code] = Code(
                    code=code,
                    client_id=req.client.get_client_id(),
                    redirect_uri=req.payload.redirect_uri,
                    scope=req.payload.scope,
                    user=req.user,
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    nonce=provider.id_token_nonce if provider.id_token_nonce is not None else data.get("nonce"),
                    auth_time=int(time.time()),
                    expires_at=time.time() + 60,
                )

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                found = provider.codes.get(code)
                if found and found.client_id == client.get_client_id() and found.expires_at > time.time():
                    return found
                return None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> User:
                return authorization_code.user

        class IdTokens(OpenIDCode):  # type: ignore[misc]
            def exists_nonce(self, nonce: str, req: Any) -> bool:
                return any(c.nonce == nonce for c in provider.codes.values())

            def resolve_client_private_key(self, _client: Client) -> RSAKey:
                return provider.signing_key

            def get_client_algorithm(self, _client: Client) -> str:
                return SIGNING_ALG

            def get_encode_header(self, _client: Client) -> dict[str, str]:
                return {"alg": SIGNING_ALG, "kid": str(provider.signing_key.kid)}

            def get_client_claims(self, c: Client) -> dict[str, Any]:
                return {"iss": provider.issuer, "aud": [c.get_client_id()], "exp": int(time.time()) + 300}

            def generate_user_info(self, user: User, scope: str) -> UserInfo:
                return UserInfo(sub=provider.id_token_subject or user.sub, name=user.name, **user.claims)

        class AccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
            def get_jwks(self) -> KeySet:
                return KeySet([provider.signing_key])  # a set, so that the token's header names the key's kid

            def get_audiences(self, _client: Client, _user: User, _scope: str) -> str | list[str]:
                return provider.audience

            def get_extra_claims(self, _client: Client, _grant_type: str, user: User, _scope: str) -> dict[str, Any]:
                return dict(user.claims)

        server = AuthorizationServer(app, query_client=lambda cid: client if cid == CLIENT_ID else None)
        server.save_token = lambda _token, _request: None  # the tokens are JWTs: nothing to look up later
        server.register_grant(AuthorizationCodeGrant, [IdTokens(require_nonce=False), S256Only(required=True)])
        # The issuer is known only once the server listens: the generator reads it at each token.
        generator = AccessTokens(issuer="", alg=SIGNING_ALG, expires_generator=lambda _c, _g: provider.access_token_ttl)
        server.register_token_generator("default", generator)

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Response:
            base = provider.issuer
            return jsonify(
                issuer=base,
                authorization_endpoint=f"{base}/authorize",
                token_endpoint=f"{base}/token",
                jwks_uri=f"{base}/jwks",
                response_types_supported=["code"],
                grant_types_supported=["authorization_code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=[SIGNING_ALG],
                token_endpoint_auth_methods_supported=["none"],
                code_challenge_methods_supported=["S256"],
                scopes_supported=["openid", "profile", "shinchoku"],
                claims_supported=["sub", "name", "role", "agency"],
            )

        @app.get("/jwks")
        def jwks() -> Response:
            provider.jwks_requests += 1
            return jsonify(provider.jwks())

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            generator.issuer = provider.issuer
            try:
                grant = server.get_consent_grant(end_user=None)  # validates client, redirect URI and PKCE
            except OAuth2Error as error:
                return jsonify(error=error.error, error_description=error.description), 400
            if request.method == "GET":
                options = "".join(
                    f'<option value="{html.escape(u.sub)}">{html.escape(u.name)}</option>' for u in USERS.values()
                )
                return (
                    "<!doctype html><title>Sign in</title><form method=post>"
                    f'<select name="username">{options}</select><button type=submit>Sign in</button></form>'
                )
            user = USERS.get(request.form.get("username", ""))
            return server.create_authorization_response(grant=grant, grant_user=user)

        @app.post("/token")
        def token() -> Any:
            generator.issuer = provider.issuer
            return server.create_token_response()

        return app


def pkce_pair() -> tuple[str, str]:
    """A code verifier and its S256 challenge (RFC 7636 §4.1–4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class RunningProvider:
    provider: TestIdentityProvider
    server: BaseWSGIServer

    @property
    def issuer(self) -> str:
        return self.provider.issuer

    def sign_in(self, username: str, *, scope: str = "openid profile shinchoku") -> dict[str, Any]:
        """The whole authorization-code flow with PKCE over HTTP, as a browser and the dashboard would run it."""
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        with httpx.Client(base_url=self.issuer, timeout=10) as http:
            config = http.get("/.well-known/openid-configuration").json()
            params = {
                "response_type": "code",
                "client_id": CLIENT_ID,
                "redirect_uri": REDIRECT_URI,
                "scope": scope,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
            page = http.get(config["authorization_endpoint"], params=params)
            assert page.status_code == 200, page.text
            assert "Sign in" in page.text
            granted = http.post(config["authorization_endpoint"], params=params, data={"username": username})
            assert granted.status_code == 302, granted.text
            query = parse_qs(urlsplit(granted.headers["location"]).query)
            assert query["state"] == [state]
            answer = http.post(
                config["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": query["code"][0],
                    "redirect_uri": REDIRECT_URI,
                    "client_id": CLIENT_ID,
                    "code_verifier": verifier,
                },
            )
            assert answer.status_code == 200, answer.text
            tokens: dict[str, Any] = answer.json()
            return tokens


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def running_provider(redirect_uris: tuple[str, ...] = (REDIRECT_URI,)) -> Iterator[RunningProvider]:
    """The provider on a free loopback port, served by werkzeug in a thread until the block ends; its one client
    (the dashboard) may be sent back to `redirect_uris`."""
    provider = TestIdentityProvider(redirect_uris)
    server = make_server("127.0.0.1", 0, provider.app, threaded=True, request_handler=_QuietHandler)
    provider.issuer = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, name="test-oidc-provider", daemon=True)
    thread.start()
    try:
        yield RunningProvider(provider, server)
    finally:
        server.shutdown()
        thread.join(5)
