"""deploy/generate.py and the operations it supports: private files, secrets kept across runs, rotating one
agency's password on a live server (OPERATIONS.md's procedure), and the PostgreSQL init script."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import bcrypt
import nats
import pytest
import sqlalchemy as sa
from cryptography import x509
from nats.aio.client import Client
from nats.errors import Error as NatsError

from shinchoku_runtime.certs import CertificateAuthority
from shinchoku_runtime.db import normalise_url
from shinchoku_runtime.natsconf import write_config
from shinchoku_runtime.natsjwt import KeyPair
from shinchoku_runtime.natsserver import NatsServer
from shinchoku_runtime.testing import pg_admin_url, postgres_reachable

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "deploy" / "generate.py"


def _generate(out: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(GENERATE), "--out", str(out), *args], check=True, capture_output=True, timeout=60
    )


def test_every_generated_file_is_private_and_secrets_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    _generate(out)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 3 + 4 + 17 + 3
    for path in files:
        # Certificates are public (a container under another uid reads the CA's); every key and secret is 0600.
        public = path.parent.name == "tls" and path.suffix == ".pem" and not path.name.endswith("-key.pem")
        assert stat.S_IMODE(path.stat().st_mode) == (0o644 if public else 0o600), path
    keys = sorted(p.name for p in (out / "tls").glob("*-key.pem"))
    assert keys == sorted(f"{n}-key.pem" for n in ("ca", "nats-1", "nats-2", "nats-3", "nats-k8s", "postgres", "proxy"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    before = json.loads((out / "secrets.json").read_text())
    db_before = json.loads((out / "db-secrets.json").read_text())
    _generate(out)
    assert json.loads((out / "secrets.json").read_text()) == before, "a re-run must not change any password"
    assert json.loads((out / "db-secrets.json").read_text()) == db_before
    _generate(out, "--rotate", "mof")
    after = json.loads((out / "secrets.json").read_text())
    assert after["mof"] != before["mof"]
    assert {k: v for k, v in after.items() if k != "mof"} == {k: v for k, v in before.items() if k != "mof"}
    # The configuration holds the new password's bcrypt hash (never the password itself).
    conf = (out / "nats" / "nats-2.conf").read_text()
    assert after["mof"] not in conf
    mof_hash = re.search(r'user: "mof"\s*\n\s*password: "([^"]*)"', conf)
    assert mof_hash is not None
    assert bcrypt.checkpw(after["mof"].encode(), mof_hash.group(1).encode())
    assert f"password: {after['mof']}" in (out / "agencies" / "mof.txt").read_text()
    assert len(set(after.values())) == len(after), "every user has its own password"


async def _connect(url: str, user: str, password: str, closed: asyncio.Event | None = None) -> Client | None:
    async def on_closed() -> None:
        if closed is not None:
            closed.set()

    async def on_error(_e: Exception) -> None:
        return None

    try:
        return await nats.connect(
            url,
            user=user,
            password=password,
            allow_reconnect=closed is None,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            closed_cb=on_closed,
            error_cb=on_error,
        )
    except (NatsError, OSError):
        return None


async def test_rotating_an_agency_password_on_a_live_server(tmp_path: Path) -> None:
    """OPERATIONS.md: rotate with generate.py, reload the servers; the old password stops working at once."""
    server = NatsServer.create(tmp_path / "nats")
    server.start()
    try:
        old = server.passwords["mof"]
        closed = asyncio.Event()
        session = await _connect(server.plain_url, "mof", old, closed)
        assert session is not None
        other = await _connect(server.plain_url, "digital", server.passwords["digital"])
        assert other is not None

        # The same secrets file format: generate.py rotates it, the config is rendered again, SIGHUP reloads.
        _generate(server.directory, "--rotate", "mof")
        new = server.passwords["mof"]
        assert new != old
        write_config(server.directory, server.options)
        server.signal(signal.SIGHUP)

        await asyncio.wait_for(closed.wait(), timeout=10)  # the server drops the session of the old password
        assert await _connect(server.plain_url, "mof", old) is None
        fresh = await _connect(server.plain_url, "mof", new)
        assert fresh is not None
        await fresh.close()
        assert other.is_connected, "other agencies are not disturbed"
        await other.close()
    finally:
        server.stop()


@pytest.mark.postgres
@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_postgres_init_script_creates_one_owned_database_per_service() -> None:
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    admin = sa.make_url(normalise_url(pg_admin_url()))
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    passwords = {s: f"pw-{s}-'quoted'" for s in ("catalog", "ingest", "reporting")}
    env = {
        **os.environ,
        "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "POSTGRES_USER": admin.username or "postgres",
        "SHINCHOKU_DB_PREFIX": prefix,
        **{f"SHINCHOKU_DB_PASSWORD_{s.upper()}": p for s, p in passwords.items()},
    }
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    script = str(ROOT / "deploy" / "postgres" / "init-databases.sh")
    try:
        refused = subprocess.run(
            ["sh", script], env={**env, "SHINCHOKU_DB_PASSWORD_CATALOG": ""}, capture_output=True, text=True
        )
        assert refused.returncode != 0
        assert "SHINCHOKU_DB_PASSWORD_CATALOG is not set" in refused.stderr
        done = subprocess.run(["sh", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        with engine.connect() as conn:
            owners: dict[str, str] = dict(
                conn.execute(
                    sa.text("select datname, pg_get_userbyid(datdba) from pg_database where datname like :p"),
                    {"p": f"{prefix}%"},
                ).all()
            )
        assert owners == {f"{prefix}{s}": f"{prefix}{s}" for s in passwords}
    finally:
        with engine.connect() as conn:
            for s in passwords:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}{s}" WITH (FORCE)'))
                conn.execute(sa.text(f'DROP ROLE IF EXISTS "{prefix}{s}"'))
        engine.dispose()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_are_kept_renewed_from_the_same_ca_and_the_route_password_rotates(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    _generate(out)
    ca, node = _cert(out / "tls" / "ca.pem"), _cert(out / "tls" / "nats-1.pem")
    assert node.issuer == ca.subject
    route = json.loads((out / "secrets.json").read_text())["route"]
    assert f'password: "{route}"' in (out / "nats" / "nats-1.conf").read_text()
    _generate(out)
    assert _cert(out / "tls" / "nats-1.pem").serial_number == node.serial_number, "a re-run keeps certificates"

    _generate(out, "--renew-certs", "--rotate", "route")
    renewed = _cert(out / "tls" / "nats-1.pem")
    assert renewed.serial_number != node.serial_number
    assert _cert(out / "tls" / "ca.pem").serial_number == ca.serial_number, "renewal keeps the CA (no trust change)"
    renewed.verify_directly_issued_by(ca)
    new_route = json.loads((out / "secrets.json").read_text())["route"]
    assert new_route != route
    text = (out / "nats" / "nats-2.conf").read_text()
    assert route not in text
    assert f"route:{new_route}@nats-1:6222" in text


def test_the_operators_ca_and_the_auth_callout(tmp_path: Path) -> None:
    operator = CertificateAuthority.load_or_create(tmp_path / "operator-ca", name="Operator CA")
    out = tmp_path / "generated"
    _generate(
        out,
        "--ca-cert",
        str(operator.cert_file),
        "--ca-key",
        str(tmp_path / "operator-ca" / "ca-key.pem"),
        "--auth-callout",
        "--public-host",
        "shinchoku.example.org",
    )
    assert not (out / "tls" / "ca-key.pem").exists(), "the operator's CA key is not copied"
    assert (out / "tls" / "ca.pem").read_bytes() == operator.cert_file.read_bytes()
    proxy = _cert(out / "tls" / "proxy.pem")
    assert proxy.issuer == operator.cert.subject
    names = proxy.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "shinchoku.example.org" in names.get_values_for_type(x509.DNSName)
    seed = (out / "nats" / "auth-callout-issuer.nk").read_text().strip()
    assert stat.S_IMODE((out / "nats" / "auth-callout-issuer.nk").stat().st_mode) == 0o600
    issuer = KeyPair.from_seed(seed).public
    conf = (out / "nats" / "nats-3.conf").read_text()
    assert f'issuer: "{issuer}"' in conf
    assert 'auth_users: ["auth", "catalog", "ingest", "reporting", "admin"]' in conf
    env = (out / "env" / "authcallout.env").read_text()
    assert f"SHINCHOKU_AUTHCALLOUT_ISSUER_SEED={seed}" in env
