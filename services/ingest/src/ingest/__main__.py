"""`python -m ingest`: HTTP on :8002 and the STATUS consumer, until SIGTERM."""

from __future__ import annotations

from ingest.app import create_app
from ingest.config import IngestSettings
from shinchoku_runtime.service import serve
from shinchoku_runtime.telemetry import init_logging


def main() -> None:
    settings = IngestSettings()
    init_logging("ingest", settings.log_level)
    serve(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
