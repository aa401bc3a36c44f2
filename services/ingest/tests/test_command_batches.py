"""The secretariat's commands in the pure batch decision: in stream order with the reports, each seeing what the
messages before it admitted, their ids claimed as the secretariat's."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

from contracts.catalog import Measure
from contracts.commands import Sender
from contracts.cycle import ReviewedReport
from ingest.domain import Admit, Decision, Duplicate, Read, Reject, decide_batch, read_message
from ingest.testing import SAMPLE_MEASURES, encode, event_body

MEASURES: dict[str, Measure | None] = {m.id: m for m in SAMPLE_MEASURES}
RECEIVED = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)  # after FY2024Q3's on-time deadline
SECRETARIAT = Sender(role="secretariat", subject="yamada")


class Message(NamedTuple):
    seq: int
    subject: str
    agency: str
    received_at: datetime
    read: Read | None


def message(seq: int, subject: str, body: dict[str, Any]) -> Message:
    owner = "secretariat" if subject.startswith(("review.", "close.")) else subject.split(".")[1]
    return Message(seq, subject, owner, RECEIVED, read_message(subject, json.dumps(body).encode()))


def review(event_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "review_id": str(uuid.uuid4()),
        "event_id": event_id,
        "decision": "accepted",
        "reviewed_at": "2025-02-01T10:00:00+09:00",
        "reviewer": "重点計画事務局",
        **overrides,
    }


def close(**overrides: Any) -> dict[str, Any]:
    return {
        "close_id": str(uuid.uuid4()),
        "fiscal_year": 2024,
        "quarter": 3,
        "closed_at": "2025-02-03T10:00:00+09:00",
        "closed_by": "重点計画事務局",
        **overrides,
    }


def outcomes(decisions: list[Decision]) -> list[str]:
    return [
        d.reason.value if isinstance(d, Reject) else "admitted" if isinstance(d, Admit) else "duplicate"
        for d in decisions
    ]


def everyone(*messages: Message) -> dict[int, Sender]:
    return dict.fromkeys((m.seq for m in messages), SECRETARIAT)


def test_a_review_right_after_its_report_sees_it_and_one_right_before_does_not() -> None:
    report = event_body()
    before, after = review(report["event_id"]), review(report["event_id"])
    messages = [
        message(1, "review.mof.1-25", before),
        message(2, "status.mof.1-25", report),
        message(3, "review.mof.1-25", after),
    ]
    batch = decide_batch(messages, measures=MEASURES, priors={}, senders=everyone(*messages))
    assert outcomes(batch.decisions) == ["unknown_event", "admitted", "admitted"]
    admitted = batch.decisions[2]
    assert isinstance(admitted, Admit)
    assert admitted.principal == "yamada"
    assert admitted.reviewed == ReviewedReport(agency="mof", measure_id="1-25", fiscal_year=2024, quarter=3)
    # Review ids are the secretariat's claims, apart from the agency's event ids.
    assert set(batch.claims) == {
        ("secretariat", before["review_id"]),
        ("mof", report["event_id"]),
        ("secretariat", after["review_id"]),
    }


def test_a_review_of_a_stored_report_and_of_another_agencys() -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    stored = {("mof", mine): ReviewedReport(agency="mof", measure_id="1-25", fiscal_year=2024, quarter=3)}
    messages = [message(1, "review.mof.1-25", review(mine)), message(2, "review.mof.1-25", review(theirs))]
    batch = decide_batch(messages, measures=MEASURES, priors={}, reports=stored, senders=everyone(*messages))
    assert outcomes(batch.decisions) == ["admitted", "unknown_event"]


def test_of_two_closes_of_a_quarter_the_first_is_admitted() -> None:
    first, second, other = close(), close(), close(quarter=2)
    messages = [
        message(1, "close.2024.3", first),
        message(2, "close.2024.3", second),
        message(3, "close.2024.3", first),
        message(4, "close.2024.2", other),
    ]
    batch = decide_batch(messages, measures=MEASURES, priors={}, senders=everyone(*messages))
    assert outcomes(batch.decisions) == ["admitted", "already_closed", "duplicate", "admitted"]
    assert [(c.fiscal_year, c.quarter, c.close_id, c.stream_seq) for c in batch.closes] == [
        (2024, 3, first["close_id"], 1),
        (2024, 2, other["close_id"], 4),
    ]


def test_a_quarter_closed_before_stays_closed() -> None:
    messages = [message(1, "close.2024.3", close())]
    batch = decide_batch(
        messages, measures=MEASURES, priors={}, closed={(2024, 3): str(uuid.uuid4())}, senders=everyone(*messages)
    )
    assert outcomes(batch.decisions) == ["already_closed"]
    assert batch.closes == []


def test_a_command_nobody_vouched_for_claims_nothing() -> None:
    body = close()
    messages = [message(1, "close.2024.3", body), message(2, "close.2024.3", body)]
    batch = decide_batch(messages, measures=MEASURES, priors={}, senders={2: SECRETARIAT})
    assert outcomes(batch.decisions) == ["not_permitted", "admitted"]
    assert list(batch.claims) == [("secretariat", body["close_id"])]
    assert batch.claims["secretariat", body["close_id"]].first_seq == 2
    # A message the caller names no sender for carried no token: never permitted.
    assert outcomes(decide_batch(messages[:1], measures=MEASURES, priors={}).decisions) == ["not_permitted"]


def test_a_backfill_is_the_agencys_report_for_idempotency() -> None:
    past = event_body(fiscal_year=2022, quarter=2, reported_at="2022-10-20T17:00:00+09:00")
    messages = [message(1, "backfill.mof.1-25", past), message(2, "status.mof.1-25", past)]
    batch = decide_batch(messages, measures=MEASURES, priors={}, senders={1: SECRETARIAT})
    assert outcomes(batch.decisions) == ["admitted", "duplicate"]
    assert isinstance(batch.decisions[1], Duplicate)
    assert list(batch.claims) == [("mof", past["event_id"])]


def test_a_backfill_needs_the_secretariat() -> None:
    messages = [message(1, "backfill.mof.1-25", event_body())]
    agency = Sender(role="agency", agency="mof", subject="tanaka")
    batch = decide_batch(messages, measures=MEASURES, priors={}, senders={1: agency})
    assert outcomes(batch.decisions) == ["not_permitted"]
    assert batch.claims == {}


def test_a_malformed_command_is_rejected_as_read() -> None:
    messages = [Message(1, "review.mof.1-25", "secretariat", RECEIVED, read_message("review.mof.1-25", encode({})))]
    assert outcomes(decide_batch(messages, measures=MEASURES, priors={}).decisions) == ["malformed"]
