"""`python -m catalog` serves the catalog (HTTP and NATS) until SIGTERM; `python -m catalog seed` only seeds."""

from __future__ import annotations

import argparse
import json
import sys

from catalog.app import CatalogRuntime, create_app
from catalog.config import CatalogSettings
from shinchoku_runtime.service import serve
from shinchoku_runtime.telemetry import init_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catalog", description="The Shinchoku catalog service.")
    parser.add_argument(
        "command",
        nargs="?",
        choices=["serve", "seed"],
        default="serve",
        help="serve (default): HTTP and NATS until SIGTERM; seed: store the bundled plan in the database and exit",
    )
    args = parser.parse_args(argv)
    settings = CatalogSettings()
    init_logging("catalog", settings.log_level)
    if args.command == "seed":
        runtime = CatalogRuntime(settings)
        try:
            result = runtime.seed()
        finally:
            runtime.engine.dispose()
            runtime.tracer_provider.shutdown()
        summary = {
            "revision": result.revision,
            "measures_total": result.measures_total,
            "changed": result.changed,
            "added": list(result.changes.added),
            "updated": list(result.changes.updated),
            "removed": list(result.changes.removed),
        }
        sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
        return 0
    serve(create_app(settings), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
