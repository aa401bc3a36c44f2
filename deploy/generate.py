"""Generate the deployment's secrets and the files that carry them; nothing generated is committed.

    .venv/bin/python deploy/generate.py                 # once, before `docker compose up`
    .venv/bin/python deploy/generate.py --rotate mof    # new password for one agency (or service, or `route`)
    .venv/bin/python deploy/generate.py --renew-certs   # new leaf certificates from the same CA
    .venv/bin/python deploy/generate.py --auth-callout  # people connect to NATS with their identity provider's token

Writes, under `deploy/generated/` (or `--out`), every secret mode 0600 (certificates, which are public, 0644):

    secrets.json               NATS passwords, one per agency and per service, the route's and the callout's
    db-secrets.json            PostgreSQL passwords: the superuser's and one per service database
    app-secrets.json           the services' own secrets: the key of the dashboard's session cookies
    nats/nats-{1,2,3}.conf     the 3-node cluster (JetStream, `sync_interval: always`, per-agency users, TLS on
                               clients and routes, route authorization; the auth callout with --auth-callout)
    nats/auth-callout-issuer.nk  the account nkey seed the callout responder signs with (--auth-callout)
    tls/ca.pem, ca-key.pem     the deployment's CA (or a copy of the operator's, `--ca-cert`/`--ca-key`)
    tls/{nats-1..3,nats-k8s,postgres,proxy}.pem and -key.pem   the servers' certificates (kept until renewed)
    env/{service}.env          each service's NATS password and database URL (`sslmode=verify-full`)
    env/postgres.env           the superuser's password and the per-service passwords for the init script
    env/authcallout.env        the callout responder's NATS password and (--auth-callout) its account seed
    agencies/{agency}.txt      what to hand to a ministry: its user, password, inbox prefix, and the CA to trust
    k8s/secrets.yaml           the same as Kubernetes Secrets (NATS `auth.conf` for the Helm chart, one per
                               service, the TLS secrets of NATS, the Ingress and the CA)
    k8s/nats-values-secrets.yaml  the route password for the NATS Helm chart (a second `-f`)

Re-running keeps every existing secret and certificate (configs are rewritten from them), so it is safe to run
again; a certificate is issued anew when missing, within 30 days of its end, or with `--renew-certs`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.agencies import Agency
from contracts.streams import agency_inbox_prefix
from shinchoku_runtime.certs import CA_CERT_FILE, CertificateAuthority, TlsFiles, expires
from shinchoku_runtime.natsconf import (
    AUTH_CALLOUT_USER,
    ROUTE_USER,
    SERVICE_USERS,
    AuthCallout,
    ServerOptions,
    client_passwords,
    ensure_secret,
    load_or_create_secrets,
    password_hashes,
    render_authorization,
    render_config,
    rotate_secret,
    write_private,
)
from shinchoku_runtime.natsjwt import PREFIX_ACCOUNT, KeyPair

SERVICES = ("catalog", "ingest", "reporting")
NATS_NODES = 3
CLUSTER_NAME = "shinchoku"
CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222
DEFAULT_OUT = Path(__file__).resolve().parent / "generated"
#: Where the containers find the files (compose mounts them there; the k8s manifests mount the Secrets there).
NATS_TLS_DIR = "/etc/nats/tls"
SERVICE_CA_FILE = "/etc/shinchoku/tls/ca.pem"
CALLOUT_SEED = "auth-callout-issuer.nk"
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class Target:
    """Where the services find PostgreSQL and the NATS nodes, in compose or in Kubernetes."""

    postgres_host: str
    nats_hosts: tuple[str, ...]


COMPOSE = Target(postgres_host="postgres", nats_hosts=tuple(f"nats-{i}" for i in range(1, NATS_NODES + 1)))


def db_secrets(out: Path) -> dict[str, str]:
    """PostgreSQL passwords (superuser `postgres` and one role per service), created once and kept."""
    path = out / "db-secrets.json"
    existing: dict[str, str] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    wanted = ("postgres", *SERVICES)
    if any(name not in existing for name in wanted):
        for name in wanted:
            existing.setdefault(name, secrets.token_urlsafe(24))
        write_private(path, json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return existing


def app_secrets(out: Path) -> dict[str, str]:
    """The services' own secrets (the key signing the dashboard's session cookies, the same on every reporting
    replica), created once and kept: rotating it signs everyone out of the dashboard, nothing else."""
    path = out / "app-secrets.json"
    existing: dict[str, str] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    if "dashboard-session" not in existing:
        existing["dashboard-session"] = secrets.token_urlsafe(48)
        write_private(path, json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return existing


def node_options(
    index: int,
    target: Target = COMPOSE,
    *,
    route_password: str | None = None,
    auth_callout: AuthCallout | None = None,
) -> ServerOptions:
    """NATS node `index` (1-based) of the cluster: routes to the two others, TLS on clients and routes with the
    node's certificate as mounted in its container, route authorization when `route_password` is given."""
    name = target.nats_hosts[index - 1]
    tls = TlsFiles(
        cert_file=Path(f"{NATS_TLS_DIR}/{name}.pem"),
        key_file=Path(f"{NATS_TLS_DIR}/{name}-key.pem"),
        ca_file=Path(f"{NATS_TLS_DIR}/{CA_CERT_FILE}"),
    )
    return ServerOptions(
        host="0.0.0.0",
        port=CLIENT_PORT,
        store_dir=Path("/data/jetstream"),
        monitor_port=MONITOR_PORT,
        server_name=name,
        cluster_name=CLUSTER_NAME,
        cluster_port=CLUSTER_PORT,
        routes=tuple(f"nats-route://{host}:{CLUSTER_PORT}" for host in target.nats_hosts if host != name),
        tls=tls,
        cluster_tls=tls,
        route_password=route_password,
        auth_callout=auth_callout,
    )


def database_url(service: str, password: str, host: str, *, ca_file: str = SERVICE_CA_FILE) -> str:
    """A service's PostgreSQL URL: TLS required and the server's certificate checked against the CA and the host
    name (`sslmode=verify-full`)."""
    return f"postgresql://{service}:{password}@{host}:5432/{service}?sslmode=verify-full&sslrootcert={ca_file}"


def service_secret_env(
    service: str, nats: dict[str, str], db: dict[str, str], postgres_host: str, app: dict[str, str]
) -> dict[str, str]:
    """The secret settings of a service: its NATS password and its database URL (which holds a password);
    reporting's dashboard also its session key."""
    prefix = f"SHINCHOKU_{service.upper()}_"
    env = {
        f"{prefix}NATS_PASSWORD": nats[service],
        f"{prefix}DATABASE_URL": database_url(service, db[service], postgres_host),
    }
    if service == "reporting":
        env[f"{prefix}DASHBOARD_SESSION_SECRET"] = app["dashboard-session"]
    return env


def streams_secret_env(nats: dict[str, str]) -> dict[str, str]:
    """The stream job's one secret: the administrator's NATS password (only it creates or changes a stream)."""
    return {"SHINCHOKU_NATS_ADMIN_PASSWORD": nats["admin"]}


@dataclass(frozen=True)
class Certificates:
    """What `certificates` issued: the CA and each server's files, by name."""

    ca: CertificateAuthority
    files: dict[str, TlsFiles]


def _due(files: TlsFiles) -> bool:
    if not (files.cert_file.exists() and files.key_file.exists()):
        return True
    return expires(files.cert_file) - dt.datetime.now(dt.UTC) < RENEW_BEFORE


def certificates(
    out: Path,
    *,
    renew: bool = False,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    public_hosts: tuple[str, ...] = (),
    namespace: str = "shinchoku",
    k8s_postgres_host: str = "postgres.shinchoku.svc.cluster.local",
) -> Certificates:
    """The deployment's CA (generated once, or the operator's) and the servers' certificates, each kept until
    renewed. Names: each compose NATS node; `nats-k8s` for the Helm chart's pods (one Secret for all);
    `postgres`; `proxy` for HTTPS (localhost and `public_hosts`)."""
    directory = out / "tls"
    if ca_cert is not None and ca_key is not None:
        ca = CertificateAuthority.from_files(ca_cert, ca_key)
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / CA_CERT_FILE).exists() or (directory / CA_CERT_FILE).read_bytes() != ca_cert.read_bytes():
            shutil.copyfile(ca_cert, directory / CA_CERT_FILE)
            os.chmod(directory / CA_CERT_FILE, 0o644)
        ca = CertificateAuthority(cert=ca.cert, key=ca.key, cert_file=directory / CA_CERT_FILE)
    else:
        ca = CertificateAuthority.load_or_create(directory, name="Shinchoku deployment CA")
    svc = f"{namespace}.svc.cluster.local"
    wanted: dict[str, dict[str, Any]] = {
        **{host: {"dns": [host, "localhost"], "client": True} for host in COMPOSE.nats_hosts},
        "nats-k8s": {
            "dns": ["nats", f"nats.{svc}", f"*.nats-headless.{svc}", f"nats-headless.{svc}", "localhost"],
            "client": True,
        },
        "postgres": {"dns": sorted({"postgres", k8s_postgres_host})},
        "proxy": {"dns": sorted({"localhost", *public_hosts}), "ips": ["127.0.0.1"]},
    }
    files: dict[str, TlsFiles] = {}
    for name, names in wanted.items():
        current = TlsFiles(directory / f"{name}.pem", directory / f"{name}-key.pem", ca.cert_file)
        if renew or _due(current):
            current = ca.issue(
                directory, name, dns=names["dns"], ips=names.get("ips", ()), client=names.get("client", False)
            )
        files[name] = current
    return Certificates(ca=ca, files=files)


def callout_issuer(out: Path) -> KeyPair:
    """The account nkey whose seed the callout responder signs with (0600), created once."""
    path = out / "nats" / CALLOUT_SEED
    if path.exists():
        return KeyPair.from_seed(path.read_text("utf-8"))
    key = KeyPair.create(PREFIX_ACCOUNT)
    write_private(path, key.seed + "\n")
    return key


def _tls_secret(name: str, namespace: str, files: TlsFiles) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "shinchoku"}},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": files.cert_file.read_text("ascii"),
            "tls.key": files.key_file.read_text("ascii"),
            "ca.crt": files.ca_file.read_text("ascii"),
        },
    }


def _env_file(values: dict[str, str]) -> str:
    return "# Generated by deploy/generate.py: secrets, never commit.\n" + "".join(
        f"{k}={v}\n" for k, v in values.items()
    )


def _secret_manifest(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "shinchoku"}},
        "type": "Opaque",
        "stringData": data,
    }


def generate(
    out: Path,
    *,
    rotate: tuple[str, ...] = (),
    namespace: str = "shinchoku",
    k8s_postgres_host: str,
    renew_certs: bool = False,
    auth_callout: bool = False,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    public_hosts: tuple[str, ...] = (),
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    load_or_create_secrets(out)
    ensure_secret(out, ROUTE_USER)
    ensure_secret(out, AUTH_CALLOUT_USER)
    for user in rotate:
        rotate_secret(out, user)
    nats = load_or_create_secrets(out)
    db = db_secrets(out)
    app = app_secrets(out)
    certs = certificates(
        out,
        renew=renew_certs,
        ca_cert=ca_cert,
        ca_key=ca_key,
        public_hosts=public_hosts,
        namespace=namespace,
        k8s_postgres_host=k8s_postgres_host,
    )
    callout = None
    if auth_callout:
        callout = AuthCallout(issuer=callout_issuer(out).public, password=nats[AUTH_CALLOUT_USER])

    # The users' passwords go into the configurations as bcrypt hashes (cached in the 0600 password-hashes.json
    # so a run with unchanged passwords does not rehash); the route password stays plaintext (nodes dial with it).
    hashes = password_hashes(client_passwords(nats, callout), out)
    for i in range(1, NATS_NODES + 1):
        options = node_options(i, route_password=nats[ROUTE_USER], auth_callout=callout)
        write_private(out / "nats" / f"nats-{i}.conf", render_config(options, nats, hashes=hashes))

    for service in SERVICES:
        write_private(out / "env" / f"{service}.env", _env_file(service_secret_env(service, nats, db, "postgres", app)))
    write_private(out / "env" / "streams.env", _env_file(streams_secret_env(nats)))
    postgres_env = {"POSTGRES_PASSWORD": db["postgres"]}
    postgres_env |= {f"SHINCHOKU_DB_PASSWORD_{s.upper()}": db[s] for s in SERVICES}
    write_private(out / "env" / "postgres.env", _env_file(postgres_env))
    callout_env = {"SHINCHOKU_AUTHCALLOUT_NATS_PASSWORD": nats[AUTH_CALLOUT_USER]}
    if auth_callout:
        callout_env["SHINCHOKU_AUTHCALLOUT_ISSUER_SEED"] = callout_issuer(out).seed
    write_private(out / "env" / "authcallout.env", _env_file(callout_env))

    for agency in Agency:
        write_private(
            out / "agencies" / f"{agency.value}.txt",
            f"# NATS credentials of {agency.value}: publish on status.{agency.value}.> only.\n"
            f"user: {agency.value}\npassword: {nats[agency.value]}\ninbox_prefix: {agency_inbox_prefix(agency)}\n"
            "tls: required; trust the CA certificate handed over with this file (tls/ca.pem)\n",
        )

    import yaml  # the dev group's; only needed here

    auth_conf = render_authorization(nats, auth_callout=callout, hashes=hashes)
    documents = [
        _secret_manifest("shinchoku-nats-auth", namespace, {"auth.conf": auth_conf}),
        _secret_manifest("shinchoku-streams", namespace, streams_secret_env(nats)),
    ]
    for service in SERVICES:
        documents.append(
            _secret_manifest(
                f"shinchoku-{service}", namespace, service_secret_env(service, nats, db, k8s_postgres_host, app)
            )
        )
    documents.append(_tls_secret("shinchoku-nats-tls", namespace, certs.files["nats-k8s"]))
    documents.append(_tls_secret("shinchoku-https", namespace, certs.files["proxy"]))
    documents.append(_secret_manifest("shinchoku-ca", namespace, {"ca.pem": certs.ca.cert_file.read_text("ascii")}))
    documents.append(_secret_manifest("shinchoku-authcallout", namespace, callout_env))
    write_private(
        out / "k8s" / "secrets.yaml",
        "# Generated by deploy/generate.py: secrets, never commit.\n"
        + yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True),
    )
    # The route password for the NATS Helm chart (it renders cluster.authorization and the route URLs from it).
    chart = {"config": {"cluster": {"routeURLs": {"user": ROUTE_USER, "password": nats[ROUTE_USER]}}}}
    write_private(
        out / "k8s" / "nats-values-secrets.yaml",
        "# Generated by deploy/generate.py: secrets, never commit. helm … -f deploy/k8s/nats-values.yaml -f this\n"
        + yaml.safe_dump(chart, sort_keys=False),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Output directory (default deploy/generated)")
    users = [a.value for a in Agency] + ["secretariat", *SERVICE_USERS, ROUTE_USER, AUTH_CALLOUT_USER]
    parser.add_argument(
        "--rotate", action="append", default=[], choices=users, metavar="USER", help="New password for USER"
    )
    parser.add_argument("--renew-certs", action="store_true", help="Issue new server certificates from the same CA")
    parser.add_argument(
        "--auth-callout", action="store_true", help="People connect to NATS with their identity provider's token"
    )
    parser.add_argument("--ca-cert", type=Path, help="The operator's CA certificate (PEM) to issue from")
    parser.add_argument("--ca-key", type=Path, help="Its private key (PEM, ECDSA), read only")
    parser.add_argument(
        "--public-host", action="append", default=[], help="A name the HTTPS proxy is reached by (repeatable)"
    )
    parser.add_argument("--namespace", default="shinchoku", help="Kubernetes namespace of the Secrets")
    parser.add_argument(
        "--k8s-postgres-host",
        default="postgres.shinchoku.svc.cluster.local",
        help="PostgreSQL host the Kubernetes services connect to",
    )
    args = parser.parse_args(argv)
    if (args.ca_cert is None) != (args.ca_key is None):
        parser.error("--ca-cert and --ca-key go together")
    generate(
        args.out,
        rotate=tuple(args.rotate),
        namespace=args.namespace,
        k8s_postgres_host=args.k8s_postgres_host,
        renew_certs=args.renew_certs,
        auth_callout=args.auth_callout,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        public_hosts=tuple(args.public_host),
    )
    rotated = f" (new password for {', '.join(args.rotate)})" if args.rotate else ""
    renewed = " (certificates renewed)" if args.renew_certs else ""
    sys.stdout.write(f"wrote {args.out}{rotated}{renewed}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
