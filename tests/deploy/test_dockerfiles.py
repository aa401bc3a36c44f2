"""The service Dockerfiles: checked line by line, and their build stage replayed without Docker.

The replay copies exactly what each Dockerfile's COPY lines copy into an empty directory and runs its
`uv sync --frozen … --package shinchoku-<service>` steps there, then imports the service's entry point with
the resulting environment. That proves the lock is enough (`--frozen`), the wheel carries what the service
needs (package data included), and the service imports no other service (their code is not in the image).
What it does not prove: the base images, `useradd`, HEALTHCHECK timing, or anything Docker itself does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
APP_SERVICES = ("catalog", "ingest", "reporting")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text("utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def build_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The instructions of the first stage (up to the second FROM)."""
    steps = instructions(dockerfile)
    froms = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    return steps[froms[0] : froms[1]]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last:]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_dockerfile_builds_only_this_service_with_the_frozen_lock(service: str, specs: dict[str, Any]) -> None:
    dockerfile = DOCKER / f"{service}.Dockerfile"
    runs = [args for k, args in build_stage(dockerfile) if k == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert len(syncs) == 2, "dependencies first (cached layer), then the workspace packages"
    for sync in syncs:
        assert "--frozen" in sync
        assert f"--package shinchoku-{service}" in sync
        assert "--no-dev" in sync
    assert "--no-install-workspace" in syncs[0]
    assert "--no-editable" in syncs[1], "the final image carries wheels, not the source tree"
    copies = [args for k, args in build_stage(dockerfile) if k == "COPY" and not args.startswith("--from")]
    sources = [source for copy in copies for source in copy.split()[:-1]]
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
    for other in APP_SERVICES:
        if other != service:  # its metadata only (uv checks the lock against every member), never its code
            assert [s for s in sources if s.startswith(f"services/{other}/")] == [f"services/{other}/pyproject.toml"]

    final = final_stage(dockerfile)
    keywords = [k for k, _ in final]
    assert "HEALTHCHECK" in keywords
    assert dict(final)["USER"] != "root"
    assert json.loads(dict(final)["CMD"]) == ["python", "-m", service]
    assert dict(final)["EXPOSE"] == str(specs[service].default_port)
    healthcheck = dict(final)["HEALTHCHECK"]
    assert f"127.0.0.1:{specs[service].default_port}/healthz" in healthcheck
    assert (ROOT / "services" / service / "src" / service / "__main__.py").is_file()
    ignore = (DOCKER / f"{service}.Dockerfile.dockerignore").read_text("utf-8")
    assert f"!services/{service}/" in ignore


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
@pytest.mark.parametrize("service", APP_SERVICES)
def test_dockerfile_build_stage_replayed_without_docker(service: str, tmp_path: Path) -> None:
    dockerfile = DOCKER / f"{service}.Dockerfile"
    context = tmp_path / "app"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", ".mypy_cache", ".ruff_cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env |= {
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": sys.executable,  # the image's python:3.11; here the interpreter running the tests
        "UV_LINK_MODE": "hardlink",  # the image copies; hardlinks from the local cache are quicker here
        "UV_COMPILE_BYTECODE": "0",
    }
    for keyword, args in build_stage(dockerfile):
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, destination = args.split()
            for source in sources:
                src = ROOT / source
                target = context / destination / (src.name if destination.endswith("/") and src.is_file() else "")
                if src.is_dir():
                    shutil.copytree(src, context / destination, ignore=ignore, dirs_exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
        elif keyword == "RUN" and "uv sync" in args:
            command = shlex.split(args[args.index("uv sync") :])
            done = subprocess.run(command, cwd=context, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    for other in APP_SERVICES:
        if other != service:
            assert [p.name for p in (context / "services" / other).iterdir()] == ["pyproject.toml"]
    python = context / ".venv" / "bin" / "python"
    probe = (
        f"import {service}.__main__, {service}.app, importlib.util; "
        f"others = [m for m in {list(APP_SERVICES)!r} if m != {service!r} and importlib.util.find_spec(m)]; "
        "assert not others, others; "
        f"print({service}.app.__file__)"
    )
    if service == "catalog":  # package data travels in the wheel: the plan the catalog seeds from
        probe += "; print(len(catalog.app.bundled_plan()))"
    done = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert "site-packages" in lines[0], "installed as a wheel, not from the source tree"
    if service == "catalog":
        assert lines[1] == "320"
