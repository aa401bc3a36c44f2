"""One on-time rate: the API's document, the CLI's tables and the dashboard show the same figure for the same data.

Reports (some late, many measures silent) go through a real nats-server into a real reporting app; the rate is
read from `GET /rollups/{fy}/{q}` (`on_time_rate`), from `shinchoku rollup`'s view of that document, and from the
app's own dashboard page, government-wide, per agency and per section.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from rich.console import Console

from contracts.periods import FiscalQuarter
from reporting.testing import (
    publish_admissions,
    put_catalog,
    random_admissions,
    reporting_settings,
    running_reporting,
    synthetic_measures,
    wait_caught_up,
)
from shinchoku.rollup_view import render_rollup
from shinchoku_runtime.natsserver import NatsServer

Q = FiscalQuarter(2025, 1)


def api_rate(part: dict[str, Any]) -> str:
    return f"{100 * part['on_time_rate']:.1f}%"


def cli_rate(rollup: dict[str, Any], *, agency: str | None = None, section: str | None = None) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(render_rollup(rollup, agency=agency, section=section, width=200))
    found = re.search(r"on time\s+\d+\s+(\S+) of all measures", console.export_text())
    assert found, f"the CLI shows no on-time rate for {agency or section or 'government-wide'}"
    return found.group(1)


def dashboard_rates(html: str, table: str) -> dict[str, str]:
    part = html.split(f'data-testid="{table}"', 1)[1].split("</table>", 1)[0]
    return dict(re.findall(r'<tr data-key="([^"]+)".*?data-col="on-time">([^<]*)<', part, flags=re.S))


def dashboard_headline(html: str) -> str:
    found = re.search(r'data-testid="on-time-rate">([^<]*)<', html)
    assert found
    return found.group(1)


async def test_api_cli_and_dashboard_show_the_same_on_time_rate(
    nats_server: NatsServer, admin_nc: Client, sqlite_url: str, tmp_path: Path
) -> None:
    measures = synthetic_measures(90, seed=3)
    await put_catalog(admin_nc, measures)
    settings = reporting_settings(nats_server.plain_url, nats_server.passwords["reporting"], sqlite_url, tmp_path)
    async with running_reporting(settings) as reporting:
        await publish_admissions(admin_nc, random_admissions(measures, [Q], 70, seed=3))
        await wait_caught_up(admin_nc)
        http = reporting.http
        rollup = (await http.get(f"/rollups/{Q.fiscal_year}/{Q.quarter}")).json()
        # The data tells the two rates apart: late reports, and measures nobody reported on.
        assert 0 < rollup["on_time"] < rollup["reported"] < rollup["measures_total"]
        assert api_rate(rollup) != f"{100 * rollup['on_time'] / rollup['reported']:.1f}%"

        page = (await http.get("/dashboard", params={"fy": Q.fiscal_year, "q": Q.quarter})).text
        assert dashboard_headline(page) == api_rate(rollup) == cli_rate(rollup)

        agencies = dashboard_rates(page, "agency-table")
        assert agencies, "the dashboard lists no agency"
        for code, shown in agencies.items():
            part = rollup["by_agency"][code]
            assert shown == api_rate(part) == cli_rate(rollup, agency=code), code
        sections = dashboard_rates(page, "section-table")
        assert set(sections) == set(rollup["by_section"])
        for number, shown in sections.items():
            part = rollup["by_section"][number]
            assert shown == api_rate(part) == cli_rate(rollup, section=number), number

        code = next(iter(agencies))
        filtered = (await http.get("/dashboard", params={"fy": Q.fiscal_year, "q": Q.quarter, "agency": code})).text
        assert dashboard_headline(filtered) == api_rate(rollup["by_agency"][code])
