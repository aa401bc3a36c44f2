"""The token verifier against a real OpenID Connect provider over HTTP (tests/security/oidc_provider.py).

Tokens come from the provider's authorization-code flow with PKCE, as the dashboard will get them; the
verifier finds the provider's keys through its discovery document, as a deployment configured with an
issuer only does. Nothing is mocked: keys, signatures, fetches and clocks are real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydantic import ValidationError

from contracts.agencies import Agency
from shinchoku_runtime.auth import (
    AuthSettings,
    InvalidToken,
    KeysUnavailable,
    NoPrincipal,
    Principal,
    Role,
    TokenVerifier,
)
from shinchoku_runtime.natsserver import free_port
from tests.security.oidc_provider import CLIENT_ID, RunningProvider, pkce_pair, running_provider


@pytest.fixture
def idp() -> Iterator[RunningProvider]:
    with running_provider() as running:
        yield running


def oidc_verifier(issuer: str, **settings: Any) -> TokenVerifier:
    """A verifier configured as a deployment would be: mode oidc, the issuer, keys found by discovery."""
    return TokenVerifier.from_settings(AuthSettings(_env_file=None, mode="oidc", issuer=issuer, **settings))


def forge(claims: dict[str, Any], key: RSAKey, kid: str | None) -> str:
    header = {"alg": "RS256", **({"kid": kid} if kid else {})}
    return jwt.encode(header, claims, key, ["RS256"])


def valid_claims(idp: RunningProvider, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": idp.issuer,
        "aud": "shinchoku",
        "sub": "x",
        "exp": now + 300,
        "iat": now,
        "role": "secretariat",
    } | extra


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


async def test_tokens_from_the_code_flow_name_their_principals(idp: RunningProvider) -> None:
    verifier = oidc_verifier(idp.issuer)
    expected = {
        "tanaka": Principal(Role.agency, Agency.mof, "tanaka"),
        "suzuki": Principal(Role.agency, Agency.digital, "suzuki"),
        "sato": Principal(Role.secretariat, None, "sato"),
        "ito": Principal(Role.operator, None, "ito"),
    }
    for user, principal in expected.items():
        assert await verifier.verify(idp.sign_in(user)["access_token"]) == principal
    # Found through discovery, fetched once, then served from the cache.
    assert idp.provider.jwks_requests == 1
    assert verifier.keys.fetches == 1


async def test_the_provider_enforces_pkce_s256(idp: RunningProvider) -> None:
    verifier_text, challenge = pkce_pair()
    base = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": "http://127.0.0.1:9/callback"}
    with httpx.Client(base_url=idp.issuer) as http:
        assert http.get("/authorize", params=base).status_code == 400  # no code_challenge
        plain = base | {"code_challenge": verifier_text, "code_challenge_method": "plain"}
        assert http.get("/authorize", params=plain).status_code == 400
        s256 = base | {"code_challenge": challenge, "code_challenge_method": "S256", "state": "s"}
        granted = http.post("/authorize", params=s256, data={"username": "sato"})
        code = httpx.URL(granted.headers["location"]).params["code"]
        token_request = {"grant_type": "authorization_code", "code": code, "redirect_uri": base["redirect_uri"]}
        wrong = http.post("/token", data=token_request | {"client_id": CLIENT_ID, "code_verifier": "x" * 50})
        assert wrong.status_code == 400
        assert wrong.json()["error"] == "invalid_grant"
        missing = http.post("/token", data=token_request | {"client_id": CLIENT_ID})
        assert missing.status_code == 400
    config = httpx.get(f"{idp.issuer}/.well-known/openid-configuration").json()
    assert config["issuer"] == idp.issuer
    assert config["code_challenge_methods_supported"] == ["S256"]


async def test_an_expired_token_is_refused_beyond_the_leeway(idp: RunningProvider) -> None:
    idp.provider.access_token_ttl = -120  # expired two minutes ago
    expired = idp.sign_in("sato")["access_token"]
    with pytest.raises(InvalidToken, match="expired"):
        await oidc_verifier(idp.issuer).verify(expired)
    idp.provider.access_token_ttl = -10  # ten seconds ago: within the default leeway of 30 s
    recent = idp.sign_in("sato")["access_token"]
    assert (await oidc_verifier(idp.issuer).verify(recent)).role is Role.secretariat
    with pytest.raises(InvalidToken, match="expired"):
        await oidc_verifier(idp.issuer, leeway=0).verify(recent)


async def test_a_token_for_another_audience_is_refused(idp: RunningProvider) -> None:
    idp.provider.audience = "another-api"
    verifier = oidc_verifier(idp.issuer)
    with pytest.raises(InvalidToken, match="another audience"):
        await verifier.verify(idp.sign_in("sato")["access_token"])
    # The ID token is for the dashboard client, not for the API: refused too.
    idp.provider.audience = "shinchoku"
    with pytest.raises(InvalidToken, match="another audience"):
        await verifier.verify(idp.sign_in("sato")["id_token"])
    idp.provider.audience = ["another-api", "shinchoku"]
    assert (await verifier.verify(idp.sign_in("sato")["access_token"])).role is Role.secretariat


async def test_a_token_signed_by_another_key_is_refused(idp: RunningProvider) -> None:
    verifier = oidc_verifier(idp.issuer, jwks_refresh_interval=60)
    await verifier.verify(idp.sign_in("sato")["access_token"])
    intruder = RSAKey.generate_key(2048, auto_kid=True)
    # Claiming the provider's own kid: the signature does not verify.
    with pytest.raises(InvalidToken, match="signature"):
        await verifier.verify(forge(valid_claims(idp), intruder, idp.provider.signing_key.kid))
    # Under its own kid: the keys are fetched again once, and the key is not among them.
    with pytest.raises(InvalidToken, match="does not publish"):
        await verifier.verify(forge(valid_claims(idp), intruder, intruder.kid))
    assert verifier.keys.fetches == 2


async def test_rotated_keys_are_picked_up_by_kid(idp: RunningProvider) -> None:
    verifier = oidc_verifier(idp.issuer, jwks_refresh_interval=0.5)
    old_token = idp.sign_in("tanaka")["access_token"]
    assert (await verifier.verify(old_token)).agency is Agency.mof
    assert verifier.keys.fetches == 1
    new_key = idp.provider.rotate()
    new_token = idp.sign_in("tanaka")["access_token"]
    assert (
        jwt.decode(new_token, new_key).header["kid"]
        == new_key.kid
        != jwt.decode(old_token, idp.provider.keys[0]).header["kid"]
    )
    assert (await verifier.verify(new_token)).agency is Agency.mof  # unknown kid: the keys are fetched again
    assert verifier.keys.fetches == 2
    assert (await verifier.verify(old_token)).agency is Agency.mof  # the old key is still published and held
    assert verifier.keys.fetches == 2


async def test_unknown_kids_fetch_the_keys_at_most_once_per_interval(idp: RunningProvider) -> None:
    verifier = oidc_verifier(idp.issuer, jwks_refresh_interval=60)
    await verifier.verify(idp.sign_in("sato")["access_token"])
    intruder = RSAKey.generate_key(2048)
    for n in range(20):
        with pytest.raises(InvalidToken):
            await verifier.verify(forge(valid_claims(idp), intruder, f"made-up-{n}"))
    assert verifier.keys.fetches == 2, "twenty unknown kids in a minute: one fetch, not twenty"
    # A key rotated meanwhile is found once the interval has passed (here: a verifier with a short one).
    idp.provider.rotate()
    with pytest.raises(InvalidToken, match="does not publish"):
        await verifier.verify(idp.sign_in("sato")["access_token"])
    quick = oidc_verifier(idp.issuer, jwks_refresh_interval=0)
    assert (await quick.verify(idp.sign_in("sato")["access_token"])).role is Role.secretariat


async def test_algorithm_confusion_and_unsigned_tokens_are_refused(idp: RunningProvider) -> None:
    verifier = oidc_verifier(idp.issuer)
    claims = _b64(json.dumps(valid_claims(idp)).encode())
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{none_header}.{claims}."
    with pytest.raises(InvalidToken, match="'none' is not accepted"):
        await verifier.verify(unsigned)
    # HS256 keyed with the provider's public key (what a verifier trusting the header's alg would accept).
    kid = idp.provider.signing_key.kid
    header = _b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    secret = idp.provider.signing_key.as_pem(private=False)
    signature = _b64(hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="'HS256' is not accepted"):
        await verifier.verify(f"{header}.{claims}.{signature}")
    for garbage in ("", "abc", "a.b", "a.b.c.d.e", "!!!.e30.x"):
        with pytest.raises(InvalidToken):
            await verifier.verify(garbage)
    with pytest.raises(ValidationError, match="never none or HMAC"):
        AuthSettings(_env_file=None, algorithms="RS256,HS256")
    with pytest.raises(ValidationError):
        AuthSettings(_env_file=None, algorithms="none")


async def test_issuer_subject_and_times_are_checked(idp: RunningProvider) -> None:
    key = idp.provider.signing_key
    verifier = oidc_verifier(idp.issuer)
    await verifier.verify(idp.sign_in("sato")["access_token"])
    with pytest.raises(InvalidToken, match="issued by"):
        await verifier.verify(forge(valid_claims(idp, iss="https://idp.example.org"), key, key.kid))
    for missing in ("exp", "aud", "iss"):
        claims = valid_claims(idp)
        del claims[missing]
        with pytest.raises(InvalidToken, match=missing):
            await verifier.verify(forge(claims, key, key.kid))
    claims = valid_claims(idp)
    del claims["sub"]
    with pytest.raises(InvalidToken, match="subject"):
        await verifier.verify(forge(claims, key, key.kid))
    with pytest.raises(InvalidToken, match="not valid yet"):
        await verifier.verify(forge(valid_claims(idp, nbf=int(time.time()) + 600), key, key.kid))
    assert (
        await verifier.verify(forge(valid_claims(idp, nbf=int(time.time()) + 10), key, key.kid))
    ).role is Role.secretariat


async def test_a_valid_token_without_a_role_names_no_principal(idp: RunningProvider) -> None:
    verifier = oidc_verifier(idp.issuer)
    with pytest.raises(NoPrincipal, match="no Shinchoku role"):
        await verifier.verify(idp.sign_in("nobody")["access_token"])
    key = idp.provider.signing_key
    with pytest.raises(NoPrincipal, match="not one of the 17"):
        await verifier.verify(forge(valid_claims(idp, role="agency", agency="tokyo"), key, key.kid))


async def test_keys_out_of_reach_make_verification_unavailable(idp: RunningProvider) -> None:
    token = idp.sign_in("sato")["access_token"]
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KeysUnavailable, match="unavailable"):
        await oidc_verifier(nowhere).verify(token)
    # A discovery document must name the issuer it is asked for.
    with pytest.raises(KeysUnavailable, match="another issuer"):
        await oidc_verifier(idp.issuer + "/").verify(token)
    # Keys held stay in use while the provider is down for a moment.
    verifier = oidc_verifier(idp.issuer, jwks_refresh_interval=0)
    await verifier.verify(token)
    idp.server.shutdown()
    with pytest.raises(InvalidToken, match="does not publish"):
        await verifier.verify(forge(valid_claims(idp), RSAKey.generate_key(2048), "gone"))
    assert (await verifier.verify(token)).role is Role.secretariat


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"mode": "oidc"}, "ISSUER is required"),
        ({"mode": "oidc", "issuer": "http://idp.example.org"}, "plain http"),
        ({"mode": "oidc", "issuer": "urn:shinchoku:embedded"}, "embedded"),
        ({"mode": "oidc", "issuer": "https://idp.example.org", "jwks_url": "http://10.0.0.5/jwks"}, "plain http"),
        ({"jwks_url": "ftp://idp.example.org/jwks"}, "https"),
        ({"leeway": 3600}, "leeway"),
        ({"role_values": {"guest": "public"}}, "public"),
    ],
)
def test_insecure_settings_are_refused(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        AuthSettings(_env_file=None, **settings)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHINCHOKU_AUTH_MODE", "oidc")
    monkeypatch.setenv("SHINCHOKU_AUTH_ISSUER", "https://login.microsoftonline.com/tenant/v2.0")
    monkeypatch.setenv("SHINCHOKU_AUTH_ROLE_CLAIM", "roles")
    monkeypatch.setenv("SHINCHOKU_AUTH_AGENCY_PREFIX", "Shinchoku.Agency.")
    monkeypatch.setenv("SHINCHOKU_AUTH_ROLE_VALUES", '{"Shinchoku.Secretariat": "secretariat"}')
    monkeypatch.setenv("SHINCHOKU_AUTH_ALGORITHMS", "RS256")
    settings = AuthSettings(_env_file=None)
    mapping = settings.claim_mapping()
    assert mapping.role_claims == ("roles",)
    assert mapping.role_values == {"Shinchoku.Secretariat": Role.secretariat}
    assert settings.algorithm_list == ["RS256"]
    assert settings.keys_url(None) is None  # found by discovery


async def test_requests_arriving_while_the_keys_are_fetched_wait_for_them(idp: RunningProvider) -> None:
    """The first requests after a start all verify: those that arrive while the first fetch is under way wait
    for it instead of answering 503 (seen before: every request but the first got "keys not fetched yet")."""
    verifier = oidc_verifier(idp.issuer)
    token = idp.sign_in("sato")["access_token"]
    principals = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert {p.role for p in principals} == {Role.secretariat}
    assert verifier.keys.fetches == 1, "one fetch serves the requests that waited for it"


# --- Tokens kept verified --------------------------------------------------------------------------------------


class Clock:
    """The verifier's clock (seconds since the epoch), moved by the test."""

    def __init__(self) -> None:
        self.now = int(time.time())

    def __call__(self) -> int:
        return self.now


def clocked_verifier(idp: RunningProvider, clock: Clock, *, refresh_interval: float = 30.0) -> TokenVerifier:
    """A verifier of the provider (keys by discovery) checking times on `clock`, with the default leeway (30 s)."""
    settings = AuthSettings(_env_file=None, mode="oidc", issuer=idp.issuer, jwks_refresh_interval=refresh_interval)
    made = TokenVerifier.from_settings(settings)
    return TokenVerifier(
        issuer=made.issuer,
        keys=made.keys,
        audience=made.audience,
        algorithms=made.algorithms,
        leeway=made.leeway,
        mapping=made.mapping,
        now=clock,
    )


async def test_a_kept_token_is_refused_once_it_expires(idp: RunningProvider) -> None:
    """A token verified once is answered from the kept tokens on the next requests, but never past its exp (plus
    the leeway the full check allows): then it is refused as expired, exactly as without the cache."""
    clock = Clock()
    verifier = clocked_verifier(idp, clock)
    key = idp.provider.signing_key
    token = forge(valid_claims(idp, exp=clock.now + 60, iat=clock.now), key, key.kid)
    assert (await verifier.verify(token)).role is Role.secretariat
    assert (await verifier.verify(token)).role is Role.secretariat
    assert verifier.cache_hits == 1
    clock.now += 60 + verifier.leeway - 1  # the last second the full check accepts it
    assert (await verifier.verify(token)).role is Role.secretariat
    assert verifier.cache_hits == 2
    clock.now += 1
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)
    with pytest.raises(InvalidToken, match="expired"):  # and it stays refused (nothing kept of it now)
        await verifier.verify(token)
    assert verifier.cache_hits == 2


async def test_a_kept_token_whose_key_is_retired_is_refused(idp: RunningProvider) -> None:
    """Once the issuer's key set no longer holds the key that verified a kept token, the token is refused, as a
    token signed by an unpublished key is."""
    clock = Clock()
    verifier = clocked_verifier(idp, clock, refresh_interval=0)
    old_token = idp.sign_in("sato")["access_token"]
    assert (await verifier.verify(old_token)).role is Role.secretariat
    assert (await verifier.verify(old_token)).role is Role.secretariat
    assert verifier.cache_hits == 1
    idp.provider.rotate()
    idp.provider.retire()  # the old key is gone from the JWKS
    # A token of the new key makes the verifier fetch the keys again: the old one is not among them any more.
    assert (await verifier.verify(idp.sign_in("sato")["access_token"])).role is Role.secretariat
    with pytest.raises(InvalidToken, match="does not publish"):
        await verifier.verify(old_token)


async def test_failures_are_not_kept_and_the_kept_tokens_are_bounded(
    idp: RunningProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = oidc_verifier(idp.issuer)
    nobody = idp.sign_in("nobody")["access_token"]
    for _ in range(2):
        with pytest.raises(NoPrincipal):
            await verifier.verify(nobody)
    assert verifier.cache_hits == 0
    monkeypatch.setattr("shinchoku_runtime.auth.verifier.VERIFIED_CACHED", 3)
    key = idp.provider.signing_key
    tokens = [forge(valid_claims(idp, sub=f"person-{n}"), key, key.kid) for n in range(5)]
    for token in tokens:
        await verifier.verify(token)
    for token in tokens[2:]:  # the three verified last are kept
        await verifier.verify(token)
    assert verifier.cache_hits == 3
    assert (await verifier.verify(tokens[0])).subject == "person-0"  # verified in full again
    assert verifier.cache_hits == 3
