"""Secrets of a stack started the way `shinchoku up` starts it: generated, private on disk, given to no one else.

- nats/ is 0700, nats/secrets.json and nats/nats.conf are 0600; every user has its own generated secret;
- each service process receives only its own NATS password (read from /proc/PID/environ), and no agency's;
- no secret appears in stack.json, in any log file, or in the services' HTTP answers (healthz, OpenAPI);
- the embedded issuer's signing key: auth/ is 0700, auth/signing-key.json 0600; the services get only the
  URL of the public keys, and neither the key nor a token sent to them shows in a file, a log or an answer;
- a deployment's keys (deploy/generate.py): the CA's and the servers' private keys and the auth callout's
  account seed 0600, certificates public, none of them nor any password printed or committed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from contracts.agencies import Agency
from reporting.dashboard.session import SESSION_KEY_FILE
from shinchoku.issuer import EmbeddedIssuer, principal_named
from shinchoku_runtime.auth.settings import JWKS_FILE, SIGNING_KEY_FILE
from shinchoku_runtime.natsconf import CONFIG_FILE, HASHES_FILE, SECRETS_FILE
from tests.faults.stack import RunningStack

SERVICES = ("catalog", "ingest", "reporting")
ROOT = Path(__file__).resolve().parents[2]


def _node_options_of_generate() -> object:
    spec = importlib.util.spec_from_file_location("deploy_generate", ROOT / "deploy" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_generate"] = module
    spec.loader.exec_module(module)
    return module.node_options


#: Routes that answer an agency's data to a token: an error there must not quote a key either.
READ_PATHS = {
    "ingest": ("/rejections", "/events/00000000-0000-0000-0000-000000000001"),
    "reporting": ("/rollups/2024",),
}


def _mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    pairs = (item.decode("utf-8", "replace").partition("=") for item in raw if item)
    return {k: v for k, _, v in pairs}


def test_secrets_files_are_private_and_generated(security_stack: RunningStack) -> None:
    nats_dir = security_stack.data_dir / "nats"
    assert _mode(nats_dir) == 0o700, oct(_mode(nats_dir))
    for name in (SECRETS_FILE, CONFIG_FILE, HASHES_FILE):
        assert _mode(nats_dir / name) == 0o600, f"{name} is {oct(_mode(nats_dir / name))}"
    secrets = json.loads((nats_dir / SECRETS_FILE).read_text())
    assert {a.value for a in Agency} | set(SERVICES) | {"admin"} <= set(secrets)
    assert len(set(secrets.values())) == len(secrets), "each user has its own secret"
    assert min(len(s) for s in secrets.values()) >= 24


def test_each_service_gets_only_its_own_password(security_stack: RunningStack) -> None:
    secrets: dict[str, str] = json.loads((security_stack.data_dir / "nats" / SECRETS_FILE).read_text())
    for service in SERVICES:
        pid = security_stack.pid(service)
        assert pid is not None
        values = set(_environ(pid).values())
        assert secrets[service] in values, f"{service} was not given its password"
        others = {user for user, secret in secrets.items() if user != service and secret in values}
        assert others == set(), f"{service}'s environment holds the secrets of {sorted(others)}"


def test_no_secret_leaks_into_files_or_answers(security_stack: RunningStack) -> None:
    secrets: dict[str, str] = json.loads((security_stack.data_dir / "nats" / SECRETS_FILE).read_text())
    texts = {"stack.json": (security_stack.data_dir / "stack.json").read_text()}
    for log in (security_stack.data_dir / "logs").glob("*.log"):
        texts[f"logs/{log.name}"] = log.read_text("utf-8", errors="replace")
    for service in SERVICES:
        for path in ("/healthz", "/openapi.json", "/metrics", *READ_PATHS.get(service, ())):
            answer = httpx.get(security_stack.url(service) + path, timeout=10, auth=security_stack.auth)
            texts[f"{service}{path}"] = answer.text
    leaks = [(where, user) for where, text in texts.items() for user, secret in secrets.items() if secret in text]
    assert leaks == [], f"secrets found in: {leaks}"


def test_signing_key_is_private_and_stays_in_the_data_directory(security_stack: RunningStack) -> None:
    auth_dir = security_stack.data_dir / "auth"
    assert _mode(auth_dir) == 0o700, oct(_mode(auth_dir))
    assert _mode(auth_dir / SIGNING_KEY_FILE) == 0o600, oct(_mode(auth_dir / SIGNING_KEY_FILE))
    key_text = (auth_dir / SIGNING_KEY_FILE).read_text()
    private = json.loads(key_text)["d"]
    published = json.loads((auth_dir / JWKS_FILE).read_text())
    assert published["keys"], "the public key is published"
    assert all("d" not in key for key in published["keys"]), "the JWKS holds no private member"

    issuer = EmbeddedIssuer.load(security_stack.data_dir)
    token = issuer.mint(principal_named("secretariat", "secrets-test"))
    operator = issuer.mint(principal_named("operator", "secrets-test"))
    texts: dict[str, str] = {"stack.json": (security_stack.data_dir / "stack.json").read_text()}
    for service in SERVICES:
        for path in ("/healthz", "/livez", "/openapi.json", "/metrics", *READ_PATHS.get(service, ())):
            for who, sent in (("public", None), ("secretariat", token), ("operator", operator)):
                headers = {"Authorization": f"Bearer {sent}"} if sent else {}
                answer = httpx.get(security_stack.url(service) + path, headers=headers, timeout=10)
                texts[f"{service}{path} as {who}"] = answer.text + json.dumps(dict(answer.headers))
        pid = security_stack.pid(service)
        assert pid is not None
        environ = _environ(pid)
        assert environ.get("SHINCHOKU_AUTH_JWKS_URL") == (auth_dir / JWKS_FILE).as_uri(), service
        texts[f"{service} environment"] = "\n".join(environ.values())
    for log in (security_stack.data_dir / "logs").glob("*.log"):
        texts[f"logs/{log.name}"] = log.read_text("utf-8", errors="replace")
    leaks = [
        (where, what)
        for where, text in texts.items()
        for what, secret in (("signing key", private), ("token", token), ("operator's token", operator))
        if secret in text
    ]
    assert leaks == [], f"found in: {leaks}"
    assert key_text not in "".join(texts.values())


def test_the_dashboards_session_key_is_private(security_stack: RunningStack) -> None:
    """The key signing the dashboard's sessions: generated (0600, in the 0700 auth directory), never answered or
    logged, not even on the sign-in page that sets a session."""
    path = security_stack.data_dir / "auth" / SESSION_KEY_FILE
    assert _mode(path) == 0o600, oct(_mode(path))
    key = path.read_text().strip()
    assert len(key) >= 48
    issuer = EmbeddedIssuer.load(security_stack.data_dir)
    token = issuer.mint(principal_named("secretariat", "secrets-test"))
    with httpx.Client(base_url=security_stack.url("reporting"), timeout=10) as browser:
        page = browser.get("/dashboard/signin")
        csrf = page.cookies.get("shinchoku_csrf") or ""
        signed_in = browser.post("/dashboard/signin", data={"csrf": csrf, "token": token})
        assert signed_in.status_code == 303, signed_in.text
        texts = [page.text, str(page.headers), str(signed_in.headers), browser.get("/dashboard").text]
    texts += [log.read_text("utf-8", errors="replace") for log in (security_stack.data_dir / "logs").glob("*.log")]
    assert not [t for t in texts if key in t]


def test_deployment_keys_and_certificates_are_private_and_never_printed(tmp_path: Path) -> None:
    """deploy/generate.py: every private key (the CA's, each server's, the callout's account seed) 0600 in a
    0700 directory, certificates public; what it prints, the committed deployment files and the objects that
    end up in logs (`repr` of the server options) hold no key and no password."""
    out = tmp_path / "generated"
    run = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "generate.py"), "--out", str(out), "--auth-callout"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert _mode(out) == 0o700
    keys = [*(out / "tls").glob("*-key.pem"), out / "nats" / "auth-callout-issuer.nk"]
    assert len(keys) == 7 + 1
    for key in keys:
        assert _mode(key) == 0o600, f"{key.name} is {oct(_mode(key))}"
    for cert in (out / "tls").glob("*.pem"):
        if not cert.name.endswith("-key.pem"):
            assert _mode(cert) == 0o644, cert.name
            assert "PRIVATE KEY" not in cert.read_text()
    secrets: dict[str, str] = json.loads((out / "secrets.json").read_text())
    private = {key.name: key.read_text().strip() for key in keys}
    private |= {f"password of {user}": secret for user, secret in secrets.items()}
    committed = {
        path: path.read_text("utf-8")
        for path in [
            ROOT / "docker-compose.yml",
            *(ROOT / "deploy").rglob("*.yaml"),
            *(ROOT / "deploy").rglob("*.conf"),
        ]
        if "generated" not in path.parts
    }
    texts = {
        "generate.py stdout": run.stdout,
        "generate.py stderr": run.stderr,
        **{str(p): t for p, t in committed.items()},
    }
    node_options = _node_options_of_generate()
    options = node_options(1, route_password=secrets["route"])  # type: ignore[operator]
    texts["repr(ServerOptions)"] = repr(options)
    leaks = [(where, what) for where, text in texts.items() for what, secret in private.items() if secret in text]
    assert leaks == [], f"found in: {leaks}"
