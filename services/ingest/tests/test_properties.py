"""Thousands of generated bad payloads: every one is rejected with a reason code and a usable message, none raises."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.agencies import Agency
from contracts.events import AdmittedEvent, ReasonCode, StatusEvent
from ingest.domain import Admit, Duplicate, Reject, Report, admit, admitted_json, content_hash, hash_and_json
from ingest.testing import SAMPLE_MEASURES, event_body

CATALOG = {m.id: m for m in SAMPLE_MEASURES}
NOW = datetime(2024, 12, 20, 9, 0, tzinfo=UTC)
FIELDS = list(StatusEvent.model_fields)
AGENCY_CODES = [a.value for a in Agency]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)
subjects = st.one_of(
    st.builds(
        lambda a, m: f"status.{a}.{m}", st.sampled_from([*AGENCY_CODES, "x"]), st.sampled_from([*CATALOG, "9-9"])
    ),
    st.text(max_size=40),
)


def assert_rejected(decision: Any) -> Reject:
    assert isinstance(decision, Reject), decision
    assert decision.reason in ReasonCode
    assert decision.message.strip()
    # The message is stored in SQLite/PostgreSQL and shown to clerks (one line in a table, a CSV cell, a log
    # line): valid UTF-8, no control character at all (a tab or newline from the bad input is quoted as \x09).
    decision.message.encode("utf-8")
    assert not [c for c in decision.message if unicodedata.category(c) == "Cc"], decision.message
    return decision


def decide(subject: str, data: bytes) -> Any:
    return admit(subject, data, now=NOW, measure=CATALOG, previous={})


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=subjects, data=st.binary(max_size=300))
def test_arbitrary_bytes_are_rejected(subject: str, data: bytes) -> None:
    assert_rejected(decide(subject, data))


@settings(max_examples=1000, deadline=None)
@given(subject=subjects, value=json_values)
def test_arbitrary_json_is_rejected(subject: str, value: Any) -> None:
    assert_rejected(decide(subject, json.dumps(value).encode()))


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    """A valid event with one thing broken: a field dropped, retyped, out of range, or one field too many."""
    drop = st.sampled_from(["event_id", "measure_id", "agency", "fiscal_year", "quarter", "status", "reported_at"]).map(
        lambda f: {k: v for k, v in event_body().items() if k != f}
    )
    retype = (
        st.tuples(st.sampled_from(FIELDS), json_values)
        .filter(lambda fv: not _still_valid(*fv))
        .map(lambda fv: {**event_body(), fv[0]: fv[1]})
    )
    extra = st.tuples(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS), json_values).map(
        lambda kv: {**event_body(), kv[0]: kv[1]}
    )
    out_of_range = st.one_of(
        st.integers().filter(lambda q: not 1 <= q <= 4).map(lambda q: event_body(quarter=q)),
        st.floats().filter(lambda p: not 0 <= p <= 100).map(lambda p: event_body(progress=p)),
        st.tuples(st.integers(4001, 4100), st.characters()).map(lambda nc: event_body(note=nc[1] * nc[0])),
        st.tuples(st.integers(201, 260), st.characters()).map(lambda nc: event_body(reporter=nc[1] * nc[0])),
    )
    return st.one_of(drop, retype, extra, out_of_range)


def _still_valid(field: str, value: Any) -> bool:
    try:
        StatusEvent.model_validate_json(json.dumps({**event_body(), field: value}), strict=True)
    except (ValueError, TypeError):
        return False
    return True


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(body=_mutations())
def test_broken_events_are_malformed(body: dict[str, Any]) -> None:
    data = json.dumps(body, allow_nan=True).encode()
    decision = assert_rejected(decide("status.mof.1-25", data))
    assert decision.reason is ReasonCode.malformed


@settings(max_examples=500, deadline=None)
@given(subject=subjects, agency=st.sampled_from(AGENCY_CODES), measure=st.sampled_from([*CATALOG, "6-99"]))
def test_well_formed_events_always_get_a_decision(subject: str, agency: str, measure: str) -> None:
    data = json.dumps(event_body(agency=agency, measure_id=measure)).encode()
    decision = decide(subject, data)
    assert isinstance(decision, Admit | Duplicate | Reject)
    if isinstance(decision, Reject):
        assert_rejected(decision)


_texts = st.none() | st.text(max_size=60)  # any Unicode, quotes, backslashes, and the key's own spelling
_tricky = st.sampled_from([',"reported_at":"', '\\",\\"reported_at\\":\\"', '"', "\\", "値\n\t"])


@settings(max_examples=500, deadline=None)
@given(
    note=_texts | _tricky,
    reporter=_texts | _tricky,
    progress=st.none() | st.floats(0, 100) | st.integers(0, 100),
    offset_minutes=st.integers(-12 * 60, 14 * 60),
    micro=st.integers(0, 999_999),
    kpis=st.lists(st.tuples(st.integers(0, 3), st.floats(-1e12, 1e12) | st.integers(-(10**12), 10**12)), max_size=3),
)
def test_the_event_written_once_hashes_and_publishes_as_the_reference_says(
    note: str | None,
    reporter: str | None,
    progress: float | None,
    offset_minutes: int,
    micro: int,
    kpis: list[tuple[int, float]],
) -> None:
    """`hash_and_json` and `admitted_json` give the bytes of `content_hash` and `AdmittedEvent.model_dump_json`."""
    reported_at = datetime(2024, 12, 20, 9, 0, 0, micro, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    body = event_body(
        note=note,
        reporter=reporter,
        progress=progress,
        reported_at=reported_at.isoformat(),
        kpis=[{"target": t, "value": v, "as_of": "2024-12-01"} for t, v in kpis],
    )
    try:
        event = StatusEvent.model_validate_json(json.dumps(body), strict=True)
    except ValueError:
        return  # not a valid event (e.g. a lone surrogate): never hashed
    digest, event_json = hash_and_json(event)
    assert digest == content_hash(event)
    assert event_json == event.model_dump_json()
    report = Report("status.mof.1-25", "mof", event, digest, str(event.event_id), event_json)
    admitted_at = datetime(2024, 12, 20, 0, 0, 1, micro, tzinfo=UTC)
    expected = AdmittedEvent(event=event, admitted_at=admitted_at, subject="status.mof.1-25").model_dump_json()
    assert admitted_json(report, admitted_at, "status.mof.1-25") == expected.encode()
    # With the broker's receipt time and the backfill mark (issue #15, hole 2), fast path and reference alike.
    received_at = datetime(2024, 12, 19, 23, 59, 59, micro, tzinfo=UTC)
    for backfilled in (False, True):
        expected = AdmittedEvent(
            event=event,
            admitted_at=admitted_at,
            subject="status.mof.1-25",
            received_at=received_at,
            backfilled=backfilled,
        ).model_dump_json()
        for written in (report, Report(report.subject, "mof", event, digest, report.event_id)):  # fast, reference
            got = admitted_json(written, admitted_at, "status.mof.1-25", received_at=received_at, backfilled=backfilled)
            assert got == expected.encode()
