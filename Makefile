# The two commands of the README: `make up` (set up and run the platform) and `make test`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
VENV := .venv

.PHONY: up test setup lint typecheck check bench clean

$(UV):
	@echo "uv not found: bootstrapping it with pip into .bootstrap/"
	$(PYTHON) -m venv .bootstrap
	.bootstrap/bin/pip install --quiet --disable-pip-version-check uv

$(VENV)/.synced: $(UV) pyproject.toml uv.lock contracts/pyproject.toml client/pyproject.toml runtime/pyproject.toml services/*/pyproject.toml
	$(UV) sync --all-packages --frozen --compile-bytecode
	@# Bytecode up front: each service process starts in ~1.5 s instead of ~4 s (see `make up`'s "ready in").
	$(VENV)/bin/python -m compileall -q contracts/src client/src runtime/src services/catalog/src services/ingest/src services/reporting/src src >/dev/null
	@touch $@

setup: $(VENV)/.synced ## Create .venv with every package (uv workspace, one lock)

up: setup ## Set up and run the whole platform on one machine (nats-server, catalog, ingest, reporting); Ctrl-C stops it
	$(VENV)/bin/shinchoku up $(ARGS)

# The suite runs on TEST_WORKERS pytest-xdist processes: most tests wait on real servers (nats-server, PostgreSQL,
# Chromium, service processes), so more workers than cores still shortens it; the cluster scenarios stay on one
# worker (conftest.py, CLUSTER). `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 3

test: setup ## Set up and run every test
	$(VENV)/bin/pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check contracts client runtime services src || true

typecheck: setup
	$(VENV)/bin/mypy contracts/src client/src runtime/src services/catalog/src services/ingest/src services/reporting/src src
	MYPYPATH=src $(VENV)/bin/mypy --explicit-package-bases conftest.py services/catalog/tests services/ingest/tests services/reporting/tests tests bench

check: lint typecheck test

clean:
	rm -rf $(VENV) .bootstrap
