"""The admission rules as a ministry client uses them: judging an event before sending it, as ingest would."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.admission import Admit, PriorRecord, Reject, admit, judge_event
from contracts.catalog import Measure, Target
from contracts.events import ReasonCode, StatusEvent
from contracts.streams import status_subject

MEASURE = Measure(
    id="1-25",
    section=1,
    section_title="デジタル化による成長戦略",
    title="e-Taxの利用促進",
    lead_agencies=["mof", "digital"],
    targets=[Target(index=0, text="e-Tax 80％")],
)
NOW = datetime(2024, 12, 20, 9, 0, tzinfo=UTC)


def event(**changes: Any) -> StatusEvent:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "measure_id": "1-25",
        "agency": "mof",
        "fiscal_year": 2024,
        "quarter": 3,
        "status": "on_track",
        "reported_at": "2024-12-20T17:00:00+09:00",
        **changes,
    }
    return StatusEvent.model_validate(body)


CASES = [
    ({}, None, None),
    ({"agency": "mhlw"}, ReasonCode.not_lead, "measure_id"),
    ({"measure_id": "6-99"}, ReasonCode.unknown_measure, "measure_id"),
    ({"kpis": [{"target": 3, "value": 1, "as_of": "2024-12-01"}]}, ReasonCode.malformed, "kpis.0.target"),
    ({"reported_at": "2024-12-20T18:06:00+09:00"}, ReasonCode.future_timestamp, "reported_at"),
    ({"quarter": 4}, ReasonCode.future_period, "quarter"),
    ({"note": "途中に\x00"}, ReasonCode.malformed, "note"),
    # An observation dated after its report (Asia/Tokyo days): 2024-12-21 is the day after 17:00 on the 20th.
    ({"kpis": [{"target": 0, "value": 1, "as_of": "2024-12-21"}]}, ReasonCode.kpi_future, "kpis.0.as_of"),
    ({"kpis": [{"target": 0, "value": 1, "as_of": "2024-12-20"}]}, None, None),
    # kpi_future is last in precedence: a report with a future timestamp says that first.
    (
        {"reported_at": "2024-12-20T18:06:00+09:00", "kpis": [{"target": 0, "value": 1, "as_of": "2099-01-01"}]},
        ReasonCode.future_timestamp,
        "reported_at",
    ),
]


@pytest.mark.parametrize(("changes", "reason", "field"), CASES)
def test_an_event_is_judged_as_ingest_judges_its_bytes(
    changes: dict[str, Any], reason: ReasonCode | None, field: str | None
) -> None:
    e = event(**changes)
    measure = MEASURE if e.measure_id == MEASURE.id else None
    judged = judge_event(e, now=NOW, measure=measure)
    sent = admit(
        status_subject(e.agency, e.measure_id),
        e.model_dump_json().encode(),
        now=NOW,
        measure={MEASURE.id: MEASURE},
        previous={},
    )
    assert judged == sent
    if reason is None:
        assert isinstance(judged, Admit)
    else:
        assert isinstance(judged, Reject)
        assert (judged.reason, judged.field) == (reason, field)
        assert reason.value in judged.message


def test_a_kpi_dated_after_its_report_is_rejected_with_what_to_do() -> None:
    late = event(
        reported_at="2025-01-05T23:30:00+09:00",  # 14:30 UTC: still the 5th in Tokyo
        quarter=3,
        kpis=[{"target": 0, "value": 1, "as_of": "2025-01-05"}, {"target": 0, "value": 2, "as_of": "2099-03-31"}],
    )
    judged = judge_event(late, now=datetime(2025, 1, 6, tzinfo=UTC), measure=MEASURE)
    assert isinstance(judged, Reject)
    assert (judged.reason, judged.field) == (ReasonCode.kpi_future, "kpis.1.as_of")
    assert "2099-03-31" in judged.message
    assert "2025-01-05" in judged.message


def test_a_kpi_target_the_measure_lacks_says_so() -> None:
    judged = judge_event(event(kpis=[{"target": 5, "value": 1, "as_of": "2024-12-01"}]), now=NOW, measure=MEASURE)
    assert isinstance(judged, Reject)
    assert "target 5 does not exist" in judged.message


def test_the_clock_skew_allowance_is_five_minutes() -> None:
    at = event(reported_at=(NOW + timedelta(minutes=5)).isoformat())
    assert isinstance(judge_event(at, now=NOW, measure=MEASURE), Admit)
    past = event(reported_at=(NOW + timedelta(minutes=5, seconds=1)).isoformat())
    assert isinstance(judge_event(past, now=NOW, measure=MEASURE), Reject)


def test_a_record_of_the_id_is_taken_into_account() -> None:
    e = event()
    first = judge_event(e, now=NOW, measure=MEASURE)
    assert isinstance(first, Admit)
    other = PriorRecord("another content", admitted=True, agency="mof")
    judged = judge_event(e, now=NOW, measure=MEASURE, previous=other)
    assert isinstance(judged, Reject)
    assert (judged.reason, judged.field) == (ReasonCode.duplicate_conflict, "event_id")


def test_the_rules_need_pydantic_only() -> None:
    """A ministry's client installs `contracts` alone: the rules must not pull in any service's dependencies."""
    code = (
        "import sys, contracts.admission; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'sqlmodel', 'nats', 'faststream', 'fastapi', 'opentelemetry', 'ingest', 'shinchoku_runtime'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
