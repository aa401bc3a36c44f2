"""The pure decision of a batch: stream order, each message seeing the ones before it, and the claims it leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest

from contracts.catalog import Measure
from contracts.events import ReasonCode
from ingest.domain import (
    KINDS,
    REPORT,
    Admit,
    Command,
    Decision,
    Known,
    LateAdmission,
    MessageKind,
    NewClaim,
    PriorRecord,
    Read,
    Reject,
    Report,
    decide_batch,
    kind_of,
    read_message,
)
from ingest.testing import SAMPLE_MEASURES, encode, event_body

MEASURES: dict[str, Measure | None] = {m.id: m for m in SAMPLE_MEASURES}
MEASURES["6-99"] = None  # asked of the catalog, which does not know it
RECEIVED = datetime(2024, 12, 20, 9, 0, tzinfo=UTC)


class Message(NamedTuple):
    seq: int
    subject: str
    agency: str
    received_at: datetime
    read: Read | None


def message(seq: int, body: dict[str, Any] | bytes, subject: str = "status.mof.1-25", **at: Any) -> Message:
    data = body if isinstance(body, bytes) else encode(body)
    return Message(seq, subject, subject.split(".")[1], at.get("received_at", RECEIVED), read_message(subject, data))


def reasons(decisions: list[Decision]) -> list[str]:
    return [
        d.reason.value if isinstance(d, Reject) else "admitted" if isinstance(d, Admit) else "duplicate"
        for d in decisions
    ]


def test_a_new_event_is_admitted_and_claims_its_id() -> None:
    body = event_body()
    batch = decide_batch([message(7, body)], measures=MEASURES, priors={})
    (decision,) = batch.decisions
    assert isinstance(decision, Admit)
    assert batch.claims == {
        ("mof", body["event_id"]): NewClaim(
            body["event_id"], decision.report.content_hash, "mof", first_seq=7, admitted_seq=7
        )
    }
    assert batch.late == []
    assert batch.unclaimed_event_ids() == []


def test_a_second_copy_in_the_same_batch_is_a_duplicate() -> None:
    body = event_body()
    batch = decide_batch([message(1, body), message(2, body)], measures=MEASURES, priors={})
    assert reasons(batch.decisions) == ["admitted", "duplicate"]
    assert [c.first_seq for c in batch.claims.values()] == [1]


def test_other_content_under_an_id_claimed_earlier_in_the_batch_conflicts() -> None:
    body = event_body()
    batch = decide_batch([message(1, body), message(2, {**body, "status": "delayed"})], measures=MEASURES, priors={})
    assert reasons(batch.decisions) == ["admitted", "duplicate_conflict"]
    assert list(batch.claims) == [("mof", body["event_id"])]
    assert batch.claims["mof", body["event_id"]].admitted_seq == 1


def test_each_message_is_judged_at_its_own_receipt_time() -> None:
    """A report sent too early is rejected, and claims its id; the identical resend, received later, is admitted
    and the batch's one claim records which message admitted it."""
    body = event_body(reported_at="2024-12-20T18:30:00+09:00")  # 09:30 UTC
    early = message(1, body, received_at=RECEIVED)  # 30 min before reported_at: future_timestamp
    later = message(2, body, received_at=RECEIVED + timedelta(minutes=31))
    batch = decide_batch([early, later], measures=MEASURES, priors={})
    assert reasons(batch.decisions) == ["future_timestamp", "admitted"]
    claim = batch.claims["mof", body["event_id"]]
    assert (claim.first_seq, claim.admitted_seq) == (1, 2)
    assert batch.late == []


def test_an_id_rejected_before_and_admitted_now_is_a_late_admission() -> None:
    body = event_body()
    first = decide_batch([message(1, body)], measures=MEASURES, priors={}).decisions[0]
    assert isinstance(first, Admit)
    prior = PriorRecord(first.report.content_hash, admitted=False, agency="mof")
    batch = decide_batch([message(9, body)], measures=MEASURES, priors={("mof", body["event_id"]): prior})
    assert reasons(batch.decisions) == ["admitted"]
    assert batch.claims == {}
    assert batch.late == [LateAdmission("mof", body["event_id"], 9)]


def test_an_admitted_id_resent_as_is_is_a_duplicate_and_claims_nothing() -> None:
    body = event_body()
    first = decide_batch([message(1, body)], measures=MEASURES, priors={}).decisions[0]
    assert isinstance(first, Admit)
    prior = PriorRecord(first.report.content_hash, admitted=True, agency="mof")
    batch = decide_batch([message(5, body)], measures=MEASURES, priors={("mof", body["event_id"]): prior})
    assert reasons(batch.decisions) == ["duplicate"]
    assert (batch.claims, batch.late) == ({}, [])


def test_the_priors_handed_in_are_not_changed() -> None:
    priors: dict[tuple[str, str], PriorRecord] = {}
    decide_batch([message(1, event_body())], measures=MEASURES, priors=priors)
    assert priors == {}


def test_who_claims_and_whose_ids_are_read_before_deciding() -> None:
    """Malformed and forged messages claim nothing; a well-formed one that claims nothing (agency_mismatch) is
    the one whose stored record could change its decision, so its id is read before storing."""
    forged = event_body(agency="mhlw")
    unknown = event_body(measure_id="6-99")
    not_lead = event_body(measure_id="2-3")
    batch = decide_batch(
        [
            message(1, b"{not json"),
            message(2, forged),
            message(3, unknown, subject="status.mof.6-99"),
            message(4, not_lead, subject="status.mof.2-3"),
        ],
        measures=MEASURES,
        priors={},
    )
    assert reasons(batch.decisions) == ["malformed", "agency_mismatch", "unknown_measure", "not_lead"]
    assert set(batch.claims) == {("mof", unknown["event_id"]), ("mof", not_lead["event_id"])}
    assert batch.unclaimed_event_ids() == [("mof", forged["event_id"])]


def test_an_event_id_is_an_agencys_own() -> None:
    """Issue #15, hole 3: another agency's report under the same event_id (in the batch, or claimed and admitted
    before) is neither a duplicate nor a conflict: each agency claims the id for itself."""
    squatted = event_body(agency="mof", measure_id="1-25")
    victim = event_body(agency="mhlw", measure_id="2-3", event_id=squatted["event_id"], status="delayed")
    in_one_batch = decide_batch(
        [message(1, squatted), message(2, victim, subject="status.mhlw.2-3")], measures=MEASURES, priors={}
    )
    assert reasons(in_one_batch.decisions) == ["admitted", "admitted"]
    assert set(in_one_batch.claims) == {("mof", squatted["event_id"]), ("mhlw", squatted["event_id"])}
    first = in_one_batch.decisions[0]
    assert isinstance(first, Admit)
    prior = {("mof", squatted["event_id"]): PriorRecord(first.report.content_hash, admitted=True, agency="mof")}
    later = decide_batch([message(5, victim, subject="status.mhlw.2-3")], measures=MEASURES, priors=prior)
    assert reasons(later.decisions) == ["admitted"]
    assert list(later.claims) == [("mhlw", squatted["event_id"])]


def test_a_message_must_be_read_first() -> None:
    with pytest.raises(ValueError, match="not read"):
        decide_batch([Message(1, "status.mof.1-25", "mof", RECEIVED, None)], measures=MEASURES, priors={})


# --- kinds -----------------------------------------------------------------------------------------------------


def test_reports_are_the_kind_of_status_subjects_and_anything_unknown_is_read_as_one() -> None:
    assert kind_of("status.mof.1-25") is REPORT
    assert kind_of("audit.mof.1-25") is REPORT  # no such kind: read as a report, and so malformed
    read = read_message("audit.mof.1-25", encode(event_body()))
    assert isinstance(read, Reject)
    assert read.reason is ReasonCode.malformed


def test_each_message_is_read_and_decided_by_its_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind registered for a subject prefix reads and decides its messages; the batch's order and claims hold
    across kinds."""
    seen: list[tuple[str, datetime]] = []

    def read(subject: str, data: bytes) -> Read:
        return REPORT.read("status" + subject.removeprefix("probe"), data)

    def decide(read: Report | Command, *, message: Any, known: Known, previous: PriorRecord | None) -> Decision:
        seen.append((read.event_id, message.received_at))
        return Reject(ReasonCode.not_lead, "probes are never admitted", read.event_id, read)

    monkeypatch.setitem(KINDS, "probe", MessageKind("probe", read, decide))
    body = event_body()
    batch = decide_batch([message(1, body, subject="probe.mof.1-25"), message(2, body)], measures=MEASURES, priors={})
    assert seen == [(body["event_id"], RECEIVED)]
    # The probe's rejection claimed the id (it is a well-formed report rejected for a reason of its own), so the
    # report's identical copy after it is admitted late in the same claim.
    assert reasons(batch.decisions) == ["not_lead", "admitted"]
    claim = batch.claims["mof", body["event_id"]]
    assert (claim.first_seq, claim.admitted_seq) == (1, 2)
