"""The issuer's public keys (a JWKS, RFC 7517), fetched, cached, and fetched again for a `kid` not yet seen.

One code path for every issuer: the embedded one publishes its keys in a file (`file://` URL), a deployment's
identity provider over https (its JWKS URL, or the `jwks_uri` of its OIDC discovery document). Keys rotate:
a token signed by a key the cache does not hold makes the cache fetch the set again, at most once per
`refresh_interval` (so a flood of tokens with made-up `kid`s costs one fetch, not one each). When a fetch
fails, the keys already held stay in use (an identity provider that is down for a moment locks nobody out);
when none were ever fetched, verification is unavailable (503), which is not the caller's fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, RSAKey, import_key

from shinchoku_runtime.auth.settings import insecure_url

log = logging.getLogger(__name__)

#: A key set or discovery document larger than this is refused (a JWKS holds a few keys of a few KB).
MAX_DOCUMENT_BYTES = 1 << 20

_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class KeysUnavailable(Exception):
    """No key of the issuer could be fetched yet: tokens cannot be verified (a 503, not the caller's fault)."""


class UnknownKey(Exception):
    """The token names a key the issuer does not publish (after fetching its keys again)."""


def key_fits(key: Key, alg: str) -> bool:
    """Whether `key` can verify a signature made with `alg` (type, curve, and the key's own `alg`/`use`)."""
    if key.get("use") not in (None, "sig") or key.get("alg") not in (None, alg):
        return False
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    curve = _CURVES.get(alg)
    return curve is not None and isinstance(key, ECKey) and key.curve_name == curve


def parse_key_set(document: Any) -> list[Key]:
    """The RSA and EC keys of a JWKS document; other key types (and keys that do not parse) are left out."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS document (no "keys" array)')
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue
        try:
            key = import_key(entry)
        except (JoseError, ValueError, TypeError) as e:
            log.warning("ignoring a key of the JWKS that does not parse (kid %r): %s", entry.get("kid"), e)
            continue
        keys.append(key)
    return keys


async def read_document(url: str, timeout: float) -> Any:
    """The JSON document at `url` (https, loopback http, or file)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(url2pathname(parts.path))
        body = await asyncio.to_thread(path.read_bytes)
    else:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            body = response.content
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} answered {len(body)} bytes, more than a key set needs")
    return json.loads(body)


async def discover_jwks_url(issuer: str, timeout: float) -> str:
    """The `jwks_uri` of the issuer's OpenID Connect discovery document (which must name the same issuer)."""
    document = await read_document(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout)
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise ValueError(f"the discovery document of {issuer} names another issuer: {document.get('issuer')!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise ValueError(f"the discovery document of {issuer} has no jwks_uri")
    problem = insecure_url(jwks_uri, "the discovered JWKS URL")
    if problem:
        raise ValueError(problem)
    return jwks_uri


@dataclass
class JwksCache:
    """The keys of one issuer, fetched from `url` (or, when None, from the issuer's discovery document)."""

    url: str | None
    issuer: str
    refresh_interval: float = 30.0
    max_age: float = 600.0
    timeout: float = 5.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._keys: list[Key] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._kid_refresh_at: float | None = None
        self._unavailable = "cannot verify tokens: the issuer's keys were not fetched yet"
        self._fetches = 0
        self._lock: asyncio.Lock | None = None
        self._discovered: str | None = None

    @property
    def fetches(self) -> int:
        """How many times the keys were fetched (successfully or not)."""
        return self._fetches

    async def key_for(self, kid: str | None, alg: str) -> Key:
        """The key that verifies a token with header `kid` and `alg`; UnknownKey or KeysUnavailable otherwise."""
        now = self.clock()
        if self._keys is None or now - self._fetched_at > self.max_age:
            if self._spaced(now, self._attempted_at):
                await self._refresh()
            elif self._keys is None and self._lock is not None and self._lock.locked():
                # A fetch is under way (the first requests after a start arrive together): wait for it.
                async with self._lock:
                    pass
            if self._keys is None:
                raise KeysUnavailable(self._unavailable)
        key = self._find(kid, alg)
        if key is None and self._spaced(self.clock(), self._kid_refresh_at):
            # A key the set did not hold (rotated in since the last fetch): fetch again, at most once per interval.
            self._kid_refresh_at = self.clock()
            await self._refresh()
            key = self._find(kid, alg)
        if key is None:
            if kid is None:
                raise UnknownKey(f"the token names no key (kid) and the issuer publishes no single {alg} key")
            raise UnknownKey(f"the token is signed by a key the issuer does not publish (kid {kid!r})")
        return key

    def _spaced(self, now: float, last: float | None) -> bool:
        return last is None or now - last >= self.refresh_interval

    def _find(self, kid: str | None, alg: str) -> Key | None:
        fitting = [k for k in self._keys or () if key_fits(k, alg)]
        if kid is None:
            return fitting[0] if len(fitting) == 1 else None
        return next((k for k in fitting if k.kid == kid), None)

    async def _refresh(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        seen = self._fetches
        async with self._lock:
            if self._fetches != seen:
                return  # another request fetched the keys while this one waited
            self._attempted_at = self.clock()
            self._fetches += 1
            try:
                if self.url is None and self._discovered is None:
                    self._discovered = await discover_jwks_url(self.issuer, self.timeout)
                url = self.url or self._discovered
                assert url is not None
                keys = parse_key_set(await read_document(url, self.timeout))
            except (OSError, ValueError, httpx.HTTPError) as e:
                if self._keys is None:
                    where = self.url or f"the discovery document of {self.issuer}"
                    self._unavailable = f"cannot verify tokens: the issuer's keys at {where} are unavailable ({e})"
                    raise KeysUnavailable(self._unavailable) from e
                log.warning("fetching the issuer's keys failed; keeping the %d held: %s", len(self._keys), e)
                return
            self._keys, self._fetched_at = keys, self.clock()
            log.info("fetched %d signing keys of %s", len(keys), self.issuer)
