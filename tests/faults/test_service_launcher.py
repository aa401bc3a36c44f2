"""The deployment harness starts a replica again on a fresh port when its port was taken while it was down."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from .service_launcher import ClusterDeployment, Replica

#: A service stand-in: uvicorn on the port the harness gives it (SHINCHOKU_STANDIN_PORT), 200 on every path, or
#: an exit with code 2 when told to fail.
STANDIN = """
import os, sys, uvicorn

if os.environ.get("STANDIN_FAIL"):
    sys.exit("standin: told to fail")

async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=int(os.environ["SHINCHOKU_STANDIN_PORT"]), lifespan="off")
"""


def deployment(tmp_path: Path, port: int, **env: str) -> ClusterDeployment:
    (tmp_path / "standin.py").write_text(STANDIN)
    # No cluster: the harness's process handling only.
    target = ClusterDeployment(cluster=None, directory=tmp_path, databases={}, settings={})  # type: ignore[arg-type]
    target.processes["standin-1"] = Replica(
        name="standin-1",
        module="standin",
        env={"PYTHONPATH": str(tmp_path), "SHINCHOKU_STANDIN_PORT": str(port), **env},
        port=port,
        log_file=tmp_path / "logs" / "standin-1.log",
        python=sys.executable,
    )
    return target


def test_a_taken_port_is_replaced(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        target = deployment(tmp_path, port)
        try:
            target.start(["standin-1"], timeout=30)
            replica = target.processes["standin-1"]
            assert replica.port != port
            assert target.healthy("standin-1")
            assert "address already in use" in replica.log_file.read_text().lower()
        finally:
            target.stop()


def test_any_other_exit_is_raised(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = deployment(tmp_path, port, STANDIN_FAIL="1")
    try:
        with pytest.raises(RuntimeError, match="told to fail"):
            target.start(["standin-1"], timeout=30)
        assert target.processes["standin-1"].port == port
    finally:
        target.stop()
