"""Hostile payloads against ingest's admission function itself (pure: no NATS, no database), thousands of them.

`ingest.domain.admit` is the whole decision for one message. Whatever it is given, it must answer with a
decision, and for every bad input a rejection whose reason is the right code and whose message is text that
can be published (valid UTF-8, no control characters, bounded) and stored in either database.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.events import ReasonCode, Rejection
from ingest.domain import Admit, Duplicate, Reject, admit
from ingest.testing import SAMPLE_MEASURES

from .payloads import Hostile, base_event, dumps, hostile_messages, subject_for

NOW = datetime(2025, 1, 10, 3, 0, tzinfo=UTC)
MEASURES = {m.id: m for m in SAMPLE_MEASURES}
AGENCY, MEASURE = "mof", "1-25"
HOSTILE_EXAMPLES = 1200
BYTES_EXAMPLES = 800

PURE_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)


def publishable(reject: Reject, subject: str, payload: bytes) -> None:
    """The rejection ingest would publish and store: valid UTF-8 JSON, no NUL, no other control characters."""
    message = reject.message
    assert message, "a rejection says why"
    assert len(message) <= 2000, f"message of {len(message)} characters"
    # ingest's clean() keeps tab, newline and carriage return (quoted input may carry them); nothing else below 0x20.
    assert not any((ord(c) < 0x20 and c not in "\t\n\r") or c == "\x7f" for c in message), repr(message)
    message.encode("utf-8")  # a lone surrogate would raise here
    body = Rejection(
        rejection_id="STATUS-1",
        event_id=reject.event_id,
        agency=AGENCY,
        subject=subject,
        reason=reject.reason,
        message=message,
        payload_b64=base64.b64encode(payload).decode(),
        received_at=NOW,
    ).model_dump_json()
    assert Rejection.model_validate_json(body).message == message


@pytest.fixture(scope="module")
def outcomes(hostile_report: Callable[[str], None]) -> Iterator[Counter[str]]:
    """Counts per test ("recipes" / "any bytes") and outcome; one summary line each at the end of the module."""
    counts: Counter[str] = Counter()
    yield counts
    for group in ("recipes", "any bytes"):
        mine = {k.split(": ", 1)[1]: v for k, v in counts.items() if k.startswith(group + ": ")}
        hostile_report(
            f"admission function (pure), {group}: {sum(mine.values())} messages → "
            + ", ".join(f"{k} {v}" for k, v in sorted(mine.items()))
        )


@settings(PURE_SETTINGS, max_examples=HOSTILE_EXAMPLES)
@given(message=hostile_messages(AGENCY, MEASURE))
def test_every_hostile_message_is_rejected_with_its_reason(message: Hostile, outcomes: Counter[str]) -> None:
    subject = subject_for(message, AGENCY, MEASURE)
    decision = admit(subject, message.payload, now=NOW, measure=MEASURES, previous={})
    assert isinstance(decision, Reject), f"{message.kind}: {decision!r} for {message.payload[:300]!r}"
    assert decision.reason == ReasonCode(message.expected_reason), (message.kind, decision.reason, decision.message)
    publishable(decision, subject, message.payload)
    outcomes[f"recipes: rejected {decision.reason.value}"] += 1


@settings(PURE_SETTINGS, max_examples=BYTES_EXAMPLES)
@given(
    payload=st.one_of(
        st.binary(max_size=2000), st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass"))
    ),
    token=st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=". *>\x00"), min_size=1, max_size=12
    ),
)
def test_any_bytes_on_any_subject_get_a_decision(payload: bytes, token: str, outcomes: Counter[str]) -> None:
    """Arbitrary bytes never make the admission function raise; a rejection is always publishable."""
    subject = f"status.{AGENCY}.{token}"
    decision = admit(subject, payload, now=NOW, measure=MEASURES, previous={})
    assert isinstance(decision, Admit | Duplicate | Reject)
    if isinstance(decision, Reject):
        publishable(decision, subject, payload)
        outcomes[f"any bytes: rejected {decision.reason.value}"] += 1
    else:
        outcomes[f"any bytes: {type(decision).__name__.lower()}"] += 1


@pytest.mark.parametrize(
    "subject",
    ["status", "status.mof", "status..1-25", "status.mof.1-25.extra", "rejected.mof", "status.mof.", ".mof.1-25"],
)
def test_subjects_of_the_wrong_shape_are_malformed(subject: str) -> None:
    payload = dumps(base_event(event_id="0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11", agency=AGENCY, measure_id=MEASURE))
    decision = admit(subject, payload, now=NOW, measure=MEASURES, previous={})
    assert isinstance(decision, Reject)
    assert decision.reason is ReasonCode.malformed
    publishable(decision, subject, payload)


def test_the_base_event_is_admitted() -> None:
    """The recipes spoil an event that is otherwise admitted: what they break is what they are about."""
    payload = dumps(base_event(event_id="0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11", agency=AGENCY, measure_id=MEASURE))
    assert isinstance(admit(f"status.{AGENCY}.{MEASURE}", payload, now=NOW, measure=MEASURES, previous={}), Admit)
