"""Thousands of generated bad payloads: every one is rejected with a reason code and a usable message, none raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.agencies import Agency
from contracts.events import ReasonCode, StatusEvent
from ingest.domain import Admit, Duplicate, Reject, admit
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
    # The message is stored in SQLite/PostgreSQL and shown to clerks: valid UTF-8, no NUL.
    decision.message.encode("utf-8")
    assert "\x00" not in decision.message
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
