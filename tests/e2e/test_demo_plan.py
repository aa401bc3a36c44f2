"""The demo history is realistic, reproducible, and each deliberate rejection breaks exactly its rule."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from contracts.agencies import Agency
from contracts.catalog import Measure
from contracts.commands import COMMAND_REASONS
from contracts.events import ReasonCode, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter, last_completed_quarter, quarters_between
from contracts.streams import parse_status_subject
from shinchoku.demo_cycle import CLOSE_DELAY, CyclePlan, plan_cycle
from shinchoku.demo_plan import ADMITTED, DUPLICATE, FIRST_QUARTER, DemoMessage, plan_demo

NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def measures() -> list[Measure]:
    from catalog.plan import bundled_plan_text, parse_plan

    return parse_plan(bundled_plan_text())


@pytest.fixture(scope="module")
def plan(measures: list[Measure]) -> list[DemoMessage]:
    return plan_demo(measures, seed=7, now=NOW)


def admitted(plan: list[DemoMessage]) -> list[StatusEvent]:
    return [StatusEvent.model_validate_json(m.payload) for m in plan if m.expect == ADMITTED]


def test_same_seed_same_bytes_other_seed_other_history(measures: list[Measure], plan: list[DemoMessage]) -> None:
    assert plan_demo(measures, seed=7, now=NOW) == plan
    other = plan_demo(measures, seed=8, now=NOW)
    assert {m.event_id for m in other}.isdisjoint(m.event_id for m in plan if m.expect == ADMITTED)


def test_a_later_run_only_adds_reports(measures: list[Measure], plan: list[DemoMessage]) -> None:
    """Nothing sent earlier changes later, so a second run (even months on) admits nothing twice and conflicts with nothing."""
    later = plan_demo(measures, seed=7, now=NOW + timedelta(days=200))
    by_id = {m.event_id: m.payload for m in later if m.expect in (ADMITTED, DUPLICATE)}
    for m in plan:
        if m.expect in (ADMITTED, DUPLICATE):
            assert by_id[m.event_id] == m.payload
    assert len(later) > len(plan)


def test_every_agency_publishes_only_on_its_own_subjects(plan: list[DemoMessage]) -> None:
    for m in plan:
        parts = parse_status_subject(m.subject)
        assert parts is not None
        assert parts.agency == m.agency
    assert {m.agency for m in plan} == {a.value for a in Agency}


def test_reports_are_realistic(measures: list[Measure], plan: list[DemoMessage]) -> None:
    events = admitted(plan)
    by_id = {m.id: m for m in measures}
    quarters = quarters_between(FIRST_QUARTER, last_completed_quarter(NOW))
    late = 0
    for e in events:
        q = FiscalQuarter(e.fiscal_year, e.quarter)
        assert q in quarters
        assert q.start_at <= e.reported_at <= NOW, "never before the quarter, never in the future"
        assert e.reported_at <= q.on_time_deadline + timedelta(days=80)
        late += not q.is_on_time(e.reported_at)
        measure = by_id[e.measure_id]
        assert e.agency in measure.lead_agencies
        for kpi in e.kpis:
            assert measure.targets[kpi.target].value is not None
    assert 0.03 < late / len(events) < 0.25
    assert sum(1 for e in events if e.kpis) > 300
    # Most measures reported most quarters, some silence.
    reported = {(e.measure_id, e.fiscal_year, e.quarter) for e in events}
    possible = len(measures) * len(quarters)
    assert 0.75 < len(reported) / possible < 0.99
    assert len(set(Counter(e.status for e in events))) == 6


def test_corrections_restate_a_quarter_later_with_another_status(plan: list[DemoMessage]) -> None:
    reports: dict[tuple[str, str, int, int], StatusEvent] = {}
    corrections = 0
    for m in plan:
        if m.expect != ADMITTED:
            continue
        e = StatusEvent.model_validate_json(m.payload)
        key = (e.measure_id, e.agency.value, e.fiscal_year, e.quarter)
        if m.kind == "report":
            reports[key] = e
        else:
            corrections += 1
            assert e.status != reports[key].status
            assert e.reported_at > reports[key].reported_at
            assert e.event_id != reports[key].event_id
    assert corrections > 20


def test_identical_duplicates_resend_the_same_bytes(plan: list[DemoMessage]) -> None:
    originals = {m.event_id: m.payload for m in plan if m.expect == ADMITTED}
    duplicates = [m for m in plan if m.expect == DUPLICATE]
    assert duplicates
    assert all(originals[m.event_id] == m.payload for m in duplicates)
    first_duplicate = next(i for i, m in enumerate(plan) if m.expect == DUPLICATE)
    assert all(m.expect != ADMITTED for m in plan[first_duplicate:]), "resends come after every original"


def test_each_rejection_breaks_its_rule(measures: list[Measure], plan: list[DemoMessage]) -> None:
    by_id = {m.id: m for m in measures}
    originals = {m.event_id: m.payload for m in plan if m.expect == ADMITTED}
    rejections = [m for m in plan if m.kind == "rejection"]
    reasons = Counter(m.expect for m in rejections)
    # Every reason a ministry's report can get (the secretariat's commands have reasons of their own).
    assert set(reasons) == {r.value for r in ReasonCode} - {"undeliverable"} - {r.value for r in COMMAND_REASONS}
    assert all(n >= 2 for n in reasons.values())
    for m in rejections:
        subject = parse_status_subject(m.subject)
        assert subject is not None
        if m.expect == "malformed":
            with pytest.raises(ValueError):  # noqa: PT011 — json or pydantic, both ValueErrors
                StatusEvent.model_validate_json(m.payload)
            continue
        e = StatusEvent.model_validate_json(m.payload)
        q = FiscalQuarter(e.fiscal_year, e.quarter)
        if m.expect == "agency_mismatch":
            assert e.agency.value != subject.agency
            continue
        assert e.agency.value == subject.agency
        if m.expect == "unknown_measure":
            assert e.measure_id not in by_id
            continue
        assert e.agency in by_id[e.measure_id].lead_agencies or m.expect == "not_lead"
        if m.expect == "not_lead":
            assert e.agency not in by_id[e.measure_id].lead_agencies
        elif m.expect == "future_timestamp":
            assert e.reported_at > NOW + timedelta(days=365 * 50)
        elif m.expect == "future_period":
            assert not q.has_started(e.reported_at)
            assert e.reported_at < NOW
        elif m.expect == "kpi_future":
            assert any(k.as_of > e.reported_at.astimezone(TOKYO).date() for k in e.kpis)
            assert e.reported_at < NOW
        elif m.expect == "duplicate_conflict":
            assert m.event_id in originals
            assert json.loads(originals[m.event_id]) != json.loads(m.payload)
        else:
            pytest.fail(f"unexpected reason {m.expect}")


def test_at_most_one_report_per_lead_and_quarter_besides_corrections(plan: list[DemoMessage]) -> None:
    seen: dict[tuple[str, str, int, int], int] = defaultdict(int)
    for e in admitted([m for m in plan if m.kind == "report"]):
        seen[(e.measure_id, e.agency.value, e.fiscal_year, e.quarter)] += 1
    assert max(seen.values()) == 1


def test_report_bytes_are_what_the_client_sends(plan: list[DemoMessage]) -> None:
    """The demo publishes reports through AgencyPublisher.publish, which re-encodes them: same bytes."""
    for m in plan:
        if m.expect in (ADMITTED, DUPLICATE):
            assert StatusEvent.model_validate_json(m.payload).model_dump_json().encode() == m.payload


def test_ingest_decides_each_message_as_the_plan_expects(measures: list[Measure], plan: list[DemoMessage]) -> None:
    """Replayed in publish order through ingest's own admission rules, every message ends as planned."""
    from uuid import UUID

    from ingest.domain import Admit, Duplicate, PriorRecord, Reject, admit, claims_event_id

    by_id = {m.id: m for m in measures}
    records: dict[UUID, PriorRecord] = {}
    outcomes: Counter[str] = Counter()
    for m in plan:
        decision = admit(m.subject, m.payload, now=NOW, measure=by_id, previous=records)
        if isinstance(decision, Admit):
            outcome = ADMITTED
        elif isinstance(decision, Duplicate):
            outcome = DUPLICATE
        else:
            assert isinstance(decision, Reject)
            outcome = decision.reason.value
        assert outcome == m.expect, (m.kind, m.subject, m.payload[:200], getattr(decision, "message", ""))
        outcomes[outcome] += 1
        report = getattr(decision, "report", None)
        if report is not None and claims_event_id(decision, records.get(report.event.event_id)):
            records[report.event.event_id] = PriorRecord(
                content_hash=report.content_hash, admitted=isinstance(decision, Admit), agency=report.subject_agency
            )
    assert outcomes[DUPLICATE] > 0


# --- The reporting cycle the demo plays by default (shinchoku.demo_cycle): planned as purely as the reports ---


@pytest.fixture(scope="module")
def cycle(measures: list[Measure], plan: list[DemoMessage]) -> CyclePlan:
    return plan_cycle(measures, plan, seed=7, now=NOW)


def test_the_cycle_is_reproducible_and_a_later_day_only_adds(
    measures: list[Measure], plan: list[DemoMessage], cycle: CyclePlan
) -> None:
    """Fixed ids and fixed bytes (no clock in them): a second run resends nothing new, and were it to resend,
    ingest would see duplicates, never a second review, close or restatement, nor a conflict."""
    assert plan_cycle(measures, plan, seed=7, now=NOW) == cycle
    ids = cycle.ids()
    assert len(ids) == len(set(ids)) == cycle.facts
    assert set(ids).isdisjoint(m.event_id for m in plan), "no id of the cycle is one of the reports'"
    later_now = NOW + timedelta(days=200)
    later = plan_cycle(measures, plan_demo(measures, seed=7, now=later_now), seed=7, now=later_now)
    earlier = _bytes_by_id(cycle)
    again = _bytes_by_id(later)
    # Every backfill, close and review of the earlier day is sent again with the same bytes (the reviewed and
    # restated quarters move on with the day; what they sent stays as it was, or is not sent again).
    kept = {i: b for i, b in earlier.items() if i in again}
    assert {i: again[i] for i in kept} == kept
    assert {str(c.close_id) for c in cycle.closes} <= set(again)
    assert len(later.closes) > len(cycle.closes)


def _bytes_by_id(cycle: CyclePlan) -> dict[str, bytes]:
    out = {str(e.event_id): e.model_dump_json().encode() for e in (*cycle.backfills, *cycle.answers)}
    out |= {str(e.event_id): e.model_dump_json().encode() for e in (*cycle.open_reports, *cycle.corrections)}
    out |= {str(r.review.review_id): r.review.model_dump_json().encode() for r in cycle.reviews}
    out |= {str(c.close_id): c.model_dump_json().encode() for c in cycle.closes}
    return out


def test_the_cycle_closes_the_past_and_leaves_the_current_quarter_open(cycle: CyclePlan) -> None:
    closed = [FiscalQuarter(c.fiscal_year, c.quarter) for c in cycle.closes]
    assert closed == quarters_between(FIRST_QUARTER, closed[-1])
    assert all(q.on_time_deadline < c.closed_at <= NOW for q, c in zip(closed, cycle.closes, strict=True))
    current = FiscalQuarter.of_moment(NOW)
    assert current not in closed
    assert closed[-1].next() == current or closed[-1].next().on_time_deadline + CLOSE_DELAY >= NOW
    assert cycle.open_reports, "the open quarter has its first reports"
    assert all(FiscalQuarter(e.fiscal_year, e.quarter) == current for e in cycle.open_reports)
    assert all(current.start_at <= e.reported_at <= NOW for e in cycle.open_reports)
    assert len(cycle.backfills) == 40
    assert {(e.fiscal_year, e.quarter) for e in cycle.backfills} == {(2023, 4)}


def test_reviews_name_effective_reports_and_returns_are_answered(plan: list[DemoMessage], cycle: CyclePlan) -> None:
    reports = {str(e.event_id): e for e in admitted(plan)}
    decisions = Counter(r.review.decision.value for r in cycle.reviews)
    assert decisions["accepted"] > 40
    assert decisions["returned"] >= 2
    answered = {}
    for planned in cycle.reviews:
        report = reports[str(planned.review.event_id)]
        assert (planned.agency, planned.measure_id) == (report.agency.value, report.measure_id)
        assert report.reported_at <= planned.review.reviewed_at <= NOW
        later = [
            e for e in reports.values()
            if (e.measure_id, e.agency, e.fiscal_year, e.quarter)
            == (report.measure_id, report.agency, report.fiscal_year, report.quarter)
            and (e.reported_at, str(e.event_id)) > (report.reported_at, str(report.event_id))
        ]  # fmt: skip
        assert not later, "a review names the lead's effective report"
        if planned.review.decision.value == "returned":
            assert planned.review.comment
            answered[str(report.event_id)] = planned.review
    assert len(cycle.answers) == len(answered)
    for answer in cycle.answers:
        returned = next(
            reports[i] for i in answered
            if (reports[i].measure_id, reports[i].agency, reports[i].fiscal_year, reports[i].quarter)
            == (answer.measure_id, answer.agency, answer.fiscal_year, answer.quarter)
        )  # fmt: skip
        assert answered[str(returned.event_id)].reviewed_at < answer.reported_at <= NOW


def test_corrections_after_the_close_change_a_figure(plan: list[DemoMessage], cycle: CyclePlan) -> None:
    assert len(cycle.corrections) == 3
    last = cycle.closes[-1]
    reports = admitted(plan)
    for correction in cycle.corrections:
        assert (correction.fiscal_year, correction.quarter) == (last.fiscal_year, last.quarter)
        assert last.closed_at < correction.reported_at <= NOW
        same_lead = [
            e for e in reports
            if (e.measure_id, e.agency, e.fiscal_year, e.quarter)
            == (correction.measure_id, correction.agency, correction.fiscal_year, correction.quarter)
        ]  # fmt: skip
        effective = max(same_lead, key=lambda e: (e.reported_at, str(e.event_id)))
        assert correction.status != effective.status, "it restates the quarter"
        assert correction.reported_at > effective.reported_at


def test_the_cycles_reports_are_admitted_by_ingests_rules(measures: list[Measure], cycle: CyclePlan) -> None:
    from ingest.domain import Admit, admit

    by_id = {m.id: m for m in measures}
    for event in (*cycle.open_reports, *cycle.answers, *cycle.corrections, *cycle.backfills):
        subject = f"status.{event.agency.value}.{event.measure_id}"
        decision = admit(subject, event.model_dump_json().encode(), now=NOW, measure=by_id, previous={})
        assert isinstance(decision, Admit), (event, getattr(decision, "message", ""))
