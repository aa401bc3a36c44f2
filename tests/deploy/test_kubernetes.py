"""The Kubernetes deployment, checked structurally (no cluster here): the service manifests (probes, images
with Dockerfiles, every setting set, replicas), the kustomization (rendered by kubectl's kustomize when
kubectl is installed), and the NATS Helm chart values (3-node JetStream cluster, `sync_interval: always`, the
generated users included from a Secret; that include is started for real with nats-server from the wheel)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.errors import Error as NatsError

from shinchoku_runtime.natsserver import free_port, nats_server_binary, wait_for_port
from tests.deploy.conftest import AUTH_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
APP_SERVICES = ("catalog", "ingest", "reporting")
REPLICAS = {"catalog": 1, "ingest": 2, "reporting": 2}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("nats-values.yaml", "kustomization.yaml"):
            continue
        for doc in _documents(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def secrets(generated: Path) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _documents(generated / "k8s" / "secrets.yaml")}


def test_kustomization_lists_every_manifest_and_renders() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text("utf-8"))
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "nats-values.yaml"}
    assert listed == present
    assert {i["name"] for i in kustomization["images"]} == {f"shinchoku/{s}" for s in APP_SERVICES}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the kustomization was checked structurally only")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d)
    assert kinds.count("Deployment") == 3
    assert all(d["metadata"].get("namespace", "shinchoku") == "shinchoku" for d in yaml.safe_load_all(rendered.stdout))


@pytest.mark.parametrize("service", APP_SERVICES)
def test_deployment(
    service: str,
    manifests: dict[tuple[str, str], dict[str, Any]],
    secrets: dict[str, dict[str, Any]],
    specs: dict[str, Any],
) -> None:
    spec = specs[service]
    deployment = manifests[("Deployment", service)]
    assert deployment["spec"]["replicas"] == REPLICAS[service]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    image = container["image"]
    assert image == f"shinchoku/{service}:latest"
    assert (ROOT / "deploy" / "docker" / f"{service}.Dockerfile").is_file(), f"{image} has no Dockerfile"
    (port,) = container["ports"]
    assert port["containerPort"] == spec.default_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez", "a NATS outage must not restart pods"
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )

    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env |= manifests[("ConfigMap", source["configMapRef"]["name"])]["data"]
        if "secretRef" in source:
            env |= secrets[source["secretRef"]["name"]]["stringData"]
    env |= {e["name"]: e.get("value", "") for e in container.get("env") or []}
    missing = sorted(spec.env_names - set(env))
    assert not missing, f"deploy/k8s/{service}.yaml does not set {missing} (read by {spec.settings.__name__})"
    unknown = sorted(k for k in env if k.startswith("SHINCHOKU_") and k not in spec.env_names | AUTH_SETTINGS)
    assert not unknown, f"{service} sets {unknown}, which {spec.settings.__name__} does not read"
    # Tokens of the deployment's identity provider, never the embedded issuer of `shinchoku up`.
    assert env["SHINCHOKU_AUTH_MODE"] == "oidc"
    assert "SHINCHOKU_AUTH_ISSUER" in env
    prefix = spec.env_prefix
    assert env[f"{prefix}STREAM_REPLICAS"] == "3"
    assert env[f"{prefix}NATS_USER"] == service
    assert env[f"{prefix}NATS_URL"] == "nats://nats.shinchoku.svc.cluster.local:4222"
    assert env[f"{prefix}PORT"] == str(spec.default_port)
    assert env[f"{prefix}DATABASE_URL"].split("?")[0].endswith(f"/{service}")
    assert env["OTEL_SERVICE_NAME"] == service
    assert env["FORWARDED_ALLOW_IPS"] == "*", "the service sees the ingress's https (X-Forwarded-Proto)"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")
    spec.settings.model_validate({k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)})

    svc = manifests[("Service", service)]
    assert svc["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == spec.default_port
    if REPLICAS[service] > 1:
        pdb = manifests[("PodDisruptionBudget", service)]
        assert pdb["spec"]["minAvailable"] == 1


def test_nats_helm_values_cluster_jetstream_sync_always(secrets: dict[str, dict[str, Any]]) -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text("utf-8"))
    config = values["config"]
    assert {k: v for k, v in config["cluster"].items() if k != "tls"} == {"enabled": True, "replicas": 3}
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True
    assert jetstream["fileStore"]["pvc"]["enabled"] is True
    assert jetstream["merge"]["sync_interval"] == "always"
    includes = [v for k, v in config["merge"].items() if k.endswith("$include")]
    assert includes == ["auth/auth.conf"]
    mount = {"name": "shinchoku-nats-auth", "mountPath": "/etc/nats-config/auth", "readOnly": True}
    for section in ("container", "reloader"):
        assert {"op": "add", "path": "/volumeMounts/-", "value": mount} in values[section]["patch"], section
    (volume,) = [p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    assert volume["name"] == mount["name"]
    assert volume["secret"]["secretName"] in secrets
    assert "auth.conf" in secrets[volume["secret"]["secretName"]]["stringData"]


async def test_the_included_users_work_in_a_real_server(
    secrets: dict[str, dict[str, Any]], generated: Path, tmp_path: Path
) -> None:
    """The Secret's auth.conf, included as the chart includes it: agencies and services log in with the passwords
    they hold (auth.conf has only their bcrypt hashes), strangers and the hashes themselves do not."""
    text = secrets["shinchoku-nats-auth"]["stringData"]["auth.conf"]
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "auth.conf").write_text(text, "utf-8")
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'port: {port}\nhost: "127.0.0.1"\njetstream {{\n  store_dir: "{tmp_path / "js"}"\n  sync_interval: always\n}}\n'
        "include auth/auth.conf\n",
        "utf-8",
    )
    checked = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    hashes = dict(re.findall(r'user: "([^"]+)"\s+password: "([^"]+)"', text))
    assert {"mof", "digital", "catalog", "ingest", "reporting", "admin"} <= set(hashes)
    assert all(h.startswith("$2a$") for h in hashes.values()), "auth.conf holds bcrypt hashes only"
    passwords: dict[str, str] = json.loads((generated / "secrets.json").read_text("utf-8"))

    async def login(user: str, password: str) -> bool:
        try:
            nc = await nats.connect(
                f"nats://127.0.0.1:{port}", user=user, password=password, allow_reconnect=False, connect_timeout=2
            )
        except (NatsError, OSError):
            return False
        await nc.close()
        return True

    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port("127.0.0.1", port)
        assert await login("mof", passwords["mof"])
        assert await login("ingest", passwords["ingest"])
        assert not await login("mof", passwords["digital"])
        assert not await login("mof", hashes["mof"])
    finally:
        server.terminate()
        server.wait(10)


def test_only_what_must_talk_does(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    policies = {name: doc["spec"] for (kind, name), doc in manifests.items() if kind == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress"], name

    def admitted(port: int) -> list[list[dict[str, Any]]]:
        return [
            rule.get("from", [])
            for spec in policies.values()
            for rule in spec.get("ingress", [])
            if any(p["port"] == port for p in rule.get("ports", []))
        ]

    assert admitted(4222) == [[]], "NATS clients from anywhere (the ministries), on the client port only"
    assert admitted(6222) == [[{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}]]
    (monitoring,) = admitted(8222)
    assert monitoring == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    for port in (8001, 8002, 8003):
        (sources,) = admitted(port)
        assert all("namespaceSelector" in s for s in sources), "services only from the ingress and monitoring"


def test_https_through_the_ingress_with_the_generated_certificate(
    manifests: dict[tuple[str, str], dict[str, Any]], secrets: dict[str, dict[str, Any]]
) -> None:
    ingress = manifests[("Ingress", "shinchoku")]["spec"]
    (tls,) = ingress["tls"]
    assert secrets[tls["secretName"]]["type"] == "kubernetes.io/tls"
    backends = {r["http"]["paths"][0]["backend"]["service"]["name"] for r in ingress["rules"]}
    assert backends == set(APP_SERVICES)
    assert {r["host"] for r in ingress["rules"]} <= set(tls["hosts"])


def test_nats_runs_tls_with_route_authorization(
    secrets: dict[str, dict[str, Any]],
    specs: dict[str, Any],
    manifests: dict[tuple[str, str], dict[str, Any]],
    generated: Path,
) -> None:
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text("utf-8"))
    config = values["config"]
    assert config["nats"]["tls"]["enabled"] is True
    assert config["cluster"]["tls"]["enabled"] is True
    assert config["cluster"]["tls"]["merge"]["verify"] is True
    for section in (config["nats"]["tls"], config["cluster"]["tls"], values["tlsCA"]):
        assert secrets[section["secretName"]]["type"] == "kubernetes.io/tls"
    assert values["service"]["ports"]["monitor"]["enabled"] is False
    chart_secrets = yaml.safe_load((generated / "k8s" / "nats-values-secrets.yaml").read_text("utf-8"))
    route = chart_secrets["config"]["cluster"]["routeURLs"]
    assert route["user"] == "route"
    assert len(route["password"]) >= 24
    # The services trust the CA for NATS and PostgreSQL.
    ca = secrets["shinchoku-ca"]["stringData"]["ca.pem"]
    assert ca == secrets["shinchoku-nats-tls"]["stringData"]["ca.crt"]
    for service in APP_SERVICES:
        env = secrets[f"shinchoku-{service}"]["stringData"]
        assert env[f"SHINCHOKU_{service.upper()}_DATABASE_URL"].endswith(
            "?sslmode=verify-full&sslrootcert=/etc/shinchoku/tls/ca.pem"
        )
        pod = manifests[("Deployment", service)]["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "ca"]
        assert volume["secret"]["secretName"] == "shinchoku-ca"
        (container,) = pod["containers"]
        assert {"name": "ca", "mountPath": "/etc/shinchoku/tls", "readOnly": True} in container["volumeMounts"]
