"""One identity across HTTP and NATS: the NATS auth callout responder.

Where a deployment has an identity provider, a person connects to NATS with the same bearer token the HTTP
APIs take (nats-py `connect(token=…)`). nats-server (2.10+, `authorization { auth_callout { … } }`, see
`natsconf.AuthCallout`) sends every such connection attempt to this responder on `$SYS.REQ.USER.AUTH`; it
verifies the token exactly as the services do (`TokenVerifier`: the issuer's JWKS, audience, expiry), names
the principal, and answers with a NATS user JWT carrying that principal's rights (`natsconf.permissions_of`:
an agency publishes only `status.{agency}.>`, the secretariat its commands) that expires with the token. Any
other answer (a bad token, no token, a principal without NATS rights) is a refusal with its reason.

Why the auth callout and not decentralized JWT accounts: with accounts, every person would need a NATS user
JWT minted by an operator/account key hierarchy (nsc, a resolver, credentials files handed out and revoked
apart from the identity provider). The callout keeps one source of truth: the identity provider's token,
its lifetime and its revocation, mapped to rights by the same table as the HTTP routes. The services and
the responder itself keep their generated passwords (the callout's `auth_users`), so the platform still
starts when the identity provider is down; per-agency passwords remain the embedded default's way.

The requests are not sealed with an xkey (optional in nats-server): they travel on the responder's own TLS
connection and only its user may subscribe to the subject.

Run it as `python -m shinchoku_runtime.authcallout` with `SHINCHOKU_AUTHCALLOUT_*` (the NATS connection, as
any service: `NATS_URL`, `NATS_USER` = `auth`, `NATS_PASSWORD`, `NATS_TLS_CA_FILE`; `ISSUER_SEED` or
`ISSUER_SEED_FILE`: the account nkey seed whose public key is the callout's `issuer`; `READY_FILE`) and
`SHINCHOKU_AUTH_*` (the token verifier).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shinchoku_runtime import natsjwt
from shinchoku_runtime.auth import AuthSettings, InvalidToken, NoPrincipal, Principal, Role, TokenVerifier
from shinchoku_runtime.auth.jwks import KeysUnavailable
from shinchoku_runtime.auth.principal import principal_from_claims
from shinchoku_runtime.natsclient import connect_service
from shinchoku_runtime.natsconf import AUTH_CALLOUT_SUBJECT, AUTH_CALLOUT_USER, Permissions, permissions_of
from shinchoku_runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

#: The account a user lands in when nats-server runs without operator mode (its global account).
GLOBAL_ACCOUNT = "$G"
#: The longest a user JWT lives even when the token claims more (a revoked person is out within this).
MAX_TTL_SECONDS = 12 * 3600


class AuthCalloutSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHINCHOKU_AUTHCALLOUT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    nats_user: str | None = AUTH_CALLOUT_USER
    issuer_seed: SecretStr | None = Field(default=None, description="The account nkey seed that signs the answers")
    issuer_seed_file: Path | None = Field(default=None, description="Or a file (0600) holding that seed")
    account: str = Field(default=GLOBAL_ACCOUNT, description="Account the users are placed in")
    ready_file: Path | None = Field(
        default=None, description="Written once subscribed, removed while disconnected (a container healthcheck)"
    )

    def issuer(self) -> natsjwt.KeyPair:
        if self.issuer_seed is not None:
            return natsjwt.KeyPair.from_seed(self.issuer_seed.get_secret_value())
        if self.issuer_seed_file is not None:
            return natsjwt.KeyPair.from_seed(self.issuer_seed_file.read_text("utf-8"))
        raise SystemExit("SHINCHOKU_AUTHCALLOUT_ISSUER_SEED or …_ISSUER_SEED_FILE is required (the account nkey seed)")


def nats_permissions(principal: Principal) -> Permissions | None:
    """What a principal may do on NATS: an agency's and the secretariat's rights; none for the operator."""
    if principal.role is Role.agency and principal.agency is not None:
        return permissions_of(principal.agency.value)
    if principal.role is Role.secretariat:
        return permissions_of("secretariat")
    return None


def _user_permissions(perms: Permissions) -> dict[str, Any]:
    """A user JWT's `pub` / `sub` / `resp` from the rights `natsconf` renders into nats.conf."""
    conf = perms.to_conf()
    out: dict[str, Any] = {"pub": conf.get("publish", {}), "sub": conf.get("subscribe", {})}
    if conf.get("allow_responses"):
        out["resp"] = {"max": 1, "ttl": 0}
    return out


def user_claims(
    principal: Principal, perms: Permissions, *, user_nkey: str, expires: int, account: str
) -> dict[str, Any]:
    """The claims of the NATS user JWT for a principal (`aud` is the account it is placed in)."""
    return {
        "sub": user_nkey,
        "aud": account,
        "name": principal.label,
        "exp": expires,
        "nats": {
            **_user_permissions(perms),
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }


Verify = Callable[[str], Awaitable[tuple[Principal, int]]]


def token_verification(verifier: TokenVerifier) -> Verify:
    """A token's principal and expiry (`exp`), by the services' own verifier."""

    async def verify(token: str) -> tuple[Principal, int]:
        claims = await verifier.claims(token)
        return principal_from_claims(claims, verifier.mapping), int(claims["exp"])

    return verify


async def answer(request: bytes, *, verify: Verify, issuer: natsjwt.KeyPair, account: str = GLOBAL_ACCOUNT) -> bytes:
    """The signed authorization response to one request of nats-server: a user JWT, or a refusal."""
    try:
        claims = natsjwt.decode(request.decode("utf-8"))
    except (natsjwt.InvalidNatsJwt, UnicodeError) as e:
        log.warning("auth callout: a request that is no server-signed JWT: %s", e)
        raise
    nats = claims.get("nats") or {}
    server_id = (nats.get("server_id") or {}).get("id", "")
    user_nkey = nats.get("user_nkey", "")
    client = nats.get("client_info") or {}
    response: dict[str, Any] = {
        "sub": user_nkey,
        "aud": server_id,
        "nats": {"type": "authorization_response", "version": 2},
    }
    if nats.get("type") != "authorization_request" or not user_nkey or not server_id:
        response["nats"]["error"] = "not an authorization request"
        return natsjwt.encode(response, issuer).encode()
    token = (nats.get("connect_opts") or {}).get("auth_token")
    error: str | None = None
    if not token:
        error = "a bearer token is required (connect with token=…)"
    else:
        try:
            principal, expires = await verify(token)
        except (InvalidToken, NoPrincipal) as e:
            error = str(e)
        except KeysUnavailable as e:
            error = f"the identity provider's keys are unavailable: {e}"
        else:
            perms = nats_permissions(principal)
            if perms is None:
                error = f"{principal.label} has no rights on NATS"
            else:
                expires = min(expires, int(time.time()) + MAX_TTL_SECONDS)
                user = user_claims(principal, perms, user_nkey=user_nkey, expires=expires, account=account)
                response["nats"]["jwt"] = natsjwt.encode(user, issuer)
                log.info("auth callout: %s admitted from %s", principal.label, client.get("host", "?"))
    if error is not None:
        response["nats"]["error"] = error
        log.info("auth callout: refused a connection from %s: %s", client.get("host", "?"), error)
    return natsjwt.encode(response, issuer).encode()


class AuthCalloutResponder:
    """Answers nats-server's authorization requests on `$SYS.REQ.USER.AUTH` over the responder's connection."""

    def __init__(self, *, verify: Verify, issuer: natsjwt.KeyPair, account: str = GLOBAL_ACCOUNT) -> None:
        self.verify = verify
        self.issuer = issuer
        self.account = account
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> AuthCalloutResponder:
        # A queue group: several responders (replicas) share the requests, each answered once.
        self._sub = await nc.subscribe(AUTH_CALLOUT_SUBJECT, queue="shinchoku-authcallout", cb=self._on_request)
        await nc.flush()
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_request(self, msg: Msg) -> None:
        try:
            reply = await answer(msg.data, verify=self.verify, issuer=self.issuer, account=self.account)
        except (natsjwt.InvalidNatsJwt, UnicodeError):
            return  # logged by `answer`; without a valid request there is nobody to answer
        await msg.respond(reply)


def _ready_marker(path: Path | None) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    async def ready() -> None:
        if path is not None:
            path.write_text("ready\n", "utf-8")

    async def gone() -> None:
        if path is not None:
            path.unlink(missing_ok=True)

    return ready, gone


async def serve(settings: AuthCalloutSettings, auth: AuthSettings) -> None:
    """Run the responder until SIGTERM or SIGINT."""
    issuer = settings.issuer()
    verifier = TokenVerifier.from_settings(auth, data_dir=settings.data_dir)
    ready, gone = _ready_marker(settings.ready_file)
    nc = await connect_service(settings, name="shinchoku-authcallout", disconnected_cb=gone, reconnected_cb=ready)
    responder = await AuthCalloutResponder(
        verify=token_verification(verifier), issuer=issuer, account=settings.account
    ).start(nc)
    await ready()
    log.info("auth callout responder ready (issuer %s)", issuer.public)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await gone()
    await responder.stop()
    await nc.drain()


def main() -> None:
    settings = AuthCalloutSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(settings, AuthSettings()))


if __name__ == "__main__":
    main()
