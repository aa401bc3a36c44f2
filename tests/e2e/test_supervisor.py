"""`shinchoku up` supervises its processes: restart with backoff, one `up` per data directory, clean stop.

These run `up` with stand-in services (tests/e2e/fake_services: /healthz only) and the real nats-server,
so they prove the supervisor's behaviour in seconds; test_platform.py does the same with the real services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shinchoku.supervisor import BACKOFF_CAP, backoff_delay

from .conftest import Up, pid_alive, wait_for

pytestmark = pytest.mark.slow


def test_backoff_doubles_up_to_a_cap() -> None:
    delays = [backoff_delay(n) for n in range(1, 8)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert max(delays) == BACKOFF_CAP
    assert delays == sorted(delays)


def test_up_starts_everything_writes_pid_files_and_passes_settings(make_up: Callable[..., Up]) -> None:
    up = make_up(fake=True).start()
    seconds = up.wait_ready()
    pids = up.pids()
    assert set(pids) == {"nats-server", "catalog", "ingest", "reporting"}
    assert all(pid_alive(p) for p in pids.values())
    stack = up.stack()
    assert stack["nats_port"] == int(up.env["SHINCHOKU_NATS_PORT"])
    body = httpx.get(up.url("ingest") + "/healthz").json()
    settings = body["settings"]
    assert settings["data_dir"] == str(up.data_dir.resolve())
    assert settings["database_url"] == f"sqlite:///{up.data_dir.resolve()}/db/ingest.sqlite"
    assert settings["nats_user"] == "ingest"
    secrets = json.loads((up.data_dir / "nats" / "secrets.json").read_text())
    assert settings["nats_password"] == secrets["ingest"]
    assert settings["nats_url"] == f"nats://127.0.0.1:{stack['nats_port']}"
    for private in ("secrets.json", "nats.conf"):
        assert (up.data_dir / "nats" / private).stat().st_mode & 0o777 == 0o600
    for name in pids:
        assert (up.data_dir / "logs" / f"{name}.log").exists()
    assert "ready in" in up.text()
    assert "loopback only, no TLS" in up.text(), "the embedded default says it has no TLS"
    assert seconds < 10


def test_a_killed_service_and_nats_are_restarted(make_up: Callable[..., Up]) -> None:
    up = make_up(fake=True).start()
    up.wait_ready()
    for name in ("reporting", "nats-server"):
        before = up.pids()[name]
        os.kill(before, signal.SIGKILL)
        wait_for(lambda n=name, b=before: up.pids().get(n) not in (None, b), 15, f"{name} restarted")  # type: ignore[misc]
        assert f"{name} (pid {before}) exited with signal SIGKILL" in up.log
    wait_for(lambda: up.healthy("reporting"), 15, "reporting healthy again")
    nats_port = int(up.env["SHINCHOKU_NATS_PORT"])
    wait_for(lambda: _listening(nats_port), 15, "nats-server listening again")


def test_a_service_that_keeps_dying_backs_off(make_up: Callable[..., Up], tmp_path: Path) -> None:
    up = make_up(fake=True)
    up.env["FAKE_FAIL_DIR"] = str(tmp_path)
    up.start()
    up.wait_ready()
    # From now on the fake catalog exits at once: each restart fails and the delay grows.
    (tmp_path / "catalog").touch()
    os.kill(up.pids()["catalog"], signal.SIGKILL)
    wait_for(lambda: up.log.count("catalog (pid") >= 3, 20, "three catalog failures")
    delays = [
        float(line.rsplit("restarting in ", 1)[1].split("s", 1)[0])
        for line in up.log.splitlines()
        if "catalog (pid" in line
    ]
    assert delays[:3] == [0.5, 1.0, 2.0]
    (tmp_path / "catalog").unlink()
    wait_for(lambda: "catalog is healthy again" in up.log, 20, "catalog healthy once it can start again")
    assert up.healthy("catalog")


def test_second_up_on_the_same_directory_is_refused(make_up: Callable[..., Up]) -> None:
    up = make_up(fake=True).start()
    up.wait_ready()
    assert up.process is not None
    second = up.run_again()
    assert second.returncode != 0
    assert "already running" in second.stderr + second.stdout
    assert str(up.process.pid) in second.stderr + second.stdout
    assert up.process.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_everything_and_leaves_no_pid_file(make_up: Callable[..., Up], sig: signal.Signals) -> None:
    up = make_up(fake=True).start()
    up.wait_ready()
    pids = up.pids()
    assert up.stop(sig) == 0
    assert not any(pid_alive(p) for p in pids.values())
    assert list((up.data_dir / "run").glob("*.pid")) == []
    log = up.log
    assert log.index("stopping: services first") < log.index("stopped")


def test_restart_after_a_crash_of_up_itself(make_up: Callable[..., Up]) -> None:
    """SIGKILL of `up`: the kernel stops its children (parent-death signal); the next `up` starts cleanly."""
    up = make_up(fake=True).start()
    up.wait_ready()
    pids = up.pids()
    secrets = (up.data_dir / "nats" / "secrets.json").read_text()
    up.stop(signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in pids.values()), 15, "children gone after up was killed")
    up.start()
    up.wait_ready()
    assert set(up.pids().values()).isdisjoint(pids.values())
    assert (up.data_dir / "nats" / "secrets.json").read_text() == secrets
    assert up.stack()["nats_port"] == int(up.env["SHINCHOKU_NATS_PORT"])


def test_remembers_the_nats_port(make_up: Callable[..., Up]) -> None:
    up = make_up(fake=True)
    del up.env["SHINCHOKU_NATS_PORT"]
    up.start()
    up.wait_ready()
    port = up.stack()["nats_port"]
    assert port != 4222 or _free(4222)
    up.stop()
    up.start()
    up.wait_ready()
    assert up.stack()["nats_port"] == port


def test_a_taken_http_port_is_a_clear_error(make_up: Callable[..., Up]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        up = make_up(fake=True)
        up.env["SHINCHOKU_INGEST_PORT"] = str(s.getsockname()[1])
        result = up.run_again()
    assert result.returncode == 2
    assert "SHINCHOKU_INGEST_PORT" in result.stderr


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free(port: int) -> bool:
    return not _listening(port)


def test_up_help_runs() -> None:
    from .conftest import SHINCHOKU

    result = subprocess.run([SHINCHOKU, "up", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "--data-dir" in result.stdout
    time.sleep(0)


def test_external_nats_and_database_urls_pass_through(make_up: Callable[..., Up], tmp_path: Path) -> None:
    """With SHINCHOKU_NATS_URL `up` starts no nats-server; what the user set reaches each service unchanged."""
    from shinchoku_runtime.natsserver import NatsServer

    with NatsServer.create(tmp_path / "external") as external:
        up = make_up(fake=True)
        up.env["SHINCHOKU_NATS_URL"] = external.plain_url
        up.env["SHINCHOKU_NATS_ADMIN_PASSWORD"] = external.passwords["admin"]
        for service in ("catalog", "ingest", "reporting"):
            up.env[f"SHINCHOKU_{service.upper()}_NATS_PASSWORD"] = external.passwords[service]
        up.env["SHINCHOKU_REPORTING_DATABASE_URL"] = "postgresql://shinchoku@127.0.0.1:5432/reporting_db"
        up.start()
        up.wait_ready()
        assert "nats-server" not in up.pids()
        assert not (up.data_dir / "nats").exists()
        settings = httpx.get(up.url("reporting") + "/healthz").json()["settings"]
        assert settings["database_url"] == "postgresql://shinchoku@127.0.0.1:5432/reporting_db"
        assert settings["nats_url"] == external.plain_url
        assert settings["nats_user"] == "reporting"
        assert settings["nats_password"] == external.passwords["reporting"]
        assert up.stack()["external_nats_url"] == external.plain_url
        assert "external" in up.text()
        assert up.stop() == 0


def test_external_nats_without_service_credentials_is_a_clear_error(make_up: Callable[..., Up]) -> None:
    up = make_up(fake=True)
    up.env["SHINCHOKU_NATS_URL"] = "nats://nats-1:4222,nats://nats-2:4222"
    result = up.run_again()
    assert result.returncode == 2
    assert "SHINCHOKU_CATALOG_NATS_PASSWORD" in result.stderr


def test_ports_from_dotenv(make_up: Callable[..., Up], tmp_path: Path) -> None:
    from shinchoku_runtime.natsserver import free_port

    up = make_up(fake=True)
    port = free_port()
    del up.env["SHINCHOKU_CATALOG_PORT"]
    (tmp_path / ".env").write_text(f"# as in .env.example\nSHINCHOKU_CATALOG_PORT={port}\n")
    up.start()
    up.wait_ready()
    assert up.url("catalog") == f"http://127.0.0.1:{port}"
    assert up.healthy("catalog")


def test_stale_pid_files_only_stop_our_own_leftovers(make_up: Callable[..., Up]) -> None:
    """A service an earlier run left holding its port is stopped; an unrelated process with a recycled pid is not."""
    import sys

    up = make_up(fake=True)
    run = up.data_dir / "run"
    run.mkdir(parents=True)
    leftover = subprocess.Popen([sys.executable, "-m", "catalog"], env=up.env, cwd=up.cwd)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        wait_for(lambda: _listening(int(up.env["SHINCHOKU_CATALOG_PORT"])), 15, "leftover catalog listening")
        (run / "catalog.pid").write_text(f"{leftover.pid}\n")
        (run / "ingest.pid").write_text(f"{stranger.pid}\n")
        up.start()
        up.wait_ready()
        assert leftover.wait(5) is not None
        assert stranger.poll() is None
        assert f"catalog: a process left by an earlier run is still alive (pid {leftover.pid})" in up.log
        assert up.pids()["ingest"] != stranger.pid
    finally:
        for process in (leftover, stranger):
            process.kill()
            process.wait()


def test_a_service_that_cannot_start_fails_up_with_its_log(make_up: Callable[..., Up], tmp_path: Path) -> None:
    up = make_up(fake=True)
    up.env["FAKE_FAIL_DIR"] = str(tmp_path)
    (tmp_path / "ingest").touch()
    result = up.run_again(timeout=60)
    assert result.returncode == 1
    assert "exited 4 times before it was healthy: ingest" in result.stderr
    assert "last lines of" in result.stderr
    assert list((up.data_dir / "run").glob("*.pid")) == []
