"""Verifying a bearer token (RFC 7519 JWT, RFC 7515 compact JWS) and naming the principal it stands for.

Order of the checks: the header (compact JWS, an accepted asymmetric `alg`; `jku`, `x5u` and the like are
ignored: keys come only from the configured JWKS), the key by `kid` from the issuer's key set (fetched again
for a `kid` not yet seen), the signature, then the claims: `iss` equal to the issuer, `aud` holding the
audience, `exp` required and `nbf`/`iat` checked with a small leeway, a subject; last the claim mapping
(role and agency). Every failure before the mapping is `InvalidToken` (401 `invalid_token`); a token that
verifies but names no principal is `NoPrincipal` (403); no key to verify with at all is `KeysUnavailable` (503).

A client sends the same token with every request: a token that verified is kept (the last `VERIFIED_CACHED`
ones, by the exact token text) with its principal, its `exp` and the key that verified it, so that the next
request with it skips the signature and the claims. A kept token is accepted only while the full checks would
accept it: before `exp` (with the same leeway and clock), and while the issuer's key set still gives the same key
for its `kid` (a key rotated out of the JWKS rejects it as before). Failures are never kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key

from shinchoku_runtime.auth.jwks import JwksCache, UnknownKey
from shinchoku_runtime.auth.principal import ClaimMapping, Principal, principal_from_claims
from shinchoku_runtime.auth.settings import AuthSettings

#: Tokens kept verified (one per client and person, in practice; a few hundred bytes each).
VERIFIED_CACHED = 1024


class InvalidToken(Exception):
    """The token cannot be trusted (malformed, badly signed, expired, for another issuer or audience): a 401."""


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def token_header(token: str) -> dict[str, Any]:
    """The protected header of a compact JWS, before any verification (only to choose the key)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("the token is not a signed JWT (three base64url parts separated by dots)")
    try:
        header = _b64json(parts[0])
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidToken("the token's header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise InvalidToken("the token's header is not a JSON object")
    return header


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that verified: whom it stands for, until when, and the key (by `kid` and `alg`) that verified it."""

    principal: Principal
    expires: int | float
    kid: str | None
    alg: str
    key: Key


class TokenVerifier:
    """Verifies bearer tokens of one issuer against its JWKS; `verify` answers the principal or raises."""

    def __init__(
        self,
        *,
        issuer: str,
        keys: JwksCache,
        audience: str,
        algorithms: list[str],
        leeway: int = 30,
        mapping: ClaimMapping | None = None,
        now: Callable[[], int] | None = None,
    ) -> None:
        self.issuer = issuer
        self.keys = keys
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self.mapping = mapping or ClaimMapping()
        self._now = now
        #: The tokens verified lately (exact token text → what it verified to), the least recently used first.
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        #: How many `verify` calls were answered from the kept tokens (for tests and curiosity).
        self.cache_hits = 0

    @classmethod
    def from_settings(cls, settings: AuthSettings, *, data_dir: Path | None = None) -> TokenVerifier:
        """The verifier the settings describe (embedded: the keys `shinchoku up` publishes under `data_dir`)."""
        issuer = settings.expected_issuer
        return cls(
            issuer=issuer,
            keys=JwksCache(
                settings.keys_url(data_dir),
                issuer,
                refresh_interval=settings.jwks_refresh_interval,
                max_age=settings.jwks_max_age,
                timeout=settings.http_timeout,
            ),
            audience=settings.audience,
            algorithms=settings.algorithm_list,
            leeway=settings.leeway,
            mapping=settings.claim_mapping(),
        )

    async def claims(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature, issuer, audience and times are valid; InvalidToken otherwise."""
        claims, _, _, _ = await self._verified_claims(token)
        return claims

    async def _verified_claims(self, token: str) -> tuple[dict[str, Any], str | None, str, Key]:
        """`claims`, with the `kid`, `alg` and key that verified them."""
        header = token_header(token)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken(f"the token's algorithm {alg!r} is not accepted (only {', '.join(self.algorithms)})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token's kid is not a string")
        try:
            key = await self.keys.key_for(kid, alg)
        except UnknownKey as e:
            raise InvalidToken(str(e)) from None
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except BadSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except JoseError as e:
            raise InvalidToken(f"the token cannot be decoded ({e.error})") from None
        self._check_claims(decoded.claims)
        return dict(decoded.claims), kid, alg, key

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=self.now,
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
        )
        try:
            registry.validate(dict(claims))
        except ExpiredTokenError:
            raise InvalidToken("the token has expired") from None
        except MissingClaimError as e:
            raise InvalidToken(f"the token lacks required claims: {e.description}") from None
        except InvalidClaimError as e:
            raise InvalidToken(self._explain(e, claims)) from None
        subject = claims.get(self.mapping.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise InvalidToken(f"the token names no subject (claim {self.mapping.subject_claim!r})")

    def _explain(self, error: InvalidClaimError, claims: Mapping[str, Any]) -> str:
        claim = error.claim
        if claim == "iss":
            return f"the token was issued by {claims.get('iss')!r}, not by {self.issuer!r}"
        if claim == "aud":
            return f"the token is for another audience ({claims.get('aud')!r}, not {self.audience!r})"
        if claim == "nbf":
            return "the token is not valid yet (nbf)"
        if claim == "iat":
            return "the token was issued in the future (iat)"
        return f"the token's claim {claim!r} is invalid"

    def now(self) -> int:
        """The time the claims are checked at (seconds since the epoch), as `jwt.JWTClaimsRegistry` takes it."""
        return self._now() if self._now is not None else int(time.time())

    async def verify(self, token: str) -> Principal:
        """The principal a valid token stands for: InvalidToken (401), NoPrincipal (403), KeysUnavailable (503)."""
        kept = self._verified.get(token)
        if kept is not None:
            if await self._still_valid(kept):
                self._verified.move_to_end(token)
                self.cache_hits += 1
                return kept.principal
            self._verified.pop(token, None)  # checked in full again: it says why (expired, key gone, …)
        claims, kid, alg, key = await self._verified_claims(token)
        principal = principal_from_claims(claims, self.mapping)
        expires = claims.get("exp")  # a number: `_check_claims` required it
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            self._verified[token] = _Verified(principal, expires, kid, alg, key)
            while len(self._verified) > VERIFIED_CACHED:
                self._verified.popitem(last=False)
        return principal

    async def _still_valid(self, kept: _Verified) -> bool:
        """Whether the full checks would still accept a token that verified: not expired by the same rule as
        `validate_exp` (exp > now - leeway), and its key still the one the issuer's key set gives for its kid."""
        if not kept.expires > self.now() - self.leeway:
            return False
        try:
            key = await self.keys.key_for(kept.kid, kept.alg)
        except UnknownKey:
            return False
        return key is kept.key
