"""`shinchoku-client`: a ministry's command line (the standard library's argparse; nothing else to install).

    shinchoku-client template --agency mof --fy 2025 --quarter 1 -o reports.xlsx
    shinchoku-client import reports.xlsx --agency mof --dry-run
    shinchoku-client import reports.xlsx --agency mof --wait
    shinchoku-client decision EVENT_ID --agency mof
    shinchoku-client alerts --agency mof --state raised

Where the platform is: `--nats-url nats://AGENCY:PASSWORD@host:port` (what `shinchoku creds AGENCY` prints)
or $SHINCHOKU_CLIENT_NATS_URL; a URL without credentials logs in to NATS with the bearer token (a deployment
with the auth callout: one identity for HTTP and NATS); `--nats-ca ca.pem` or $SHINCHOKU_CLIENT_NATS_CA, the
deployment's CA, for its TLS; `--catalog-url`, `--ingest-url`, `--reporting-url` or
$SHINCHOKU_CLIENT_{CATALOG,INGEST,REPORTING}_URL (default the embedded stack's 127.0.0.1:8001–8003); the
agency's bearer token `--token` or $SHINCHOKU_TOKEN (`shinchoku token AGENCY` in the embedded default).
Exit codes: 0 done, 1 some report failed or was rejected, 2 the command itself is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contracts.agencies import Agency
from contracts.periods import FiscalQuarter
from shinchoku_client.api import (
    DEFAULT_CATALOG_URL,
    DEFAULT_INGEST_URL,
    DEFAULT_REPORTING_URL,
    AgencyApi,
    ApiError,
    NotServed,
)
from shinchoku_client.cells import CellError, parse_reported_at
from shinchoku_client.csvfile import ImportFileError
from shinchoku_client.importing import Loaded, judge, load_reports, send, template_data, validate
from shinchoku_client.publisher import AgencyPublisher, PublishError, Sent
from shinchoku_client.rows import Outcome
from shinchoku_client.workbook import write_template

ENV = "SHINCHOKU_CLIENT_"


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def _agency(code: str) -> Agency:
    if code not in Agency.__members__:
        raise argparse.ArgumentTypeError(f"unknown agency {code!r}; agencies are {', '.join(a.value for a in Agency)}")
    return Agency(code)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--agency", type=_agency, required=True, help="your agency's code, e.g. mof")
    common.add_argument("--token", default=os.environ.get("SHINCHOKU_TOKEN"), help="bearer token ($SHINCHOKU_TOKEN)")
    for service, default in (
        ("catalog", DEFAULT_CATALOG_URL),
        ("ingest", DEFAULT_INGEST_URL),
        ("reporting", DEFAULT_REPORTING_URL),
    ):
        env = f"{ENV}{service.upper()}_URL"
        common.add_argument(f"--{service}-url", default=os.environ.get(env, default), help=f"(${env}; {default})")
    parser = argparse.ArgumentParser(prog="shinchoku-client", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    template = verbs.add_parser("template", parents=[common], help="write the report template of a quarter (.xlsx)")
    template.add_argument("--fy", type=int, required=True, help="fiscal year (April start), e.g. 2025")
    template.add_argument("--quarter", type=int, choices=(1, 2, 3, 4), required=True)
    template.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")

    importing = verbs.add_parser("import", parents=[common], help="send the reports of a .xlsx or .csv file")
    importing.add_argument("file", type=Path)
    importing.add_argument("--dry-run", action="store_true", help="check every row as ingest would; send nothing")
    importing.add_argument("--reported-at", help="time of report for rows without one (no offset = Japan time)")
    importing.add_argument("--wait", action="store_true", help="wait for ingest's decision on each report")
    importing.add_argument(
        "--nats-url",
        default=os.environ.get(f"{ENV}NATS_URL"),
        help=f"nats://AGENCY:PASSWORD@host:port, or without credentials to log in with --token (${ENV}NATS_URL)",
    )
    importing.add_argument(
        "--nats-ca",
        type=Path,
        default=os.environ.get(f"{ENV}NATS_CA"),
        help=f"the deployment's CA certificate, to verify its NATS servers over TLS (${ENV}NATS_CA)",
    )

    decision = verbs.add_parser("decision", parents=[common], help="ingest's decision on one of your reports")
    decision.add_argument("event_id")

    alerts = verbs.add_parser("alerts", parents=[common], help="your agency's alerts")
    alerts.add_argument("--kind")
    alerts.add_argument("--state", choices=("raised", "resolved"))
    return parser


def nats_connect_options(url: str, *, token: str | None, ca_file: Path | None) -> dict[str, Any]:
    """How the publisher connects: TLS verified against the deployment's CA when given; the bearer token as the
    NATS credential when the URL carries none (the auth callout maps it to the agency's rights)."""
    options: dict[str, Any] = {}
    if ca_file is not None:
        context = ssl.create_default_context(cafile=str(ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        options["tls"] = context
    if token and not any("@" in u for u in url.split(",")):
        options["token"] = token
    return options


def _api(args: argparse.Namespace) -> AgencyApi:
    return AgencyApi(
        agency=args.agency,
        token=args.token,
        catalog_url=args.catalog_url,
        ingest_url=args.ingest_url,
        reporting_url=args.reporting_url,
    )


async def _template(args: argparse.Namespace) -> int:
    try:
        quarter = FiscalQuarter(args.fy, args.quarter)
    except ValueError as e:
        _say(f"error: --fy {args.fy} --quarter {args.quarter}: {e}")
        return 2
    if args.output is None and sys.stdout.isatty():
        _say("error: a workbook is binary: redirect it (> reports.xlsx) or pass -o reports.xlsx")
        return 2
    async with _api(args) as api:
        data = await template_data(api, quarter)
    content = write_template(data)
    if args.output is None:
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
    else:
        args.output.write_bytes(content)
    _say(f"template for {args.agency.value} {data.quarter.label}: {len(data.measures)} measure(s)")
    return 0


def print_errors(outcome: Outcome) -> None:
    for error in sorted(outcome.errors, key=lambda e: e.line):
        _say(f"  {error}")


async def _import(args: argparse.Namespace) -> int:
    try:
        explicit = parse_reported_at(args.reported_at) if args.reported_at else None
        loaded: Loaded = load_reports(args.file)
    except (ImportFileError, CellError, OSError) as e:
        _say(f"error: {e}")
        return 2
    _say(f"{args.file.name}: {loaded.kind}, {len(loaded.sheet.rows)} row(s)")
    outcome = validate(loaded, agency=args.agency, reported_at=explicit)
    for line, same in outcome.duplicates:
        _say(f"row {line} is the same report as row {same}: sent once")
    async with _api(args) as api:
        if args.dry_run:
            await judge(loaded, outcome, api)
            print_errors(outcome)
            print(  # noqa: T201 - the summary, on stdout
                f"dry run: {len(outcome.events)} row(s) would be admitted, {outcome.failed_rows} row(s) have errors; "
                "nothing was sent"
            )
            return 1 if outcome.errors else 0
        if not args.nats_url:
            _say(f"error: no NATS URL: pass --nats-url nats://{args.agency.value}:PASSWORD@host:port (shinchoku creds)")
            return 2
        options = nats_connect_options(args.nats_url, token=args.token, ca_file=args.nats_ca)
        async with AgencyPublisher(args.nats_url, agency=args.agency, api=api, connect_options=options) as publisher:
            decided: list[Sent] = []
            published = await send(loaded, outcome, publisher, on_sent=None, wait=args.wait, settled=decided)
        print_errors(outcome)
        print(f"published {published} report(s) as {args.agency.value}; {outcome.failed_rows} row(s) failed")  # noqa: T201
        if not args.wait:
            return 1 if outcome.errors else 0
        rejected = [s.decision for s in decided if s.decision is not None and not s.decision.admitted]
        for d in rejected:
            _say(f"  rejected {d.event_id}: {d.reason}: {d.message}")
        admitted = sum(1 for s in decided if s.decision is not None and s.decision.admitted)
        print(f"ingest admitted {admitted}, rejected {len(rejected)}")  # noqa: T201
        return 1 if outcome.errors or rejected else 0


async def _decision(args: argparse.Namespace) -> int:
    async with _api(args) as api:
        decided = await api.decision(args.event_id)
    if decided is None:
        _say(f"no decision on {args.event_id} from {args.agency.value} yet")
        return 1
    print(decided.model_dump_json(indent=2))  # noqa: T201
    return 0 if decided.admitted else 1


async def _alerts(args: argparse.Namespace) -> int:
    async with _api(args) as api:
        try:
            alerts = await api.alerts(kind=args.kind, state=args.state)
        except NotServed as e:
            _say(str(e))
            return 1
    for alert in alerts:
        where = f" {alert.measure_id}" if alert.measure_id else ""
        print(f"{alert.state:8} {alert.kind:20}{where} {alert.message_ja or alert.message_en or ''}")  # noqa: T201
    _say(f"{len(alerts)} alert(s)")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    run: dict[str, Any] = {"template": _template, "import": _import, "decision": _decision, "alerts": _alerts}
    try:
        code = asyncio.run(run[args.verb](args))
    except (ApiError, PublishError, OSError) as e:
        _say(f"error: {e}")
        code = 1
    raise SystemExit(code)
