"""The embedded issuer of `shinchoku up`: its signing key, the public keys the services verify with, tokens.

`shinchoku up` is its own identity provider when no other is configured (SHINCHOKU_AUTH_MODE=embedded, the
default). It generates one EC P-256 key on first start and keeps it: `DATA_DIR/auth/signing-key.json`
(a private JWK, 0600, in a 0700 directory; never logged, never in a process's environment). Its public
half goes to `DATA_DIR/auth/jwks.json`, and the services are told `SHINCHOKU_AUTH_JWKS_URL=file://…` of it:
they verify through the same JWKS code as against a deployment's provider (fetch, cache by `kid`, fetch
again for an unknown `kid`), only the transport is a file. A file rather than an HTTP endpoint, because it
needs no port and no process of its own, exists before any service starts, and cannot be reached from
another machine; anyone who can read the data directory could read the private key anyway.

`shinchoku token` and the CLI's reading verbs mint their tokens here, from the data directory (`mint`,
`local_token`): whoever can read the key is the local administrator of this stack.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import time
from collections.abc import Generator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from contracts.agencies import Agency
from shinchoku_runtime.auth.principal import Principal, Role
from shinchoku_runtime.auth.settings import (
    DEFAULT_AUDIENCE,
    EMBEDDED_ISSUER,
    SIGNING_KEY_FILE,
    embedded_auth_dir,
    embedded_jwks_path,
)
from shinchoku_runtime.natsconf import write_private

SIGNING_ALG = "ES256"
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(hours=24)
#: What the CLI's reading verbs mint for themselves: one command's worth.
LOCAL_TTL = timedelta(minutes=5)
TOKEN_PRINCIPALS = (*(a.value for a in Agency), Role.secretariat.value, Role.operator.value)


class IssuerNotFound(Exception):
    """This data directory has no embedded issuer (no stack was started here, or it uses another provider)."""


class UnknownPrincipal(ValueError):
    """A principal name that is neither an agency code nor `secretariat` nor `operator`."""


def principal_named(name: str, subject: str) -> Principal:
    """The principal of a command-line name: an agency code, `secretariat` or `operator`."""
    if name in (Role.secretariat.value, Role.operator.value):
        return Principal(Role(name), None, subject)
    if name in Agency.__members__:
        return Principal(Role.agency, Agency(name), subject)
    raise UnknownPrincipal(
        f"unknown principal {name!r}: an agency code ({', '.join(a.value for a in Agency)}), secretariat or operator"
    )


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h`, `1h30m`, `1d` or plain seconds; ValueError for anything else or for zero."""
    text = text.strip().lower()
    if text.isdigit():
        value = timedelta(seconds=int(text))
    else:
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h, 1h30m, 1d)")
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    return value


def default_subject() -> str:
    """Who runs the command, for the token's `sub`."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local"


def _write_public(path: Path, text: str) -> None:
    """Replace `path` at once (a service reading it meanwhile sees the old keys or the new, never half)."""
    if path.exists() and path.read_text("utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class EmbeddedIssuer:
    """The signing key of one data directory's stack."""

    key: ECKey
    data_dir: Path

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    @property
    def key_path(self) -> Path:
        return embedded_auth_dir(self.data_dir) / SIGNING_KEY_FILE

    @property
    def jwks_path(self) -> Path:
        return embedded_jwks_path(self.data_dir)

    @classmethod
    def prepare(cls, data_dir: Path) -> EmbeddedIssuer:
        """The data directory's issuer, its key generated on first use and kept; its JWKS (re)written."""
        data_dir = data_dir.resolve()
        directory = embedded_auth_dir(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        path = directory / SIGNING_KEY_FILE
        if not path.exists():
            key = ECKey.generate_key("P-256", {"use": "sig", "alg": SIGNING_ALG}, private=True, auto_kid=True)
            write_private(path, json.dumps(key.as_dict(private=True)) + "\n")
        path.chmod(0o600)
        issuer = cls.load(data_dir)
        _write_public(issuer.jwks_path, json.dumps(issuer.public_jwks(), indent=2) + "\n")
        return issuer

    @classmethod
    def load(cls, data_dir: Path) -> EmbeddedIssuer:
        """The issuer `shinchoku up` prepared in `data_dir`; IssuerNotFound when there is none."""
        data_dir = data_dir.resolve()
        path = embedded_auth_dir(data_dir) / SIGNING_KEY_FILE
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            raise IssuerNotFound(
                f"no signing key under {path.parent}: start the stack with `shinchoku up` first"
            ) from None
        try:
            key = ECKey.import_key(json.loads(text))
        except (ValueError, JoseError) as e:
            raise ValueError(
                f"the signing key {path} cannot be read ({type(e).__name__}): remove it and start `shinchoku up` "
                "again to generate a new one (tokens signed with the old key stop working)"
            ) from None
        if not key.is_private or key.kid is None:
            raise ValueError(f"the signing key {path} has no private part or no kid: remove it to generate a new one")
        return cls(key=key, data_dir=data_dir)

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def mint(
        self,
        principal: Principal,
        *,
        ttl: timedelta = DEFAULT_TTL,
        now: float | None = None,
        audience: str = DEFAULT_AUDIENCE,
    ) -> str:
        """A signed token for `principal` (role, agency, `sub`) valid for `ttl` from `now`."""
        if principal.is_public:
            raise ValueError("the public needs no token")
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": EMBEDDED_ISSUER,
            "aud": audience,
            "sub": principal.subject or default_subject(),
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl.total_seconds()),
            "jti": secrets.token_urlsafe(12),
            "role": principal.role.value,
        }
        if principal.agency is not None:
            claims["agency"] = principal.agency.value
        return jwt.encode({"alg": SIGNING_ALG, "kid": self.kid, "typ": "JWT"}, claims, self.key, [SIGNING_ALG])


def local_token(data_dir: Path, principal: str = Role.secretariat.value, *, ttl: timedelta = LOCAL_TTL) -> str | None:
    """A short-lived token minted from the data directory's key (for the CLI's own requests), or None when
    this data directory has no embedded issuer (a stack that trusts another provider: pass `--token`)."""
    try:
        issuer = EmbeddedIssuer.load(data_dir)
    except IssuerNotFound:
        return None
    return issuer.mint(principal_named(principal, default_subject()), ttl=ttl)


def bearer_headers(data_dir: Path, token: str | None = None, principal: str = Role.secretariat.value) -> dict[str, str]:
    """`Authorization` for the CLI's requests: `token` (`--token`), else $SHINCHOKU_TOKEN, else one minted from
    the data directory; no header when none of these exists (the request then goes as the public)."""
    chosen = token or os.environ.get("SHINCHOKU_TOKEN") or local_token(data_dir, principal)
    return {"Authorization": f"Bearer {chosen}"} if chosen else {}


class StackAuth(httpx.Auth):
    """httpx authentication for the stack's own tools (bench, tests): every request as `principal` (the
    secretariat by default, who reads every agency's items), `/metrics` as the operator, each token minted
    from the data directory's key and minted again before it expires. A request that already carries an
    `Authorization` header keeps it."""

    def __init__(
        self, issuer: EmbeddedIssuer, principal: str = Role.secretariat.value, *, ttl: timedelta = DEFAULT_TTL
    ):
        self.issuer = issuer
        self.principal = principal
        self.ttl = ttl
        self._tokens: dict[str, tuple[float, str]] = {}

    @classmethod
    def of(cls, data_dir: Path, principal: str = Role.secretariat.value) -> StackAuth:
        return cls(EmbeddedIssuer.load(data_dir), principal)

    def token(self, principal: str) -> str:
        expires, token = self._tokens.get(principal, (0.0, ""))
        if time.time() > expires - 60:
            token = self.issuer.mint(principal_named(principal, default_subject()), ttl=self.ttl)
            self._tokens[principal] = (time.time() + self.ttl.total_seconds(), token)
        return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "authorization" not in request.headers:
            who = Role.operator.value if request.url.path.rstrip("/").endswith("/metrics") else self.principal
            request.headers["Authorization"] = f"Bearer {self.token(who)}"
        yield request
