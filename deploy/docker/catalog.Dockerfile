# syntax=docker/dockerfile:1
# The catalog service (the registry of measures: HTTP and catalog.measure.get), as `python -m catalog`.
# Build from the repository root:  docker build -f deploy/docker/catalog.Dockerfile -t shinchoku/catalog .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PYTHON=/usr/local/bin/python3
WORKDIR /app
# Third-party dependencies first, in a layer that changes only with uv.lock. uv reads every workspace
# member's metadata to check the lock, so all of them are copied; only this service's are installed.
COPY pyproject.toml uv.lock README.md ./
COPY contracts/pyproject.toml contracts/
COPY runtime/pyproject.toml runtime/
COPY services/catalog/pyproject.toml services/catalog/
COPY services/ingest/pyproject.toml services/ingest/
COPY services/reporting/pyproject.toml services/reporting/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package shinchoku-catalog
# Then the code this service imports: contracts, the runtime kit and the service itself (never another service).
COPY contracts/ contracts/
COPY runtime/ runtime/
COPY services/catalog/ services/catalog/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package shinchoku-catalog

FROM python:${PYTHON_VERSION}-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/shinchoku shinchoku
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SHINCHOKU_CATALOG_HOST=0.0.0.0 \
    SHINCHOKU_CATALOG_PORT=8001 \
    SHINCHOKU_CATALOG_DATA_DIR=/var/lib/shinchoku
USER shinchoku
WORKDIR /var/lib/shinchoku
EXPOSE 8001
# /healthz answers 503 until the database and NATS are ready; urlopen raises on anything but 2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "catalog"]
