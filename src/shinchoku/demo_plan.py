"""The demo history as a pure function: which messages the 17 agencies publish, from a seed and the registry.

Reproducible by construction: every draw comes from a random generator seeded by (seed, measure, agency,
quarter), and every event id is a uuid5 of the same, so the same seed yields the same event ids and the
same bytes whatever day the demo runs; a later day only adds the reports whose time has come. Running
the demo twice therefore admits nothing twice and conflicts with nothing.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from contracts.agencies import AGENCY_INFO, Agency
from contracts.catalog import Measure
from contracts.events import KpiObservation, ReasonCode, Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter, last_completed_quarter, quarters_between
from contracts.streams import status_subject

FIRST_QUARTER = FiscalQuarter(2024, 1)
DEFAULT_SEED = 20240401
_NAMESPACE = uuid.UUID("6f1d3c1e-5a8b-4e0c-9a52-73686e63686f")

ADMITTED = "admitted"
DUPLICATE = "duplicate"

#: Rejections the demo sends per reason code.
REJECTIONS_PER_REASON = 3

_NOTES = (
    "概ね計画どおり進捗。",
    "関係省庁との調整に時間を要している。",
    "予算執行の遅れにより一部スケジュールを見直し。",
    "実証事業を開始。",
    "システム改修の調達手続中。",
    "利用者数は前年同期比で増加。",
    "地方公共団体への説明会を実施。",
    "ガイドライン案についてパブリックコメントを実施。",
    "要件定義を完了。",
    "次期計画への反映を検討中。",
)
_PROFILES = ("steady", "struggling", "finishing", "late_start", "suspended")
_PROFILE_WEIGHTS = (55, 18, 14, 10, 3)


@dataclass(frozen=True)
class DemoMessage:
    """One message the demo publishes: as whom, where, the exact bytes, and what ingest should make of it."""

    agency: str
    subject: str
    payload: bytes
    kind: str  # report, correction, duplicate, rejection
    expect: str  # admitted, duplicate, or a reason code
    event_id: str | None = None


def event_uuid(seed: int, *parts: object) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, ":".join(str(p) for p in (seed, *parts)))


def _rng(seed: int, *parts: object) -> random.Random:
    # String seeds hash with SHA-512: stable across processes and PYTHONHASHSEED.
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def _moment(day: date, rng: random.Random) -> datetime:
    """A plausible office-hours moment on `day`, Asia/Tokyo."""
    return datetime.combine(day, time(rng.randint(9, 18), rng.randrange(0, 60, 5)), tzinfo=TOKYO)


def _reported_at(quarter: FiscalQuarter, rng: random.Random, *, late: bool) -> datetime:
    """Within the last days of the quarter or in the month after it; late ones 32–75 days after its end."""
    last_day = quarter.end
    offset = rng.randint(32, 75) if late else rng.choice((rng.randint(-10, 0), rng.randint(1, 29), rng.randint(5, 25)))
    return _moment(last_day + timedelta(days=offset), rng)


def _status(profile: str, index: int, turn: int, rng: random.Random) -> Status:
    """The status a lead reports in the quarter `index` quarters after FY2024Q1."""
    r = rng.random()
    if profile == "finishing" and index >= turn:
        return Status.completed
    if profile == "late_start" and index < turn:
        return Status.not_started
    if profile == "suspended" and index >= turn:
        return Status.suspended
    if profile == "struggling":
        return Status.delayed if r < 0.35 else Status.at_risk if r < 0.8 else Status.on_track
    if index == 0 and r < 0.08:
        return Status.not_started
    return Status.on_track if r < 0.84 else Status.at_risk if r < 0.95 else Status.delayed


def _corrected(status: Status, rng: random.Random) -> Status:
    """A correction names another status, as a second look at the facts would."""
    options = {
        Status.on_track: (Status.at_risk, Status.completed),
        Status.at_risk: (Status.on_track, Status.delayed),
        Status.delayed: (Status.at_risk,),
        Status.not_started: (Status.on_track,),
        Status.completed: (Status.on_track,),
        Status.suspended: (Status.delayed,),
    }[status]
    return rng.choice(options)


def _slips(seed: int, measure: Measure, agency: Agency, quarter: FiscalQuarter) -> bool:
    """Now and then a clerk types a percentage as a fraction (0.45 for 45 %) or a count in thousands: admitted,
    and a `kpi_jump` alert for the secretariat. Its own generator, so the rest of the report is drawn as before."""
    return _rng(seed, "slip", measure.id, agency.value, quarter.label).random() < 0.03


def _kpis(
    measure: Measure, quarter: FiscalQuarter, index: int, reported_at: datetime, base: float, *, slip: bool = False
) -> list[KpiObservation]:
    as_of = min(quarter.end, reported_at.astimezone(TOKYO).date())
    out = []
    for target in measure.targets[:3]:
        if target.value is None:
            continue
        share = min(1.0, base + 0.06 * index)
        start = target.baseline.value if target.baseline is not None and target.direction is not None else 0.0
        if target.value_is_change:
            start = 0.0
        # From the plan's starting point where it states one (3-14: 35.4 % → 45.4 %), else from zero.
        reached = start + (target.value - start) * share
        value = round(reached, 1) if abs(target.value) >= 10 else round(reached, 2)
        if slip:
            value = round(value / (100 if target.unit in ("%", "％") else 1000), 4)
        out.append(KpiObservation(target=target.index, value=value, as_of=as_of))
    return out


def _encode(event: StatusEvent) -> bytes:
    # Exactly what shinchoku.client.AgencyPublisher.publish sends for this event.
    return event.model_dump_json().encode()


@dataclass(frozen=True)
class _Lead:
    measure: Measure
    agency: Agency


def plan_reports(measures: Sequence[Measure], *, seed: int, now: datetime) -> list[DemoMessage]:
    """Reports and corrections by each lead of each measure, FY2024Q1 through the last completed quarter."""
    quarters = quarters_between(FIRST_QUARTER, last_completed_quarter(now))
    messages: list[DemoMessage] = []
    for measure in measures:
        m_rng = _rng(seed, "measure", measure.id)
        profile = m_rng.choices(_PROFILES, weights=_PROFILE_WEIGHTS)[0]
        turn = m_rng.randint(1, 8)
        numeric = any(t.value is not None for t in measure.targets)
        for agency in measure.lead_agencies:
            a_rng = _rng(seed, "lead", measure.id, agency.value)
            if a_rng.random() < 0.03:
                continue  # a lead that never reports: silence
            diligence = a_rng.uniform(0.78, 0.97)
            lateness = a_rng.uniform(0.03, 0.2)
            progress0, step = a_rng.uniform(0, 35), a_rng.uniform(3, 11)
            kpi_base = a_rng.uniform(0.35, 0.75)
            reports_kpis = numeric and a_rng.random() < 0.7
            reporter = (
                f"{AGENCY_INFO[agency].name_ja} {a_rng.choice(('政策評価担当', '企画課', '総括担当', 'DX推進室'))}"
            )
            for index, quarter in enumerate(quarters):
                q_rng = _rng(seed, "report", measure.id, agency.value, quarter.label)
                if q_rng.random() > diligence:
                    continue  # silence this quarter
                reported_at = _reported_at(quarter, q_rng, late=q_rng.random() < lateness)
                status = _status(profile, index, turn, q_rng)
                progress = 100.0 if status is Status.completed else round(min(99.0, progress0 + step * index), 1)
                if status is Status.not_started:
                    progress = 0.0
                event = StatusEvent(
                    event_id=event_uuid(seed, measure.id, agency.value, quarter.label, "report"),
                    measure_id=measure.id,
                    agency=agency,
                    fiscal_year=quarter.fiscal_year,
                    quarter=quarter.quarter,
                    status=status,
                    progress=progress,
                    kpis=_kpis(
                        measure, quarter, index, reported_at, kpi_base, slip=_slips(seed, measure, agency, quarter)
                    )
                    if reports_kpis
                    else [],
                    note=q_rng.choice(_NOTES) if q_rng.random() < 0.3 else None,
                    reported_at=reported_at,
                    reporter=reporter,
                )
                correct = q_rng.random() < 0.05
                correction_at = reported_at + timedelta(days=q_rng.randint(2, 20), hours=q_rng.randint(0, 5))
                corrected_status = _corrected(status, q_rng)
                if reported_at > now:
                    continue  # not reported yet: a later run of the demo will send it
                messages.append(_message(event, "report", ADMITTED))
                if correct and correction_at <= now:
                    fixed = event.model_copy(
                        update={
                            "event_id": event_uuid(seed, measure.id, agency.value, quarter.label, "correction"),
                            "status": corrected_status,
                            "reported_at": correction_at,
                            "note": "前回報告を訂正。",
                        }
                    )
                    messages.append(_message(fixed, "correction", ADMITTED))
    return messages


def _message(event: StatusEvent, kind: str, expect: str, payload: bytes | None = None) -> DemoMessage:
    return DemoMessage(
        agency=event.agency.value,
        subject=status_subject(event.agency, event.measure_id),
        payload=payload if payload is not None else _encode(event),
        kind=kind,
        expect=expect,
        event_id=str(event.event_id),
    )


def _raw(agency: Agency | str, measure_id: str, body: Any, kind: str, expect: str) -> DemoMessage:
    payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
    event_id = body.get("event_id") if isinstance(body, dict) else None
    return DemoMessage(str(agency), status_subject(agency, measure_id), payload, kind, expect, event_id)


def plan_duplicates(reports: Sequence[DemoMessage], *, seed: int) -> list[DemoMessage]:
    """About one report in a hundred sent again, byte for byte (a client retry): admitted once."""
    return [
        DemoMessage(m.agency, m.subject, m.payload, "duplicate", DUPLICATE, m.event_id)
        for m in reports
        if _rng(seed, "duplicate", m.event_id).random() < 0.01
    ]


def plan_rejections(
    measures: Sequence[Measure], reports: Sequence[DemoMessage], *, seed: int, per_reason: int = REJECTIONS_PER_REASON
) -> list[DemoMessage]:
    """A few messages of each kind ingest must reject, each sent with the publishing agency's own credentials."""
    rng = _rng(seed, "rejections")
    known = {m.id for m in measures}
    led = sorted(measures, key=lambda m: m.id)
    out: list[DemoMessage] = []

    def pick() -> tuple[Measure, Agency]:
        measure = rng.choice(led)
        return measure, rng.choice(measure.lead_agencies)

    def body(measure_id: str, agency: Agency | str, quarter: FiscalQuarter, n: int, reason: str) -> dict[str, Any]:
        return {
            "event_id": str(event_uuid(seed, "rejection", reason, n)),
            "measure_id": measure_id,
            "agency": str(agency),
            "fiscal_year": quarter.fiscal_year,
            "quarter": quarter.quarter,
            "status": "on_track",
            "reported_at": _reported_at(quarter, rng, late=False).isoformat(),
        }

    q = FiscalQuarter(2024, 2)
    for n in range(per_reason):
        measure, agency = pick()
        r = ReasonCode.malformed.value
        if n % 3 == 0:
            bad: Any = f"status={measure.id},on_track (exported from a spreadsheet)".encode()
        elif n % 3 == 1:
            bad = body(measure.id, agency, q, n, r) | {"stauts": "on_track"}  # a typo is an unknown field
        else:
            bad = body(measure.id, agency, q, n, r) | {"progress": 140}
        out.append(_raw(agency, measure.id, bad, "rejection", r))

        # Forged payload agency: sent on the agency's own subject (its credentials allow nothing else).
        measure, agency = pick()
        others = [a for a in Agency if a != agency]
        forged = rng.choice([a for a in measure.lead_agencies if a != agency] or others)
        out.append(
            _raw(agency, measure.id, body(measure.id, forged, q, n, "agency_mismatch"), "rejection", "agency_mismatch")
        )

        _, agency = pick()
        missing = f"{rng.randint(1, 6)}-{900 + n}"
        while missing in known:
            missing = f"{rng.randint(1, 6)}-{rng.randint(900, 999)}"
        out.append(
            _raw(agency, missing, body(missing, agency, q, n, "unknown_measure"), "rejection", "unknown_measure")
        )

        measure = rng.choice([m for m in led if len(m.lead_agencies) < len(Agency)])
        outsider = rng.choice([a for a in Agency if a not in measure.lead_agencies])
        out.append(_raw(outsider, measure.id, body(measure.id, outsider, q, n, "not_lead"), "rejection", "not_lead"))

        # A year typed a century off: 2124 for 2024. Fixed, so it stays in the future and reproducible.
        measure, agency = pick()
        typo = body(measure.id, agency, q, n, "future_timestamp")
        typo["reported_at"] = datetime(2124 + n, 10, 15, 10, 0, tzinfo=TOKYO).isoformat()
        out.append(_raw(agency, measure.id, typo, "rejection", "future_timestamp"))

        # A report on a quarter that had not begun when it was made.
        measure, agency = pick()
        early = body(measure.id, agency, FiscalQuarter(2024, 4), n, "future_period")
        early["reported_at"] = _moment(date(2024, 11, 12 + n), rng).isoformat()
        out.append(_raw(agency, measure.id, early, "rejection", "future_period"))

        # A KPI dated after its report: the observation's year typed 2099 for 2024.
        measure = rng.choice([m for m in led if m.targets])
        agency = rng.choice(measure.lead_agencies)
        ahead = body(measure.id, agency, q, n, "kpi_future")
        ahead["kpis"] = [{"target": 0, "value": 1.0, "as_of": date(2099, 9, 30 - n).isoformat()}]
        out.append(_raw(agency, measure.id, ahead, "rejection", "kpi_future"))

    # The same event_id resent with another status: in FY2024, whose reports every run sends.
    first_year = [m for m in reports if m.kind == "report" and json.loads(m.payload)["fiscal_year"] == 2024]
    for m in rng.sample(first_year, min(per_reason, len(first_year))):
        changed = json.loads(m.payload)
        changed["status"] = Status.delayed.value if changed["status"] != Status.delayed.value else Status.on_track.value
        out.append(_raw(m.agency, changed["measure_id"], changed, "rejection", ReasonCode.duplicate_conflict.value))
    return out


def plan_demo(measures: Iterable[Measure], *, seed: int = DEFAULT_SEED, now: datetime) -> list[DemoMessage]:
    """The whole demo in publish order: reports and corrections, then resent duplicates, then rejections."""
    ordered = sorted(measures, key=lambda m: tuple(int(x) for x in m.id.split("-")))
    reports = plan_reports(ordered, seed=seed, now=now)
    return reports + plan_duplicates(reports, seed=seed) + plan_rejections(ordered, reports, seed=seed)


def expected_outcomes(messages: Sequence[DemoMessage]) -> Counter[str]:
    """How many messages should end admitted, as duplicates, or rejected for each reason."""
    return Counter(m.expect for m in messages)
