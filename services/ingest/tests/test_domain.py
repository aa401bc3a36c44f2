"""The admission rules as pure functions: every reason code, their precedence, duplicates, and hostile bytes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.events import ReasonCode
from ingest.domain import (
    MAX_PAYLOAD_BYTES,
    Admit,
    Duplicate,
    PriorRecord,
    Reject,
    Report,
    admit,
    claims_event_id,
    read_report,
)
from ingest.testing import SAMPLE_MEASURES, encode, event_body

CATALOG = {m.id: m for m in SAMPLE_MEASURES}
NOW = datetime(2024, 12, 20, 9, 0, tzinfo=UTC)  # 18:00 in Tokyo
SUBJECT = "status.mof.1-25"


def run(body: dict[str, Any] | bytes, subject: str = SUBJECT, previous: dict[Any, PriorRecord] | None = None) -> Any:
    data = body if isinstance(body, bytes) else encode(body)
    return admit(subject, data, now=NOW, measure=CATALOG, previous=previous or {})


def rejected(decision: Any, reason: ReasonCode) -> Reject:
    assert isinstance(decision, Reject), decision
    assert decision.reason is reason, decision.message
    assert decision.message
    return decision


def test_a_valid_report_is_admitted() -> None:
    decision = run(event_body())
    assert isinstance(decision, Admit)
    assert decision.report.measure_id == "1-25"


def test_a_co_lead_may_report() -> None:
    assert isinstance(run(event_body(agency="digital"), subject="status.digital.1-25"), Admit)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quarter": 5}, "quarter"),
        ({"status": "fine"}, "status"),
        ({"progress": 101}, "progress"),
        ({"fiscal_year": "2024"}, "fiscal_year"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"reported_at": "2024-12-20T17:00:00"}, "reported_at"),
        ({"agency": "treasury"}, "agency"),
        ({"note": "x" * 4001}, "note"),
        ({"schema_version": 2}, "schema_version"),
        ({"kpis": [{"target": 0, "value": "high", "as_of": "2024-12-01"}]}, "kpis.0.value"),
    ],
)
def test_schema_violations_are_malformed_and_name_the_field(change: dict[str, Any], field: str) -> None:
    decision = rejected(run(event_body(**change)), ReasonCode.malformed)
    assert field in decision.message
    assert decision.event_id is not None or field == "event_id"


def test_the_message_says_what_is_allowed() -> None:
    message = rejected(run(event_body(status="fine")), ReasonCode.malformed).message
    assert '"fine"' in message
    assert "on_track" in message
    assert "completed" in message


def test_unknown_and_missing_fields_are_malformed() -> None:
    body = event_body(priority="high")
    del body["status"]
    message = rejected(run(body), ReasonCode.malformed).message
    assert "unknown field 'priority'" in message
    assert "missing field 'status'" in message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00{",
        b'{"event_id": "\x00"}',
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b"42",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"{" + b" " * (MAX_PAYLOAD_BYTES + 1) + b"}",
        json.dumps(event_body()).encode("utf-16"),
    ],
    ids=[
        "empty",
        "text",
        "invalid-utf8",
        "raw-nul",
        "array",
        "string",
        "null",
        "number",
        "deep-array",
        "deep-object",
        "huge",
        "utf16",
    ],
)
def test_hostile_bytes_are_malformed(data: bytes) -> None:
    decision = rejected(run(data), ReasonCode.malformed)
    assert "\x00" not in decision.message


def test_an_escaped_nul_in_text_is_malformed() -> None:
    decision = rejected(run(event_body(note="a\u0000b")), ReasonCode.malformed)
    assert "note" in decision.message


@pytest.mark.parametrize("subject", ["status.mof", "status", "status.mof.1-25.extra", "other.mof.1-25", "status..1-25"])
def test_a_subject_of_the_wrong_shape_is_malformed(subject: str) -> None:
    rejected(run(event_body(), subject=subject), ReasonCode.malformed)


def test_a_payload_for_another_measure_than_its_subject_is_malformed() -> None:
    decision = rejected(run(event_body(measure_id="4-1")), ReasonCode.malformed)
    assert "4-1" in decision.message
    assert "1-25" in decision.message


def test_a_readable_event_id_is_kept_in_a_malformed_rejection() -> None:
    body = event_body(quarter=9)
    decision = rejected(run(body), ReasonCode.malformed)
    assert decision.event_id == body["event_id"]


def test_agency_mismatch() -> None:
    decision = rejected(run(event_body(agency="mof"), subject="status.mic.1-25"), ReasonCode.agency_mismatch)
    assert "mic" in decision.message
    assert "mof" in decision.message


def test_unknown_measure() -> None:
    decision = rejected(
        run(event_body(measure_id="6-99"), subject="status.mof.6-99"),
        ReasonCode.unknown_measure,
    )
    assert "6-99" in decision.message


def test_not_lead_names_the_leads() -> None:
    decision = rejected(run(event_body(agency="mhlw"), subject="status.mhlw.1-25"), ReasonCode.not_lead)
    assert "mof, digital" in decision.message


def test_a_kpi_target_the_measure_does_not_have_is_malformed() -> None:
    kpis = [{"target": 2, "value": 70, "as_of": "2024-12-01"}]
    decision = rejected(run(event_body(kpis=kpis)), ReasonCode.malformed)
    assert "kpis.0.target" in decision.message
    assert "0–1" in decision.message
    kpis_ok = [{"target": 1, "value": 70, "as_of": "2024-12-01"}]
    assert isinstance(run(event_body(kpis=kpis_ok)), Admit)


def test_future_timestamp_allows_five_minutes_of_skew() -> None:
    at_limit = (NOW + timedelta(minutes=5)).isoformat()
    beyond = (NOW + timedelta(minutes=5, seconds=1)).isoformat()
    assert isinstance(run(event_body(reported_at=at_limit)), Admit)
    decision = rejected(run(event_body(reported_at=beyond)), ReasonCode.future_timestamp)
    assert "clock" in decision.message


def test_future_period_is_judged_in_tokyo_time() -> None:
    # FY2024Q3 starts 2024-10-01 00:00 in Tokyo, which is 2024-09-30 15:00 UTC.
    assert isinstance(run(event_body(reported_at="2024-09-30T15:00:00Z")), Admit)
    decision = rejected(run(event_body(reported_at="2024-09-30T14:59:59Z")), ReasonCode.future_period)
    assert "FY2024Q3" in decision.message
    assert "2024-10-01" in decision.message
    rejected(run(event_body(fiscal_year=2025, quarter=1)), ReasonCode.future_period)


def test_duplicate_conflict() -> None:
    body = event_body()
    first = run(body)
    assert isinstance(first, Admit)
    prior = {uuid.UUID(body["event_id"]): PriorRecord(first.report.content_hash, admitted=True, agency="mof")}
    decision = rejected(run({**body, "status": "delayed"}, previous=prior), ReasonCode.duplicate_conflict)
    assert body["event_id"] in decision.message


def test_same_content_in_another_spelling_is_a_duplicate() -> None:
    body = event_body(progress=45)
    first = run(body)
    assert isinstance(first, Admit)
    prior = {uuid.UUID(body["event_id"]): PriorRecord(first.report.content_hash, admitted=True, agency="mof")}
    respelled = (
        "{\n"
        f'  "reported_at": "2024-12-20T08:00:00Z", "progress": 45.0, "schema_version": 1, "kpis": [],\n'
        f'  "status": "on_track", "quarter": 3, "fiscal_year": 2024, "agency": "mof", "measure_id": "1-25",\n'
        f'  "event_id": "{body["event_id"].upper()}", "note": null\n'
        "}"
    ).encode()
    assert isinstance(run(respelled, previous=prior), Duplicate)


def test_an_identical_resend_of_a_rejected_event_is_decided_again() -> None:
    body = event_body(measure_id="6-99")
    first = run(body, subject="status.mof.6-99")
    assert isinstance(first, Reject)
    assert first.report is not None
    prior = {uuid.UUID(body["event_id"]): PriorRecord(first.report.content_hash, admitted=False, agency="mof")}
    catalog = {**CATALOG, "6-99": SAMPLE_MEASURES[0].model_copy(update={"id": "6-99"})}
    again = admit("status.mof.6-99", encode(body), now=NOW, measure=catalog, previous=prior)
    assert isinstance(again, Admit)


def test_precedence_follows_the_contract() -> None:
    # Wrong agency, unknown measure, future timestamp and future period at once: agency_mismatch wins.
    future = (NOW + timedelta(days=400)).isoformat()
    body = event_body(measure_id="6-99", fiscal_year=2026, quarter=4, reported_at=future)
    rejected(run(body, subject="status.mic.6-99"), ReasonCode.agency_mismatch)
    rejected(run(body, subject="status.mof.6-99"), ReasonCode.unknown_measure)
    # Not a lead, future timestamp and period, and a conflicting id: not_lead wins.
    body = event_body(agency="mhlw", fiscal_year=2026, quarter=4, reported_at=future)
    prior = {uuid.UUID(body["event_id"]): PriorRecord("other", admitted=True, agency="mhlw")}
    rejected(run(body, subject="status.mhlw.1-25", previous=prior), ReasonCode.not_lead)
    body["agency"] = "mof"
    rejected(run(body, previous=prior), ReasonCode.future_timestamp)
    body["reported_at"] = NOW.isoformat()
    rejected(run(body, previous=prior), ReasonCode.future_period)
    body["fiscal_year"], body["quarter"] = 2024, 3
    rejected(run(body, previous=prior), ReasonCode.duplicate_conflict)
    # A schema violation beats every other rule.
    rejected(run({**body, "quarter": 0}, subject="status.mic.1-25"), ReasonCode.malformed)


def test_who_claims_an_event_id() -> None:
    report = read_report(SUBJECT, encode(event_body()))
    assert isinstance(report, Report)
    assert claims_event_id(Admit(report), None)
    assert claims_event_id(Reject(ReasonCode.not_lead, "m", None, report), None)
    assert not claims_event_id(Reject(ReasonCode.agency_mismatch, "m", None, report), None)
    assert not claims_event_id(Reject(ReasonCode.malformed, "m", None, None), None)
    assert not claims_event_id(Admit(report), PriorRecord("h", admitted=False, agency="mof"))
