"""The generated nats.conf holds no user's password, only bcrypt hashes of them (issue #16): the embedded default's
(`write_config`, what `shinchoku up` runs) and the deployment's (`deploy/generate.py`: every node's configuration
and the Kubernetes `auth.conf`). A real nats-server from the wheel accepts the right password against the hash
and refuses a wrong one. The route password alone stays plaintext (the nodes dial each other with it).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import nats
import pytest
import yaml

from contracts.agencies import Agency
from contracts.streams import agency_inbox_prefix
from shinchoku_runtime.natsconf import (
    AUTH_CALLOUT_USER,
    BCRYPT_COST,
    CONFIG_FILE,
    HASHES_FILE,
    ROUTE_USER,
    SECRETARIAT_USER,
    SERVICE_USERS,
    all_users,
    load_or_create_secrets,
    write_config,
)
from shinchoku_runtime.natsserver import NatsServer

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "deploy" / "generate.py"
#: A `password: "…"` line of a nats.conf, and its value.
PASSWORD_LINE = re.compile(r'\bpassword:\s*"([^"]*)"')
BCRYPT_HASH = re.compile(rf"^\$2a\${BCRYPT_COST:02d}\$[./A-Za-z0-9]{{53}}$")


def _password_values(text: str) -> list[str]:
    return PASSWORD_LINE.findall(text)


def _assert_hashed(text: str, passwords: dict[str, str], *, users: list[str], plaintext_allowed: set[str]) -> None:
    for user in users:
        assert passwords[user] not in text, f"{user}'s password is in the configuration in clear"
    values = _password_values(text)
    hashed = [v for v in values if v not in plaintext_allowed]
    assert len(hashed) == len(users), f"one password line per user expected, found {len(hashed)}"
    for value in hashed:
        assert BCRYPT_HASH.match(value), f"not a bcrypt hash: {value[:8]}…"
    # Every user's hash is of that user's password (the user's block names it just before its password).
    for user in users:
        block = re.search(rf'user:\s*"{re.escape(user)}"\s*\n\s*password:\s*"([^"]*)"', text)
        assert block is not None, f"no user block for {user}"
        assert bcrypt.checkpw(passwords[user].encode(), block.group(1).encode()), user


def test_embedded_config_holds_bcrypt_hashes_only_and_keeps_them(tmp_path: Path) -> None:
    server = NatsServer.create(tmp_path / "nats")
    path = write_config(server.directory, server.options)
    text = path.read_text("utf-8")
    passwords = load_or_create_secrets(server.directory)
    users = all_users()
    assert {*Agency, SECRETARIAT_USER, *SERVICE_USERS} == {*users}
    _assert_hashed(text, passwords, users=users, plaintext_allowed=set())
    cache = server.directory / HASHES_FILE
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # A restart does not rehash: the same configuration, byte for byte, and quickly.
    start = time.monotonic()
    assert write_config(server.directory, server.options).read_text("utf-8") == text
    assert time.monotonic() - start < 1.0
    # A changed password is hashed anew (the cache is keyed by the password, not only the user).
    secrets_file = server.directory / "secrets.json"
    changed = dict(passwords, mof="a-new-password-for-mof-0123456789")
    secrets_file.write_text(json.dumps(changed), "utf-8")
    text = write_config(server.directory, server.options).read_text("utf-8")
    _assert_hashed(text, changed, users=users, plaintext_allowed=set())


async def test_nats_server_checks_the_hash(tmp_path: Path) -> None:
    server = NatsServer.create(tmp_path / "nats").start()
    try:
        passwords = server.passwords
        for user in all_users():
            inbox = agency_inbox_prefix(user) if user in {a.value for a in Agency} else "_INBOX"
            nc = await nats.connect(
                server.plain_url,
                user=user,
                password=passwords[user],
                inbox_prefix=inbox,
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
            await nc.flush()
            await nc.close()
        for wrong in ("wrong", passwords["digital"][:-1], passwords["mof"]):
            with pytest.raises(Exception, match=r"[Aa]uthorization"):
                await nats.connect(
                    server.plain_url, user="digital", password=wrong, allow_reconnect=False, max_reconnect_attempts=0
                )
        # The hash itself is no password: a client presenting what the configuration holds is refused.
        stored = _password_values((server.directory / CONFIG_FILE).read_text("utf-8"))[0]
        with pytest.raises(Exception, match=r"[Aa]uthorization"):
            await nats.connect(
                server.plain_url,
                user=all_users()[0],
                password=stored,
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
    finally:
        server.stop()


def test_deployment_configs_hold_bcrypt_hashes_only(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    subprocess.run(
        [sys.executable, str(GENERATE), "--out", str(out), "--auth-callout"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    passwords = json.loads((out / "secrets.json").read_text())
    users = all_users()
    route = passwords[ROUTE_USER]
    for node in sorted((out / "nats").glob("nats-*.conf")):
        text = node.read_text("utf-8")
        # The callout responder's password is hashed too; the route password stays (the nodes dial with it).
        _assert_hashed(text, passwords, users=[*users, AUTH_CALLOUT_USER], plaintext_allowed={route})
        assert f'password: "{route}"' in text
    secrets = [d for d in yaml.safe_load_all((out / "k8s" / "secrets.yaml").read_text()) if d]
    (auth_conf,) = [d["stringData"]["auth.conf"] for d in secrets if d["metadata"]["name"] == "shinchoku-nats-auth"]
    _assert_hashed(auth_conf, passwords, users=[*users, AUTH_CALLOUT_USER], plaintext_allowed=set())
    assert stat.S_IMODE(os.stat(out / HASHES_FILE).st_mode) == 0o600
