"""PostgreSQL over TLS as the deployments run it: a second PostgreSQL cluster of this machine's server (its own
port and directory; the shared one on 5432 is not touched) started with `ssl=on`, a certificate from the
deployment's CA and the committed deploy/postgres/pg_hba.conf. The database URL exactly as deploy/generate.py
renders it (`sslmode=verify-full`) connects through the services' engine over TLS; a plain connection is
refused by pg_hba, a server certificate from another CA and one that does not name the host are refused by
the client.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from shinchoku_runtime.certs import CertificateAuthority
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.natsserver import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("deploy_generate", ROOT / "deploy" / "generate.py")
assert _spec is not None
assert _spec.loader is not None
generate = importlib.util.module_from_spec(_spec)
sys.modules["deploy_generate"] = generate  # its dataclasses look their module up
_spec.loader.exec_module(generate)
BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PASSWORD = "a-test-password-for-the-scratch-cluster"


def _postgres_uid() -> int | None:
    try:
        return pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return None


pytestmark = pytest.mark.skipif(
    not BINDIRS or os.geteuid() != 0 or _postgres_uid() is None or shutil.which("runuser") is None,
    reason="needs PostgreSQL's server binaries, root and the postgres OS user to start a scratch cluster",
)


@dataclass
class Scratch:
    port: int
    ca: CertificateAuthority


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    bindir = BINDIRS[0]
    root = tmp_path_factory.mktemp("pgtls")
    uid = _postgres_uid()
    assert uid is not None
    root.chmod(0o755)
    for parent in root.parents:  # the postgres user must reach its directory
        if str(parent).startswith("/tmp/"):
            parent.chmod(parent.stat().st_mode | 0o011)
    ca = CertificateAuthority.load_or_create(root / "ca")
    server = ca.issue(root / "server", "postgres", dns=["localhost"])
    data, run = root / "data", root / "run"
    for d in (data, run):
        d.mkdir()
        os.chown(d, uid, -1)
    for f in (server.cert_file, server.key_file):
        os.chown(f, uid, -1)
    os.chown(server.cert_file.parent, uid, -1)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD)
    os.chown(pwfile, uid, -1)
    _as_postgres(
        str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}"
    )
    hba = data / "pg_hba.deploy.conf"
    shutil.copyfile(ROOT / "deploy" / "postgres" / "pg_hba.conf", hba)
    os.chown(hba, uid, -1)
    port = free_port()
    options = " ".join(
        [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={run}",
            "-c ssl=on",
            f"-c ssl_cert_file={server.cert_file}",
            f"-c ssl_key_file={server.key_file}",
            "-c ssl_min_protocol_version=TLSv1.2",
            f"-c hba_file={hba}",
        ]
    )
    _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(run / "postgres.log"), "-o", options, "-w", "start")
    try:
        wait_for_port("127.0.0.1", port, 30)
        yield Scratch(port=port, ca=ca)
    finally:
        _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")


def _url(scratch: Scratch, *, host: str = "localhost", ca_file: Path | None = None) -> str:
    url: str = generate.database_url("postgres", PASSWORD, host, ca_file=str(ca_file or scratch.ca.cert_file))
    return url.replace(":5432/", f":{scratch.port}/")


def test_the_generated_url_connects_over_verified_tls(scratch: Scratch) -> None:
    url = _url(scratch)
    assert "sslmode=verify-full" in url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ssl, version = conn.execute(
                sa.text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).one()
    finally:
        engine.dispose()
    assert ssl is True
    assert version in ("TLSv1.2", "TLSv1.3")


def test_a_plain_connection_is_refused(scratch: Scratch) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(
            host="127.0.0.1",
            port=scratch.port,
            user="postgres",
            password=PASSWORD,
            dbname="postgres",
            sslmode="disable",
        )


def test_a_server_certificate_from_another_ca_is_refused(scratch: Scratch, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other", name="Someone else's CA")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(_url(scratch, ca_file=other.cert_file))


def test_a_certificate_that_does_not_name_the_host_is_refused(scratch: Scratch) -> None:
    # The certificate names `localhost`; verify-full checks the name the client dialled.
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(_url(scratch, host="127.0.0.1"))
