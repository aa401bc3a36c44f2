"""Settings of token verification (`SHINCHOKU_AUTH_*`), shared by every service, and the embedded issuer's layout."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shinchoku_runtime.auth.principal import TOKEN_ROLES, ClaimMapping, Role

#: The `iss` of the tokens `shinchoku up` issues (its key lives in DATA_DIR/auth/, see `embedded_jwks_path`).
EMBEDDED_ISSUER = "urn:shinchoku:embedded"
DEFAULT_AUDIENCE = "shinchoku"
#: Asymmetric signatures only: `none` and HMAC (HS*) are never accepted, whatever the settings say, because
#: a verifier holding only public keys could be fooled into using one as an HMAC secret.
SIGNATURE_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
AUTH_DIR = "auth"
JWKS_FILE = "jwks.json"
SIGNING_KEY_FILE = "signing-key.json"


def embedded_auth_dir(data_dir: Path) -> Path:
    return data_dir / AUTH_DIR


def embedded_jwks_path(data_dir: Path) -> Path:
    """Where `shinchoku up` publishes the public keys of its issuer (the private key sits beside it, 0600)."""
    return embedded_auth_dir(data_dir) / JWKS_FILE


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_url(url: str, what: str) -> str | None:
    """Why `url` may not serve keys or name an issuer (None when it may): https, a file, or loopback http."""
    parts = urlsplit(url)
    if parts.scheme == "https" or parts.scheme == "file":
        return None
    if parts.scheme == "http":
        if _is_loopback(parts.hostname):
            return None
        return f"{what} {url!r} is plain http on a network address: use https (keys fetched in clear can be forged)"
    return f"{what} {url!r} must be an https:// (or file://) URL"


class AuthSettings(BaseSettings):
    """How the services verify bearer tokens. `embedded` (the default) trusts the key `shinchoku up` generated;
    `oidc` trusts a deployment's identity provider (issuer, JWKS URL or discovery, audience, claim mapping)."""

    model_config = SettingsConfigDict(
        env_prefix="SHINCHOKU_AUTH_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    mode: Literal["embedded", "oidc"] = Field(
        default="embedded", description="embedded: `shinchoku up`'s own issuer; oidc: a deployment's provider"
    )
    issuer: str | None = Field(default=None, description="Expected `iss` (the embedded issuer when unset in embedded)")
    jwks_url: str | None = Field(
        default=None,
        description="The issuer's keys (https:// or file://); oidc: from the issuer's discovery document when unset",
    )
    audience: str = Field(default=DEFAULT_AUDIENCE, min_length=1, description="Expected `aud` (one of its values)")
    algorithms: str = Field(default="RS256,ES256", description="Accepted signature algorithms, comma-separated")
    leeway: int = Field(default=30, ge=0, le=300, description="Seconds of clock skew allowed on exp, nbf and iat")
    role_claim: str = Field(default="role", description="Claim path(s), comma-separated, holding the role value(s)")
    role_values: dict[str, Role] = Field(
        default_factory=lambda: {r.value: r for r in TOKEN_ROLES},
        description="JSON object: the identity provider's role value → agency | secretariat | operator",
    )
    agency_claim: str | None = Field(default="agency", description="Claim path of the agency code (role agency)")
    agency_prefix: str | None = Field(
        default=None, description="A role value starting with this prefix names an agency (prefix + code)"
    )
    subject_claim: str = Field(default="sub", description="Claim naming the person")
    jwks_refresh_interval: float = Field(
        default=30.0, ge=0, description="Least seconds between two fetches of the keys for an unknown kid"
    )
    jwks_max_age: float = Field(default=600.0, gt=0, description="Seconds the keys are used before fetched again")
    http_timeout: float = Field(default=5.0, gt=0, description="Seconds for one fetch of the keys or discovery")

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: str) -> str:
        names = [a.strip() for a in value.split(",") if a.strip()]
        refused = [a for a in names if a not in SIGNATURE_ALGORITHMS]
        if refused:
            raise ValueError(
                f"algorithms {refused} are not accepted: only asymmetric signatures "
                f"({', '.join(sorted(SIGNATURE_ALGORITHMS))}), never none or HMAC"
            )
        if not names:
            raise ValueError("at least one signature algorithm is needed")
        return ",".join(names)

    @field_validator("role_values")
    @classmethod
    def _token_roles(cls, value: dict[str, Role]) -> dict[str, Role]:
        if Role.public in value.values():
            raise ValueError("no token maps to the public (the public is whoever sends no token)")
        return value

    @model_validator(mode="after")
    def _secure_outside_embedded(self) -> AuthSettings:
        if self.mode == "oidc":
            if not self.issuer:
                raise ValueError("SHINCHOKU_AUTH_ISSUER is required in oidc mode (the identity provider's issuer URL)")
            if self.issuer == EMBEDDED_ISSUER:
                raise ValueError(f"the issuer {EMBEDDED_ISSUER!r} is the embedded one: use mode=embedded for it")
            problem = insecure_url(self.issuer, "the issuer")
            if problem is None and urlsplit(self.issuer).scheme == "file":
                problem = "the issuer must be an https:// URL"
            if problem:
                raise ValueError(problem)
        if self.jwks_url is not None:
            problem = insecure_url(self.jwks_url, "the JWKS URL")
            if problem:
                raise ValueError(problem)
        return self

    @property
    def algorithm_list(self) -> list[str]:
        return self.algorithms.split(",")

    @property
    def expected_issuer(self) -> str:
        return self.issuer or EMBEDDED_ISSUER

    def claim_mapping(self) -> ClaimMapping:
        return ClaimMapping(
            role_claims=tuple(p.strip() for p in self.role_claim.split(",") if p.strip()),
            role_values=dict(self.role_values),
            agency_claim=self.agency_claim or None,
            agency_prefix=self.agency_prefix or None,
            subject_claim=self.subject_claim,
        )

    def keys_url(self, data_dir: Path | None) -> str | None:
        """The JWKS URL to fetch: the setting, else (embedded) the file `up` writes under `data_dir`, else None
        (oidc: the issuer's discovery document names it)."""
        if self.jwks_url:
            return self.jwks_url
        if self.mode == "embedded":
            if data_dir is None:
                raise ValueError("embedded mode without SHINCHOKU_AUTH_JWKS_URL needs the data directory")
            return embedded_jwks_path(data_dir.resolve()).as_uri()
        return None
