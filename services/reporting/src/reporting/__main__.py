"""`python -m reporting` runs the service (HTTP and the consumer) until SIGTERM; `python -m reporting rebuild`
drops the reporting store and replays ACCEPTED (safe while the service runs)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from reporting.config import ReportingSettings
from shinchoku_runtime.telemetry import init_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reporting", description="Shinchoku reporting service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run HTTP and the ACCEPTED consumer (the default)")
    rebuild = commands.add_parser("rebuild", help="drop the reporting store and replay ACCEPTED from the start")
    rebuild.add_argument("--no-progress", action="store_true", help="no progress bar")
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="swap the replay in even when ACCEPTED does not start at sequence 1 or holds fewer events than the store",
    )
    args = parser.parse_args(argv)
    settings = ReportingSettings()
    init_logging("reporting", settings.log_level)

    if args.command == "rebuild":
        from reporting.rebuild import run_rebuild
        from shinchoku_runtime.heap import settle_heap

        settle_heap()  # a million messages pass through this process: no full collections over its start-up heap
        from reporting.rebuild import RebuildRefused

        try:
            result = asyncio.run(run_rebuild(settings, progress=not args.no_progress, force=args.force))
        except RebuildRefused as e:
            sys.stderr.write(f"rebuild refused: {e}\n")
            return 3
        sys.stdout.write(
            f"rebuilt the reporting store from {result.events_read:,} ACCEPTED messages: "
            f"{result.events_stored:,} events, {result.effective_reports:,} effective reports "
            f"in {result.seconds:.1f}s ({result.rate:,.0f} events/s)\n"
        )
        return 0

    from reporting.app import create_app
    from shinchoku_runtime.service import serve

    serve(create_app(settings), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
