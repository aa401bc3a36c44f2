"""An independent checker: the rollups that must be served, computed from what the publishers got acknowledged.

Nothing here imports the services: the binding rules of DESIGN.md (effective report, severity, on time,
per-agency and per-section counts) are written out again over plain values, so that a bug in the
services' domain code cannot hide itself by agreeing with itself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

#: Most severe first (DESIGN: delayed > at_risk > suspended > not_started > on_track > completed).
SEVERITY = ("delayed", "at_risk", "suspended", "not_started", "on_track", "completed")
ROLLUP_KEYS = (*SEVERITY, "unreported")
JST = timezone(timedelta(hours=9))


@dataclass(frozen=True)
class MeasureInfo:
    id: str
    section: int
    leads: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """A report as the publisher sent it (and, once acknowledged, as it must be counted)."""

    event_id: str
    measure_id: str
    agency: str
    fiscal_year: int
    quarter: int
    status: str
    reported_at: datetime

    def body(self) -> bytes:
        return json.dumps(
            {
                "event_id": self.event_id,
                "measure_id": self.measure_id,
                "agency": self.agency,
                "fiscal_year": self.fiscal_year,
                "quarter": self.quarter,
                "status": self.status,
                "reported_at": self.reported_at.isoformat(),
                "reporter": "fault-suite",
            }
        ).encode()

    @property
    def subject(self) -> str:
        return f"status.{self.agency}.{self.measure_id}"


def quarter_last_day(fiscal_year: int, quarter: int) -> date:
    """FY N: Q1 Apr–Jun, Q2 Jul–Sep, Q3 Oct–Dec of N, Q4 Jan–Mar of N+1."""
    return {
        1: date(fiscal_year, 6, 30),
        2: date(fiscal_year, 9, 30),
        3: date(fiscal_year, 12, 31),
        4: date(fiscal_year + 1, 3, 31),
    }[quarter]


def on_time_deadline(fiscal_year: int, quarter: int) -> datetime:
    """The end of the 30th day after the quarter's last day, Tokyo."""
    end = datetime.combine(quarter_last_day(fiscal_year, quarter) + timedelta(days=1), time(), JST)
    return end + timedelta(days=30)


def on_time_by_receipt(report: Report, received_at: datetime) -> bool:
    """On time: the platform received it (the broker's timestamp of its STATUS message) by the deadline.

    `reported_at` is the reporter's claim and never decides timeliness (DESIGN.md "Rollup semantics")."""
    return received_at < on_time_deadline(report.fiscal_year, report.quarter)


def effective(reports: Iterable[Report]) -> dict[tuple[int, int, str, str], Report]:
    """Per (fy, q, measure, agency): the greatest reported_at, ties to the greater event_id."""
    out: dict[tuple[int, int, str, str], Report] = {}
    for r in reports:
        key = (r.fiscal_year, r.quarter, r.measure_id, r.agency)
        best = out.get(key)
        if best is None or (r.reported_at.astimezone(UTC), r.event_id) > (
            best.reported_at.astimezone(UTC),
            best.event_id,
        ):
            out[key] = r
    return out


@dataclass
class Tally:
    measures_total: int = 0
    reported: int = 0
    on_time: int = 0
    by_status: Counter[str] = field(default_factory=Counter)

    def add(self, status: str, all_on_time: bool) -> None:
        self.measures_total += 1
        self.by_status[status] += 1
        if status != "unreported":
            self.reported += 1
            self.on_time += all_on_time

    def document(self) -> dict[str, Any]:
        return {
            "measures_total": self.measures_total,
            "reported": self.reported,
            "on_time": self.on_time,
            "by_status": {k: self.by_status.get(k, 0) for k in ROLLUP_KEYS},
        }


def expected_rollup(
    measures: list[MeasureInfo],
    reports: Iterable[Report],
    fiscal_year: int,
    quarter: int,
    received: Mapping[str, datetime],
) -> dict[str, Any]:
    """The comparable part of GET /rollups/{fy}/{q}, and the effective event per measure/agency.

    `received`: per event_id, when the broker received it (the STATUS message's timestamp, read from the stream)."""
    eff = {k[2:]: v for k, v in effective(reports).items() if k[:2] == (fiscal_year, quarter)}

    def on_time(r: Report) -> bool:
        return on_time_by_receipt(r, received[r.event_id])

    government = Tally()
    by_section: dict[str, Tally] = {}
    by_agency: dict[str, Tally] = {}
    for m in measures:
        leads = [eff[(m.id, a)] for a in m.leads if (m.id, a) in eff]
        if leads:
            status = min((r.status for r in leads), key=SEVERITY.index)
            government.add(status, all(on_time(r) for r in leads))
        else:
            status = "unreported"
            government.add(status, False)
        by_section.setdefault(str(m.section), Tally()).add(status, bool(leads) and all(on_time(r) for r in leads))
        for agency in m.leads:
            own = eff.get((m.id, agency))
            by_agency.setdefault(agency, Tally()).add(
                own.status if own else "unreported", own is not None and on_time(own)
            )
    return {
        **government.document(),
        "by_section": {k: t.document() for k, t in sorted(by_section.items())},
        "by_agency": {k: t.document() for k, t in sorted(by_agency.items())},
        "effective": {f"{k[0]}/{k[1]}": v.event_id for k, v in eff.items()},
    }


def served_rollup(rollup: dict[str, Any], measures_page: dict[str, Any]) -> dict[str, Any]:
    """The same shape, from reporting's GET /rollups/{fy}/{q} and GET /rollups/{fy}/{q}/measures?limit=1000."""

    def tally(doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "measures_total": doc["measures_total"],
            "reported": doc["reported"],
            "on_time": doc["on_time"],
            "by_status": {k: doc["by_status"].get(k, 0) for k in ROLLUP_KEYS},
        }

    seen = {
        f"{item['measure_id']}/{lead['agency']}": lead["event_id"]
        for item in measures_page["items"]
        for lead in item["leads"]
        if lead.get("event_id")
    }
    return {
        **tally(rollup),
        "by_section": {k: tally(v) for k, v in sorted(rollup["by_section"].items())},
        "by_agency": {k: tally(v) for k, v in sorted(rollup["by_agency"].items()) if v["measures_total"]},
        "effective": seen,
    }


def differences(expected: dict[str, Any], served: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested documents (empty when equal)."""
    out: list[str] = []
    for key in sorted(set(expected) | set(served), key=str):
        e, s = expected.get(key), served.get(key)
        where = f"{prefix}{key}"
        if isinstance(e, dict) and isinstance(s, dict):
            out += differences(e, s, where + ".")
        elif e != s:
            out.append(f"{where}: expected {e!r}, served {s!r}")
    return out
