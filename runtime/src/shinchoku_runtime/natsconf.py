"""The nats-server configuration: one user per agency, the secretariat, least-privilege service users, generated
secrets.

Secrets are generated once per deployment (never defaults) and kept in files readable by the owner only. The
configuration holds the client users' passwords as bcrypt hashes only (nats-server checks a `$2a$…` password by
bcrypt); the route password stays plaintext there, since the nodes dial each other with it.

One module of ~450 lines on purpose: the users, what each may do on the broker and the configuration text that
grants it are one least-privilege policy, written and checked together (tests/security read it as the one place).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from contracts.agencies import Agency
from contracts.streams import (
    ACCEPTED_STREAM,
    ALERT_SUBJECT_PREFIX,
    ALERTS_STREAM,
    BACKFILL_SUBJECT_PREFIX,
    CATALOG_BUCKET,
    CATALOG_CHANGED,
    CATALOG_MEASURE_GET,
    CLOSE_SUBJECT_PREFIX,
    INGEST_DURABLE,
    INGEST_MAX_DELIVERIES_ADVISORY,
    PUBLICATIONS_STREAM,
    REJECTED_STREAM,
    REPORTING_DURABLE,
    REVIEW_SUBJECT_PREFIX,
    STATUS_STREAM,
    agency_inbox_prefix,
)
from shinchoku_runtime.certs import TlsFiles

SERVICE_USERS = ("catalog", "ingest", "reporting", "admin")
#: The plan's follow-up secretariat (重点計画事務局): a principal of its own, not agency `digital`.
SECRETARIAT_USER = "secretariat"
SECRETS_FILE = "secrets.json"
#: The bcrypt hashes of the users' passwords, cached by (user, password fingerprint) so a restart does not rehash.
HASHES_FILE = "password-hashes.json"
#: bcrypt cost of the users' password hashes. nats-server checks the hash on every connection, and a stack opens
#: many at once (services, replicas, a 3-node cluster). Measured against the wheel's nats-server on the shared
#: 2-core machine (load ~6): 40 concurrent connects took 0.29 s at cost 6, 0.89 s at cost 8, and at cost 10 (one
#: check ~60 ms) they ran into nats-py's 2 s connect timeout. The passwords are 144-bit random tokens, so the cost
#: guards nothing a brute force could reach anyway: the hash keeps the plaintext out of nats.conf.
BCRYPT_COST = 6
CONFIG_FILE = "nats.conf"

API = "$JS.API"


def _stream_reads(stream: str) -> list[str]:
    """Reading a stream's state and single messages (never changing it)."""
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]


def _durable(stream: str, durable: str) -> list[str]:
    """Creating (or bringing to its settings), reading and pulling from one named consumer, and acking it."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.INFO.{stream}.{durable}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _catalog_bucket_reads() -> list[str]:
    """Reading and watching the CATALOG bucket (a watch is an ordered consumer of any name, acked by flow control)."""
    kv_stream = f"KV_{CATALOG_BUCKET}"
    return [
        *_stream_reads(kv_stream),
        f"{API}.DIRECT.GET.{kv_stream}",
        f"{API}.CONSUMER.CREATE.{kv_stream}",
        f"{API}.CONSUMER.CREATE.{kv_stream}.>",
        f"{API}.CONSUMER.INFO.{kv_stream}.>",
        f"{API}.CONSUMER.DELETE.{kv_stream}.>",
        f"$JS.FC.{kv_stream}.>",
    ]


@dataclass(frozen=True)
class Permissions:
    publish: list[str]
    subscribe: list[str]
    deny_publish: list[str] = field(default_factory=list)
    allow_responses: bool = False

    def to_conf(self) -> dict[str, Any]:
        pub: dict[str, Any] = {"allow": self.publish}
        if self.deny_publish:
            pub["deny"] = self.deny_publish
        out: dict[str, Any] = {"publish": pub, "subscribe": {"allow": self.subscribe}}
        if self.allow_responses:
            out["allow_responses"] = True
        return out


def agency_permissions(agency: Agency | str) -> Permissions:
    """An agency publishes only its own status subjects and hears only its own inbox, its own alerts, live, and the
    closed quarters' publications and restatements (DESIGN.md "Principals and access")."""
    return Permissions(
        publish=[f"status.{agency}.>"],
        subscribe=[
            f"{agency_inbox_prefix(agency)}.>",
            f"{ALERT_SUBJECT_PREFIX}.{agency}.>",
            *PUBLICATIONS_STREAM.subjects,
        ],
    )


def secretariat_permissions() -> Permissions:
    """The secretariat publishes its commands (reviews, closes, backfilled reports: ingest decides each) and hears
    its own inbox (JetStream acks) and the alerts (DESIGN.md "Principals and access")."""
    return Permissions(
        publish=[f"{prefix}.>" for prefix in (REVIEW_SUBJECT_PREFIX, CLOSE_SUBJECT_PREFIX, BACKFILL_SUBJECT_PREFIX)],
        subscribe=[f"{agency_inbox_prefix(SECRETARIAT_USER)}.>", f"{ALERT_SUBJECT_PREFIX}.>"],
    )


def permissions_of(user: str) -> Permissions:
    """The rights of any NATS user of the platform."""
    if user == SECRETARIAT_USER:
        return secretariat_permissions()
    return service_permissions(user) if user in SERVICE_USERS else agency_permissions(user)


def service_permissions(user: str) -> Permissions:
    """The least rights each service needs: no service creates, changes, deletes or purges a stream (the
    administrator does, `shinchoku streams apply`), deletes a message, or touches another service's consumer; each
    hears only its own inbox `_INBOX_{user}` (the table is in deploy/OPERATIONS.md)."""
    kv = f"$KV.{CATALOG_BUCKET}.>"
    inbox = f"{agency_inbox_prefix(user)}.>"
    if user == "catalog":
        return Permissions(
            publish=[
                CATALOG_CHANGED,
                kv,
                # Its own bucket, created when missing: an identical declaration is a no-op and another one is
                # refused (no STREAM.UPDATE), so this creates KV_CATALOG and changes nothing else.
                f"{API}.STREAM.CREATE.KV_{CATALOG_BUCKET}",
                *_catalog_bucket_reads(),
            ],
            subscribe=[CATALOG_MEASURE_GET, inbox],
            allow_responses=True,
        )
    if user == "ingest":
        return Permissions(
            publish=[
                # Admitted reports, reviews and closes (ACCEPTED's subjects), and rejections.
                *ACCEPTED_STREAM.subjects,
                "rejected.>",
                CATALOG_MEASURE_GET,
                *_durable(STATUS_STREAM.name, INGEST_DURABLE),
                # STATUS's messages by sequence (the outbox republishes and reviews read them); the published
                # streams' state (duplicate windows, the reconciler's last sequence).
                *_stream_reads(STATUS_STREAM.name),
                f"{API}.STREAM.INFO.{ACCEPTED_STREAM.name}",
                f"{API}.STREAM.INFO.{REJECTED_STREAM.name}",
                *_catalog_bucket_reads(),
            ],
            subscribe=[inbox, CATALOG_CHANGED, kv, INGEST_MAX_DELIVERIES_ADVISORY],
        )
    if user == "reporting":
        accepted = ACCEPTED_STREAM.name
        return Permissions(
            publish=[
                *_durable(accepted, REPORTING_DURABLE),
                # The rebuild's ephemeral replay
                # consumers of its own names (deleted after): any consumer on ACCEPTED, which it reads whole.
                f"{API}.CONSUMER.CREATE.{accepted}.>",
                f"{API}.CONSUMER.DURABLE.CREATE.{accepted}.>",
                f"{API}.CONSUMER.INFO.{accepted}.>",
                f"{API}.CONSUMER.MSG.NEXT.{accepted}.>",
                f"{API}.CONSUMER.DELETE.{accepted}.>",
                *_stream_reads(accepted),
                # Closed quarters' publications and restatements (the reporting cycle): reporting only.
                *PUBLICATIONS_STREAM.subjects,
                # The reviews a signed-in secretariat sends from the dashboard's measure page (onto STATUS, acked
                # on its inbox). Reviews only, never closes or backfills. The subject grants no authority: ingest
                # admits a review only with a verified bearer token of the secretariat in the message, and
                # reporting holds no key that can mint one, so it can only pass on the token the signed-in
                # person gave it; ingest records that person as the sender (reporting.dashboard.review).
                f"{REVIEW_SUBJECT_PREFIX}.>",
                # The alerts it raises and resolves (ALERTS), and the publications it reads.
                f"{ALERT_SUBJECT_PREFIX}.>",
                *_stream_reads(ALERTS_STREAM.name),
                *_stream_reads(PUBLICATIONS_STREAM.name),
                *_catalog_bucket_reads(),
            ],
            subscribe=[inbox, CATALOG_CHANGED, kv],
        )
    if user == "admin":
        return Permissions(publish=[">"], subscribe=[">"])
    raise ValueError(f"no such service user: {user}")


def all_users() -> list[str]:
    return [a.value for a in Agency] + [SECRETARIAT_USER, *SERVICE_USERS]


def generate_secrets() -> dict[str, str]:
    return {user: secrets.token_urlsafe(24) for user in all_users()}


def write_private(path: Path, text: str) -> None:
    """Write a secret-bearing file readable by its owner only (mode 0600, also when it existed before)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def load_or_create_secrets(directory: Path) -> dict[str, str]:
    """Secrets kept in `directory/secrets.json` (mode 0600), created on first use, completed if a user is new."""
    path = directory / SECRETS_FILE
    existing: dict[str, str] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    missing = [u for u in all_users() if u not in existing]
    if missing or not path.exists():
        fresh = generate_secrets()
        existing.update({u: fresh[u] for u in missing})
        write_private(path, json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return existing


def _conf_value(value: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        inner = "\n".join(f"{pad}  {k}: {_conf_value(v, indent + 1)}" for k, v in value.items())
        return "{\n" + inner + "\n" + pad + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_conf_value(v, indent) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


#: The cluster's route user (routes authenticate to each other with it; not a client user).
ROUTE_USER = "route"
#: The auth callout responder's user (`authcallout`): it alone hears the servers' authorization requests.
AUTH_CALLOUT_USER = "auth"
#: The subject nats-server sends authorization requests on (auth callout, nats-server 2.10+).
AUTH_CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
#: Seconds a TLS handshake may take (nats-server's default 0.5 s is short for a loaded machine).
TLS_TIMEOUT = 5


@dataclass(frozen=True)
class AuthCallout:
    """Delegate the authentication of every other client to a responder (`shinchoku_runtime.authcallout`).

    `issuer` is the public account nkey (`A…`) whose key signs the responder's answers; the responder's own user
    and the `bypass` users (the services, which keep their generated passwords) are checked by the server itself.
    """

    issuer: str
    password: str = field(repr=False)
    bypass: tuple[str, ...] = (*SERVICE_USERS,)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 4222
    store_dir: Path = Path("jetstream")
    monitor_port: int | None = None
    server_name: str = "shinchoku-1"
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()
    #: The route address this node gives its peers (gossip), when it differs from host:cluster_port (behind a
    #: proxy or NAT). Peers dial it for an implicit route, so it must reach this node the way the routes do.
    cluster_advertise: str | None = None
    #: Do not tell clients the other nodes' addresses: clients use only the URLs they were given.
    no_advertise: bool = False
    max_payload: int = 4 * 1024 * 1024
    #: TLS on the client port (required of every client); `client_verify` also asks each client a certificate.
    tls: TlsFiles | None = None
    client_verify: bool = False
    #: Mutual TLS between the nodes of the cluster (each node's certificate is used both ways).
    cluster_tls: TlsFiles | None = None
    #: Route authorization: a node accepts a route only with this password (and dials the others with it).
    route_password: str | None = field(default=None, repr=False)
    auth_callout: AuthCallout | None = None


def _tls_block(files: TlsFiles, *, verify: bool) -> dict[str, Any]:
    return {
        "cert_file": str(files.cert_file),
        "key_file": str(files.key_file),
        "ca_file": str(files.ca_file),
        "verify": verify,
        "timeout": TLS_TIMEOUT,
    }


def _with_credentials(route: str, password: str) -> str:
    scheme, sep, rest = route.partition("://")
    if not sep or "@" in rest:
        return route
    return f"{scheme}://{ROUTE_USER}:{password}@{rest}"


def hash_password(password: str, *, cost: int = BCRYPT_COST) -> str:
    """A bcrypt hash nats-server accepts as a user's password (`$2a$` prefix, which every nats-server knows)."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=cost, prefix=b"2a")).decode("ascii")


def _fingerprint(password: str) -> str:
    # Kept in the 0600 hash cache beside secrets.json (which holds the plaintext): it only tells a changed
    # password from the cached one, it protects nothing.
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def password_hashes(passwords: Mapping[str, str], directory: Path | None = None) -> dict[str, str]:
    """Each user's bcrypt hash, from `directory/password-hashes.json` (mode 0600) where the user's password is
    unchanged, else hashed anew (and cached there when a directory is given)."""
    path = directory / HASHES_FILE if directory is not None else None
    cached: dict[str, dict[str, str]] = {}
    if path is not None and path.exists():
        cached = json.loads(path.read_text("utf-8"))
    hashes: dict[str, str] = {}
    changed = False
    for user, password in passwords.items():
        entry = cached.get(user)
        fingerprint = _fingerprint(password)
        if entry is None or entry.get("fingerprint") != fingerprint:
            entry = {"fingerprint": fingerprint, "hash": hash_password(password)}
            cached[user] = entry
            changed = True
        hashes[user] = entry["hash"]
    if path is not None and (changed or not path.exists()):
        write_private(path, json.dumps(cached, indent=2, sort_keys=True) + "\n")
    return hashes


def client_passwords(passwords: Mapping[str, str], callout: AuthCallout | None = None) -> dict[str, str]:
    """The passwords of the configuration's client users (every user's, the callout responder's; not the
    route's): the ones `render_config`/`render_authorization` write as bcrypt hashes."""
    users = {user: passwords[user] for user in all_users()}
    if callout is not None:
        users[AUTH_CALLOUT_USER] = callout.password
    return users


def _authorization(
    passwords: dict[str, str], callout: AuthCallout | None, hashes: Mapping[str, str] | None
) -> dict[str, Any]:
    clients = client_passwords(passwords, callout)
    if hashes is None or any(user not in hashes for user in clients):
        hashes = password_hashes(clients)
    users: list[dict[str, Any]] = []
    for user in all_users():
        perms = permissions_of(user)
        users.append({"user": user, "password": hashes[user], "permissions": perms.to_conf()})
    block: dict[str, Any] = {"users": users}
    if callout is not None:
        responder = Permissions(publish=[], subscribe=[AUTH_CALLOUT_SUBJECT], allow_responses=True).to_conf()
        responder["publish"] = {"deny": [">"]}
        users.append({"user": AUTH_CALLOUT_USER, "password": hashes[AUTH_CALLOUT_USER], "permissions": responder})
        block["auth_callout"] = {"issuer": callout.issuer, "auth_users": [AUTH_CALLOUT_USER, *callout.bypass]}
    return block


def render_config(options: ServerOptions, passwords: dict[str, str], *, hashes: Mapping[str, str] | None = None) -> str:
    """nats-server configuration text with JetStream (`sync_interval: always`) and every user (bcrypt hashes of
    their passwords: `hashes` from `password_hashes`, or hashed here); TLS, route authorization and auth callout
    where the options ask for them."""
    conf: dict[str, Any] = {
        "server_name": options.server_name,
        "host": options.host,
        "port": options.port,
        "max_payload": options.max_payload,
        "jetstream": {
            "store_dir": str(options.store_dir),
            # The 2025 Jepsen analysis lost acknowledged writes under the default fsync interval.
            "sync_interval": "always",
        },
        "authorization": _authorization(passwords, options.auth_callout, hashes),
    }
    if options.tls is not None:
        conf["tls"] = _tls_block(options.tls, verify=options.client_verify)
    if options.monitor_port is not None:
        conf["http_port"] = options.monitor_port
    if options.cluster_name and options.cluster_port:
        routes = list(options.routes)
        cluster: dict[str, Any] = {
            "name": options.cluster_name,
            "host": options.host,
            "port": options.cluster_port,
        }
        if options.cluster_advertise:
            cluster["advertise"] = options.cluster_advertise
        if options.no_advertise:
            cluster["no_advertise"] = True
        if options.route_password is not None:
            routes = [_with_credentials(r, options.route_password) for r in routes]
            cluster["authorization"] = {"user": ROUTE_USER, "password": options.route_password, "timeout": TLS_TIMEOUT}
        if options.cluster_tls is not None:
            cluster["tls"] = _tls_block(options.cluster_tls, verify=True)
        cluster["routes"] = routes
        conf["cluster"] = cluster
    body = "\n".join(f"{k}: {_conf_value(v)}" for k, v in conf.items())
    return "# Generated by shinchoku: per-agency users, least-privilege services. Do not edit.\n" + body + "\n"


def write_config(directory: Path, options: ServerOptions) -> Path:
    """Write `directory/nats.conf` (mode 0600, it holds the secrets) and return its path."""
    passwords = load_or_create_secrets(directory)
    hashes = password_hashes(client_passwords(passwords, options.auth_callout), directory)
    path = directory / CONFIG_FILE
    write_private(path, render_config(options, passwords, hashes=hashes))
    return path


def user_url(host: str, port: int, user: str, password: str) -> str:
    return f"nats://{user}:{password}@{host}:{port}"


def render_authorization(
    passwords: dict[str, str],
    *,
    auth_callout: AuthCallout | None = None,
    hashes: Mapping[str, str] | None = None,
) -> str:
    """Only the `authorization` block (every user, its password's bcrypt hash and its permissions, the auth
    callout when given), for a server config that includes it from a secret (the NATS Helm chart's `$include`)."""
    header = "# Generated by shinchoku: per-agency users, least-privilege services. Do not edit.\n"
    return header + "authorization: " + _conf_value(_authorization(passwords, auth_callout, hashes)) + "\n"


def ensure_secret(directory: Path, name: str) -> str:
    """A generated secret that is no client user's (the route password, the callout responder's), kept in
    `directory/secrets.json` beside the users' (0600), created on first use."""
    existing = load_or_create_secrets(directory)
    if name not in existing:
        existing[name] = secrets.token_urlsafe(24)
        write_private(directory / SECRETS_FILE, json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return existing[name]


def rotate_secret(directory: Path, user: str) -> str:
    """Give one user (or the route, or the callout responder) a new random password in `directory/secrets.json`
    (mode 0600); returns it."""
    if user not in (*all_users(), ROUTE_USER, AUTH_CALLOUT_USER):
        raise ValueError(f"no such NATS user: {user}")
    existing = load_or_create_secrets(directory)
    existing[user] = secrets.token_urlsafe(24)
    write_private(directory / SECRETS_FILE, json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return existing[user]
