"""docker-compose.yml, checked structurally (Docker cannot run on these machines): healthchecks, images and
Dockerfiles, depends_on conditions, every setting each service reads, the 3-node NATS cluster with
`sync_interval: always` and R3 streams, 2 replicas of ingest and reporting, no secret in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shinchoku_runtime.natsserver import nats_server_binary
from tests.deploy.conftest import AUTH_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("catalog", "ingest", "reporting")
NATS_NODES = ("nats-1", "nats-2", "nats-3")
#: One-shot jobs: they run to completion (the services wait for that), so they have no healthcheck.
JOBS = {"streams"}
EXPECTED = {*NATS_NODES, "postgres", "jaeger", "otel-collector", *APP_SERVICES, "proxy", "authcallout", *JOBS}
REPLICAS = {"catalog": 1, "ingest": 2, "reporting": 2}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose["services"]
    return svcs


def _env(service: dict[str, Any], env_files: dict[str, dict[str, str]], generated: Path) -> dict[str, str]:
    """What the container's environment holds: env_file entries (generated) overlaid by `environment`."""
    values: dict[str, str] = {}
    for entry in service.get("env_file") or []:
        path = entry if isinstance(entry, str) else entry["path"]
        assert path.startswith("deploy/generated/"), f"env files come from deploy/generate.py, not {path}"
        values |= env_files[Path(path).stem]
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    values |= {k: str(v) for k, v in environment.items()}
    return values


def _default(settings: type[Any], prefix: str, variable: str) -> str:
    field = settings.model_fields[variable.removeprefix(prefix).lower()]
    return str(field.default)


def test_the_platform_is_all_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in JOBS:
            assert service["restart"] == "on-failure", name
            waiting = [n for n, s in services.items() if (s.get("depends_on") or {}).get(name)]
            assert waiting, f"nobody waits for the job {name}"
            for other in waiting:
                condition = services[other]["depends_on"][name]["condition"]
                assert condition == "service_completed_successfully", (other, name)
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        test = check["test"]
        assert isinstance(test, list), f"{name}: use the exec form"
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert len(test) > 1, name


def test_every_built_image_has_its_dockerfile_and_every_dockerfile_is_used(services: dict[str, dict[str, Any]]) -> None:
    used = set()
    for name, service in services.items():
        if "build" not in service:
            image = service["image"]
            assert ":" in image, f"{name}: pin the image version ({image})"
            assert not image.endswith(":latest"), f"{name}: pin the image version ({image})"
            continue
        build = service["build"]
        assert build["context"] == "."
        dockerfile = ROOT / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert service["image"] == f"shinchoku/{name}:latest"
        used.add(dockerfile.name)
    assert services["authcallout"]["build"]["dockerfile"] == "deploy/docker/catalog.Dockerfile"
    assert services["streams"]["build"]["dockerfile"] == "deploy/docker/ingest.Dockerfile"
    assert used == {p.name for p in (ROOT / "deploy" / "docker").glob("*.Dockerfile")}


def test_depends_on_has_conditions_and_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    graph: dict[str, set[str]] = {}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions (the long form)"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec.get("condition") in ("service_healthy", "service_completed_successfully"), (name, target)
        graph[name] = set(depends)
    for app in APP_SERVICES:
        assert {*NATS_NODES, "postgres", "otel-collector"} <= graph[app], app
    assert "catalog" in graph["ingest"]
    assert graph["otel-collector"] == {"jaeger"}

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {' -> '.join((*path, node))}"
        for nxt in graph[node]:
            visit(nxt, (*path, node))

    for node in graph:
        visit(node, ())


def test_ingest_and_reporting_run_two_replicas(services: dict[str, dict[str, Any]]) -> None:
    for name, replicas in REPLICAS.items():
        assert (services[name].get("deploy") or {}).get("replicas", 1) == replicas, name
        for mapping in services[name].get("ports") or []:
            host = str(mapping).rsplit(":", 1)[0]
            if replicas > 1:
                first, _, last = host.partition("-")
                assert last, f"{name}: {replicas} replicas need a host port range, not {mapping}"
                assert int(last) - int(first) + 1 >= replicas


def test_every_setting_a_service_reads_is_set(
    services: dict[str, dict[str, Any]],
    specs: dict[str, Any],
    env_files: dict[str, dict[str, str]],
    generated: Path,
) -> None:
    for name in APP_SERVICES:
        spec = specs[name]
        env = _env(services[name], env_files, generated)
        missing = sorted(spec.env_names - set(env))
        assert not missing, (
            f"docker-compose.yml does not set {missing} for {name} (read by {spec.settings.__name__}): add them "
            f"under services.{name}.environment (and to the ConfigMap in deploy/k8s/{name}.yaml), e.g. the defaults "
            + ", ".join(f"{k}: {_default(spec.settings, spec.env_prefix, k)!r}" for k in missing)
        )
        unknown = sorted(k for k in env if k.startswith("SHINCHOKU_") and k not in spec.env_names | AUTH_SETTINGS)
        assert not unknown, f"{name} sets {unknown}, which {spec.settings.__name__} does not read"
        # Tokens of the deployment's identity provider, never the embedded issuer of `shinchoku up`.
        assert env["SHINCHOKU_AUTH_MODE"] == "oidc"
        assert "SHINCHOKU_AUTH_ISSUER" in env
        prefix = spec.env_prefix
        assert env[f"{prefix}STREAM_REPLICAS"] == "3"
        assert env[f"{prefix}NATS_USER"] == name
        assert env[f"{prefix}HOST"] == "0.0.0.0"
        urls = env[f"{prefix}NATS_URL"].split(",")
        assert sorted(re.sub(r"^nats://|:4222$", "", u) for u in urls) == list(NATS_NODES)
        assert env[f"{prefix}DATABASE_URL"].startswith(f"postgresql://{name}:")
        assert env[f"{prefix}DATABASE_URL"].endswith(
            f"@postgres:5432/{name}?sslmode=verify-full&sslrootcert=/etc/shinchoku/tls/ca.pem"
        )
        assert env[f"{prefix}NATS_TLS_CA_FILE"] == "/etc/shinchoku/tls/ca.pem"
        assert "./deploy/generated/tls/ca.pem:/etc/shinchoku/tls/ca.pem:ro" in services[name]["volumes"]
        assert env[f"{prefix}NATS_PASSWORD"]
        # The values parse: each has the right type for its field.
        parsed = spec.settings.model_validate(
            {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
        )
        assert int(parsed.port) == spec.default_port
        assert env["OTEL_SERVICE_NAME"] == name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        port = spec.default_port
        assert f"127.0.0.1:{port}/healthz" in " ".join(services[name]["healthcheck"]["test"])
        assert all(str(m).endswith(f":{port}") for m in services[name].get("ports") or [])


def test_nats_is_a_three_node_cluster_with_sync_always(services: dict[str, dict[str, Any]], generated: Path) -> None:
    names = set()
    for node in NATS_NODES:
        service = services[node]
        assert service["hostname"] == node
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        conf_source = mounts["/etc/nats/nats.conf"]
        assert conf_source == f"./deploy/generated/nats/{node}.conf"
        assert mounts["/data"] == node, "JetStream needs its own persistent volume per node"
        assert service["command"] == ["nats-server", "--config", "/etc/nats/nats.conf"]
        text = (generated / "nats" / f"{node}.conf").read_text("utf-8")
        assert re.search(r'sync_interval: "always"', text)
        assert re.search(r'store_dir: "/data/jetstream"', text)
        assert re.search(r"http_port: 8222", text), "the healthcheck asks the monitoring port"
        name = re.search(r'server_name: "([^"]+)"', text)
        assert name
        names.add(name.group(1))
        routes = set(re.findall(r"nats-route://(?:route:[^@]+@)?([a-z0-9-]+):6222", text))
        assert routes == set(NATS_NODES) - {node}
        assert 'name: "shinchoku"' in text
        assert "8222/healthz" in " ".join(service["healthcheck"]["test"])
        # The server itself accepts the file, with the certificates mounted where the container has them.
        checked = generated / "nats" / f"{node}.checked.conf"
        checked.write_text(text.replace("/etc/nats/tls/", f"{generated}/tls/"), "utf-8")
        for target, source in mounts.items():
            if target.startswith("/etc/nats/tls/"):
                assert source == f"./deploy/generated/tls/{Path(target).name}", source
        check = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(checked)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    assert names == set(NATS_NODES)
    volumes = services["nats-1"]["volumes"] + services["nats-2"]["volumes"] + services["nats-3"]["volumes"]
    # Each node its own config, certificate, key and data volume; the CA certificate is the one they share.
    assert len({v.split(":")[0] for v in volumes}) == 3 * 4 + 1


def test_transport_is_encrypted_everywhere_outside_the_containers(
    services: dict[str, dict[str, Any]], generated: Path
) -> None:
    # NATS: TLS on the client port, mutual TLS and route authorization between the nodes; 4222 on one node
    # is the only published NATS port (the monitoring port 8222 and the routes stay inside the network).
    for node in NATS_NODES:
        text = (generated / "nats" / f"{node}.conf").read_text("utf-8")
        client_tls, cluster = text.split("\ncluster: ", 1)
        assert f'cert_file: "/etc/nats/tls/{node}.pem"' in client_tls.split("\ntls: ", 1)[1]
        assert "verify: true" in cluster, "routes verify each other's certificates"
        assert 'user: "route"' in cluster
        assert re.findall(r"nats-route://route:[^@]+@nats-\d:6222", cluster), "routes dial with the route password"
    published = {name: [str(p) for p in s.get("ports") or []] for name, s in services.items()}
    assert published["nats-1"] == ["4222:4222"]
    assert not any(p.endswith(":8222") or p.endswith(":6222") for ports in published.values() for p in ports)
    # HTTP: the services publish nothing; the proxy serves each of them over HTTPS only.
    for name in APP_SERVICES:
        assert published[name] == [], f"{name} must be reached through the proxy"
    assert sorted(published["proxy"]) == ["8001:8001", "8002:8002", "8003:8003"]
    nginx = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text("utf-8")
    for service, port in (("catalog", 8001), ("ingest", 8002), ("reporting", 8003)):
        assert f"listen {port} ssl;" in nginx
        assert f"http://{service}:{port}" in nginx
    assert not re.search(r"listen \d+;", nginx), "no plain-HTTP listener"
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in nginx
    # The services see the scheme the browser used (Secure cookies, same-origin checks behind the proxy).
    assert "proxy_set_header X-Forwarded-Proto https;" in nginx
    assert "proxy_set_header Host $http_host;" in nginx
    for name in APP_SERVICES:
        assert services[name]["environment"]["FORWARDED_ALLOW_IPS"] == "*", name
    # PostgreSQL: TLS with its own certificate, plain TCP connections refused by pg_hba.
    postgres = services["postgres"]
    command = " ".join(postgres["command"])
    assert "ssl=on" in command
    assert "hba_file=/etc/postgresql/pg_hba.conf" in command
    hba = [line.split() for line in (ROOT / "deploy" / "postgres" / "pg_hba.conf").read_text().splitlines()]
    rules = [r for r in hba if r and not r[0].startswith("#")]
    assert ["hostnossl", "all", "all", "all", "reject"] in rules
    assert all(r[0] in ("local", "hostssl", "hostnossl") for r in rules), rules
    assert "postgres" not in published or not published["postgres"]


def test_certificates_name_what_clients_connect_to(generated: Path) -> None:
    from cryptography import x509

    def names(name: str) -> set[str]:
        cert = x509.load_pem_x509_certificate((generated / "tls" / f"{name}.pem").read_bytes())
        return set(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        )

    for node in NATS_NODES:
        assert node in names(node)
    assert "postgres" in names("postgres")
    assert "localhost" in names("proxy")
    assert "*.nats-headless.shinchoku.svc.cluster.local" in names("nats-k8s")


def test_traces_go_through_the_collector_to_jaeger(services: dict[str, dict[str, Any]]) -> None:
    collector = yaml.safe_load((ROOT / "deploy" / "otel" / "collector.yaml").read_text("utf-8"))
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    (exporter,) = pipeline["exporters"]
    assert collector["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert "health_check" in collector["service"]["extensions"]
    assert collector["extensions"]["health_check"]["endpoint"].endswith(":13133")
    dockerfile = (ROOT / "deploy" / "docker" / "otel-collector.Dockerfile").read_text("utf-8")
    assert "COPY deploy/otel/collector.yaml /etc/otelcol/config.yaml" in dockerfile
    assert "16686:16686" in services["jaeger"]["ports"]


def test_postgres_has_one_database_per_service(services: dict[str, dict[str, Any]], env_files: dict[str, Any]) -> None:
    postgres = services["postgres"]
    init = [v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init == ["./deploy/postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-init-databases.sh:ro"]
    script = (ROOT / "deploy" / "postgres" / "init-databases.sh").read_text("utf-8")
    assert "for service in catalog ingest reporting" in script
    for service in APP_SERVICES:
        assert env_files["postgres"][f"SHINCHOKU_DB_PASSWORD_{service.upper()}"]
    assert env_files["postgres"]["POSTGRES_PASSWORD"]


def test_no_secret_is_committed(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text("utf-8")
    assert not re.search(r"(?i)password\s*[:=]\s*\S", text.replace("NATS_PASSWORD,", "")), "a password in compose"
    for service in compose["services"].values():
        for key in service.get("environment") or {}:
            assert "PASSWORD" not in key, f"{key} must come from a generated env file"
            assert "DATABASE_URL" not in key, f"{key} must come from a generated env file"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/generated/secrets.json"], cwd=ROOT, check=False, timeout=10
    )
    assert ignored.returncode == 0, "deploy/generated/ must be ignored by git"
    tracked = subprocess.run(
        ["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    assert not [p for p in tracked if p.startswith("deploy/generated/")]


def test_bind_mounts_and_volumes_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):
                if not source.startswith("./deploy/generated/"):
                    assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
