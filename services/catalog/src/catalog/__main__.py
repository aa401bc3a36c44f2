"""`python -m catalog` serves the catalog (HTTP and NATS) until SIGTERM; `python -m catalog seed` only seeds."""

from __future__ import annotations

import argparse
import json
import sys

from catalog import handlers, repository
from catalog.config import CatalogSettings
from shinchoku_runtime.db import make_engine
from shinchoku_runtime.telemetry import init_logging


def seed(settings: CatalogSettings) -> handlers.SeedResult:
    """Store the bundled plan in the catalog's database; the running catalog announces the change on NATS."""
    engine = make_engine(settings.resolved_database_url())
    try:
        repository.create_schema(engine)
        return handlers.seed_registry(engine, handlers.bundled_plan())
    finally:
        engine.dispose()


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
        result = seed(settings)
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
    from catalog.app import create_app  # the web and NATS stack, not needed to seed
    from shinchoku_runtime.service import serve

    serve(create_app(settings), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
