"""The secretariat's commands decided by the pure rules: every reason code with a message a clerk can act on."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.admission import Admit, Duplicate, PriorRecord, Reject, Report, claims_event_id, readable_event_id
from contracts.agencies import Agency
from contracts.catalog import Measure, Target
from contracts.commands import (
    COMMAND_REASONS,
    NO_TOKEN,
    SECRETARIAT,
    AdmittedCommand,
    Command,
    Sender,
    admitted_command,
    claim_owner,
    command_target,
    decide_backfill,
    decide_close,
    decide_review,
    id_field,
    read_backfill,
    read_close,
    read_review,
    reviewed_report,
)
from contracts.cycle import AdmittedClose, AdmittedReview, ReviewedReport
from contracts.events import REASON_PRECEDENCE, ReasonCode
from contracts.periods import FiscalQuarter

SECRETARIAT_SENDER = Sender(role="secretariat", subject="yamada")
MOF_SENDER = Sender(role="agency", agency="mof", subject="tanaka")
REPORT_ID = "0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11"
REVIEWED = ReviewedReport(agency=Agency.mof, measure_id="1-25", fiscal_year=2024, quarter=3)
MEASURE = Measure(
    id="1-25",
    section=1,
    section_title="デジタル化による成長戦略",
    title="e-Taxの利用促進",
    lead_agencies=["mof", "digital"],
    targets=[Target(index=0, text="e-Tax 80％")],
)
AFTER_Q3_DEADLINE = FiscalQuarter(2024, 3).on_time_deadline + timedelta(seconds=1)


def review_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "review_id": str(uuid.uuid4()),
        "event_id": REPORT_ID,
        "decision": "returned",
        "comment": "KPIの時点が異なります。同じ時点の値で再提出してください。",
        "reviewed_at": "2025-01-15T10:00:00+09:00",
        "reviewer": "重点計画事務局 山田",
    }
    body.update(overrides)
    return body


def close_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "close_id": str(uuid.uuid4()),
        "fiscal_year": 2024,
        "quarter": 3,
        "closed_at": "2025-02-03T10:00:00+09:00",
        "closed_by": "重点計画事務局",
    }
    body.update(overrides)
    return body


def report_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": REPORT_ID,
        "measure_id": "1-25",
        "agency": "mof",
        "fiscal_year": 2022,
        "quarter": 2,
        "status": "delayed",
        "reported_at": "2022-10-20T17:00:00+09:00",
    }
    body.update(overrides)
    return body


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def review(body: dict[str, Any], subject: str = "review.mof.1-25") -> Command:
    read = read_review(subject, raw(body))
    assert isinstance(read, Command), read
    return read


def close(body: dict[str, Any], subject: str = "close.2024.3") -> Command:
    read = read_close(subject, raw(body))
    assert isinstance(read, Command), read
    return read


def rejected(decision: object, reason: ReasonCode) -> Reject:
    assert isinstance(decision, Reject), decision
    assert decision.reason is reason, decision.message
    return decision


# --- reading -------------------------------------------------------------------------------------------------


def test_a_review_reads_with_its_subject_and_id() -> None:
    body = review_body()
    command = review(body)
    assert (command.kind, command.event_id, command.agency, command.measure_id) == (
        "review",
        body["review_id"],
        "mof",
        "1-25",
    )
    assert command.subject_agency == SECRETARIAT


@pytest.mark.parametrize(
    ("subject", "body", "words"),
    [
        ("review.mof.1-25", b'{"review_id": ', "not valid JSON"),
        ("review.xyz.1-25", None, "review.{agency}.{measure_id}"),
        ("review.mof.9-1", None, "review.{agency}.{measure_id}"),
        ("review.mof", None, "review.{agency}.{measure_id}"),
        ("review.mof.1-25", {"comment": None}, "a returned report needs a comment"),
        ("review.mof.1-25", {"comment": "   "}, "a returned report needs a comment"),
        ("review.mof.1-25", {"decision": "maybe"}, "expected accepted or returned"),
        ("review.mof.1-25", {"status": "ok"}, "unknown field 'status': a review allows only review_id"),
        ("review.mof.1-25", {"reviewed_at": "2025-01-15T10:00:00"}, "field 'reviewed_at'"),
        ("review.mof.1-25", {"reviewer": "山田\x00"}, "NUL"),
    ],
)
def test_a_malformed_review_says_what_is_wrong(subject: str, body: Any, words: str) -> None:
    data = body if isinstance(body, bytes) else raw(review_body(**(body or {})))
    read = rejected(read_review(subject, data), ReasonCode.malformed)
    assert read.message.startswith("形式不正 (malformed): ")
    assert words in read.message


def test_a_malformed_review_keeps_its_readable_review_id() -> None:
    body = review_body(decision="maybe")
    assert rejected(read_review("review.mof.1-25", raw(body)), ReasonCode.malformed).event_id == body["review_id"]


def test_a_close_must_be_published_on_its_quarter() -> None:
    body = close_body(quarter=2)
    read = rejected(read_close("close.2024.3", raw(body)), ReasonCode.malformed)
    assert "publish it on close.2024.2" in read.message
    assert read.event_id == body["close_id"]
    assert (
        "close.{fiscal_year}.{quarter}"
        in rejected(read_close("close.24.3", raw(close_body())), ReasonCode.malformed).message
    )


def test_a_backfill_reads_as_a_report_on_its_own_subject() -> None:
    read = read_backfill("backfill.mof.1-25", raw(report_body()))
    assert isinstance(read, Report)
    assert read.subject_agency == "mof"
    wrong = rejected(read_backfill("backfill.mof.4-1", raw(report_body())), ReasonCode.malformed)
    assert "publish on backfill.{agency}.1-25" in wrong.message


def test_content_hashes_ignore_the_spelling_of_times_but_not_the_subject() -> None:
    body = review_body()
    same = {**body, "reviewed_at": "2025-01-15T01:00:00+00:00"}
    assert review(body).content_hash == review(same).content_hash
    assert review(body).content_hash != review(body, "review.digital.1-25").content_hash
    assert review(body).content_hash != review({**body, "decision": "accepted"}).content_hash


# --- review --------------------------------------------------------------------------------------------------


def test_a_review_of_an_admitted_report_by_the_secretariat_is_admitted() -> None:
    decision = decide_review(review(review_body()), sender=SECRETARIAT_SENDER, reviewed=REVIEWED, previous=None)
    assert isinstance(decision, Admit)
    assert (decision.principal, decision.reviewed) == ("yamada", REVIEWED)


def test_a_review_naming_no_admitted_report_is_unknown_event() -> None:
    decision = decide_review(review(review_body()), sender=SECRETARIAT_SENDER, reviewed=None, previous=None)
    reject = rejected(decision, ReasonCode.unknown_event)
    assert reject.message.startswith("審査対象なし (unknown_event): ")
    assert "no such report of mof was admitted" in reject.message
    assert f"GET /events/{REPORT_ID}" in reject.message
    assert reject.field == "event_id"


def test_a_review_on_another_measure_of_the_agency_says_where_it_belongs() -> None:
    elsewhere = REVIEWED.model_copy(update={"measure_id": "4-1"})
    reject = rejected(
        decide_review(review(review_body()), sender=SECRETARIAT_SENDER, reviewed=elsewhere, previous=None),
        ReasonCode.unknown_event,
    )
    assert "publish the review on review.mof.4-1" in reject.message


@pytest.mark.parametrize(
    ("sender", "words"),
    [
        (NO_TOKEN, "it carried no bearer token"),
        (MOF_SENDER, "its token is agency mof's"),
        (Sender(role="operator", subject="ops"), "its token is operator's"),
        (Sender(problem="its token is not valid: the token has expired"), "the token has expired"),
    ],
)
def test_only_the_secretariat_may_review(sender: Sender, words: str) -> None:
    reject = rejected(
        decide_review(review(review_body()), sender=sender, reviewed=None, previous=None), ReasonCode.not_permitted
    )
    assert reject.message.startswith("権限なし (not_permitted): a review may be sent only by the secretariat")
    assert words in reject.message
    # Nobody else learns whether the report exists, and nothing is claimed.
    assert "unknown_event" not in reject.message
    assert not claims_event_id(reject, None)


def test_a_review_resent_as_is_is_a_duplicate_and_with_other_content_a_conflict() -> None:
    body = review_body()
    first = review(body)
    admitted = PriorRecord(content_hash=first.content_hash, admitted=True, agency=SECRETARIAT)
    again = decide_review(review(body), sender=SECRETARIAT_SENDER, reviewed=REVIEWED, previous=admitted)
    assert isinstance(again, Duplicate)
    other = review({**body, "decision": "accepted", "comment": None})
    reject = rejected(
        decide_review(other, sender=SECRETARIAT_SENDER, reviewed=REVIEWED, previous=admitted),
        ReasonCode.duplicate_conflict,
    )
    assert f"review_id {body['review_id']} was already used" in reject.message


def test_a_duplicate_needs_the_secretariat_too() -> None:
    body = review_body()
    admitted = PriorRecord(content_hash=review(body).content_hash, admitted=True, agency=SECRETARIAT)
    rejected(
        decide_review(review(body), sender=NO_TOKEN, reviewed=REVIEWED, previous=admitted), ReasonCode.not_permitted
    )


# --- close ---------------------------------------------------------------------------------------------------


def test_a_close_after_the_deadline_is_admitted() -> None:
    decision = decide_close(
        close(close_body()), sender=SECRETARIAT_SENDER, received_at=AFTER_Q3_DEADLINE, closed_by=None, previous=None
    )
    assert isinstance(decision, Admit)
    assert decision.principal == "yamada"


def test_a_close_at_or_before_the_deadline_is_period_open() -> None:
    deadline = FiscalQuarter(2024, 3).on_time_deadline
    reject = rejected(
        decide_close(
            close(close_body()), sender=SECRETARIAT_SENDER, received_at=deadline, closed_by=None, previous=None
        ),
        ReasonCode.period_open,
    )
    assert reject.message.startswith("受付期間中 (period_open): FY2024Q3 cannot be closed before its on-time deadline")
    assert "2025-01-31T00:00:00+09:00 (Asia/Tokyo)" in reject.message


def test_a_second_close_is_already_closed() -> None:
    earlier = str(uuid.uuid4())
    reject = rejected(
        decide_close(
            close(close_body()),
            sender=SECRETARIAT_SENDER,
            received_at=AFTER_Q3_DEADLINE,
            closed_by=earlier,
            previous=None,
        ),
        ReasonCode.already_closed,
    )
    assert reject.message.startswith(f"締切済 (already_closed): FY2024Q3 was closed already (close {earlier})")


def test_a_close_resent_is_a_duplicate_not_a_second_close() -> None:
    command = close(close_body())
    admitted = PriorRecord(content_hash=command.content_hash, admitted=True, agency=SECRETARIAT)
    decision = decide_close(
        command, sender=SECRETARIAT_SENDER, received_at=AFTER_Q3_DEADLINE, closed_by=command.event_id, previous=admitted
    )
    assert isinstance(decision, Duplicate)


def test_close_reasons_come_in_their_order() -> None:
    too_early = FiscalQuarter(2024, 3).start_at
    both = decide_close(
        close(close_body()), sender=MOF_SENDER, received_at=too_early, closed_by=str(uuid.uuid4()), previous=None
    )
    rejected(both, ReasonCode.not_permitted)
    rejected(
        decide_close(
            close(close_body()), sender=SECRETARIAT_SENDER, received_at=too_early, closed_by="x", previous=None
        ),
        ReasonCode.period_open,
    )


# --- backfill ------------------------------------------------------------------------------------------------


def backfill(body: dict[str, Any], subject: str = "backfill.mof.1-25") -> Report:
    read = read_backfill(subject, raw(body))
    assert isinstance(read, Report), read
    return read


def test_a_backfill_by_the_secretariat_is_admitted_with_its_principal() -> None:
    decision = decide_backfill(
        backfill(report_body()), sender=SECRETARIAT_SENDER, now=datetime.now(UTC), measure=MEASURE, previous=None
    )
    assert isinstance(decision, Admit)
    assert decision.principal == "yamada"


def test_a_backfill_follows_the_report_rules() -> None:
    now = datetime.now(UTC)
    not_lead = decide_backfill(
        backfill(report_body(agency="mhlw"), "backfill.mhlw.1-25"),
        sender=SECRETARIAT_SENDER,
        now=now,
        measure=MEASURE,
        previous=None,
    )
    rejected(not_lead, ReasonCode.not_lead)
    mismatch = rejected(
        decide_backfill(
            backfill(report_body(agency="digital")), sender=SECRETARIAT_SENDER, now=now, measure=MEASURE, previous=None
        ),
        ReasonCode.agency_mismatch,
    )
    assert "publish digital's report on backfill.digital.1-25" in mismatch.message
    rejected(
        decide_backfill(backfill(report_body()), sender=SECRETARIAT_SENDER, now=now, measure=None, previous=None),
        ReasonCode.unknown_measure,
    )


def test_a_backfill_by_an_agency_is_not_permitted_and_claims_nothing() -> None:
    reject = rejected(
        decide_backfill(
            backfill(report_body()), sender=MOF_SENDER, now=datetime.now(UTC), measure=MEASURE, previous=None
        ),
        ReasonCode.not_permitted,
    )
    assert "a backfilled report may be sent only by the secretariat" in reject.message
    assert not claims_event_id(reject, None)


# --- what an admission publishes -----------------------------------------------------------------------------


def test_an_admitted_review_and_close_are_published_with_their_ids() -> None:
    now = datetime(2025, 2, 3, 1, 0, tzinfo=UTC)
    command = review(review_body())
    out = admitted_command(Admit(command, "yamada", REVIEWED), admitted_at=now, received_at=now)
    assert isinstance(out, AdmittedCommand)
    assert (out.subject, out.msg_id) == ("reviewed.mof.1-25", f"review:{command.event_id}")
    message = AdmittedReview.model_validate_json(out.payload)
    assert (message.principal, message.report, message.subject) == ("yamada", REVIEWED, "review.mof.1-25")
    assert command_target(command.subject, command.event_id) == (out.subject, out.msg_id)

    closing = close(close_body())
    out = admitted_command(Admit(closing, "yamada"), admitted_at=now, received_at=now)
    assert (out.subject, out.msg_id) == ("closed.2024.3", f"close:{closing.event_id}")
    assert AdmittedClose.model_validate_json(out.payload).close.close_id == uuid.UUID(closing.event_id)
    assert command_target(closing.subject, closing.event_id) == (out.subject, out.msg_id)
    assert command_target("status.mof.1-25", "x") is None


def test_claims_are_owned_by_the_secretariat_for_its_commands_and_by_the_agency_for_reports() -> None:
    assert claim_owner("review.mof.1-25") == claim_owner("close.2024.3") == SECRETARIAT
    assert claim_owner("backfill.mof.1-25") == claim_owner("status.mof.1-25") == "mof"
    assert claim_owner("nonsense") == "unknown"


def test_a_reviewed_report_is_where_the_report_belongs() -> None:
    assert reviewed_report(backfill(report_body())) == ReviewedReport(
        agency=Agency.mof, measure_id="1-25", fiscal_year=2022, quarter=2
    )


def test_command_reasons_are_new_and_never_a_reports() -> None:
    assert COMMAND_REASONS == {
        ReasonCode.not_permitted,
        ReasonCode.unknown_event,
        ReasonCode.period_open,
        ReasonCode.already_closed,
    }
    assert not COMMAND_REASONS & set(REASON_PRECEDENCE)


def test_an_unreadable_commands_id_is_read_from_its_own_field() -> None:
    body = review_body(decision="maybe")
    assert readable_event_id(raw(body), id_field("review.mof.1-25")) == body["review_id"]
    closing = close_body(quarter=9)
    assert readable_event_id(raw(closing), id_field("close.2024.3")) == closing["close_id"]
    assert id_field("backfill.mof.1-25") == id_field("status.mof.1-25") == "event_id"
