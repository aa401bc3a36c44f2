"""The alert event (DESIGN.md "Alerts"): its JSON validates against the committed schema snapshot, its id is the
condition's, its subject and de-duplication id are the stream's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from contracts.alerts import AlertEvent, AlertKind, AlertState, alert_key, alert_msg_id, alert_subject
from contracts.streams import ALERTS_STREAM, STREAMS

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "alert_event.v1.schema.json").read_text("utf-8"))


def raised(**changes: object) -> AlertEvent:
    body: dict[str, object] = {
        "alert_id": alert_key("report_due", "mof", measure_id="1-25", fiscal_year=2024, quarter=3),
        "kind": "report_due",
        "state": "raised",
        "agency": "mof",
        "measure_id": "1-25",
        "fiscal_year": 2024,
        "quarter": 3,
        "raised_at": "2025-01-16T00:00:00+09:00",
        "message_ja": "1-25 の2024年度第3四半期の報告を 2025-01-30 までに提出してください。",
        "message_en": "Report on 1-25 for FY2024Q3 by 2025-01-30.",
        **changes,
    }
    return AlertEvent.model_validate(body)


@pytest.mark.parametrize("kind", list(AlertKind))
def test_every_kind_validates_against_the_snapshot(kind: AlertKind) -> None:
    for alert in (
        raised(kind=kind),
        raised(kind=kind, state="resolved", resolved_at=datetime(2025, 1, 20, tzinfo=UTC), refs=["x"]),
        raised(kind=kind, measure_id=None, fiscal_year=None, quarter=None, target_index=2),
    ):
        jsonschema.validate(json.loads(alert.model_dump_json()), SCHEMA)


def test_the_schema_refuses_what_the_model_refuses() -> None:
    good = json.loads(raised().model_dump_json())
    for bad in ({**good, "kind": "bored"}, {**good, "agency": "nasa"}, {**good, "extra": 1}, {**good, "quarter": 5}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)
        with pytest.raises(ValidationError):
            AlertEvent.model_validate(bad)


def test_the_id_is_the_condition() -> None:
    assert (
        alert_key("report_due", "mof", measure_id="1-25", fiscal_year=2024, quarter=3) == "report_due.mof.1-25.2024.3.-"
    )
    assert alert_key(AlertKind.target_overdue, "mof", measure_id="1-25", target_index=0) == (
        "target_overdue.mof.1-25.-.-.0"
    )
    assert alert_subject("mof", AlertKind.stale) == "alert.mof.stale"
    ids = {alert_msg_id("a", state, n) for state in AlertState for n in (1, 2)}
    assert len(ids) == 4  # a raise and its resolve, and a second occurrence, are each published once


def test_the_alerts_stream_is_shared() -> None:
    assert ALERTS_STREAM in STREAMS
    assert ALERTS_STREAM.subjects == ("alert.>",)
