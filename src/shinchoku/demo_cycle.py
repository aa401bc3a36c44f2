"""The demo's reporting cycle, played after its reports (by default): history from the secretariat's spreadsheets
backfilled (marked), the last past quarters reviewed (some returned, and answered by their agencies), every past
quarter closed and published, a few corrections after the close that restate it, and the current quarter open
with its first reports.

Planned like the reports (`shinchoku.demo_plan`): `plan_cycle` is a pure function of the registry, the demo's
reports, the seed and the day, so every command and report has a fixed id (a uuid5 of the seed and what it is)
and fixed bytes (its times are derived from the quarter and the report it concerns, never from the clock).
Playing it again therefore sends nothing twice: the demo first reads what the platform holds (the ids on ACCEPTED,
the canonical log; ingest's rejections; reporting's rollup for whether a quarter is closed) and sends only the
rest; were something resent anyway, ingest would take it as a duplicate, never as a second fact or a conflict.
A later day only adds what has come due (a quarter that can now be closed, the current quarter's reports).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts.catalog import Measure
from contracts.cycle import CloseEvent, ReviewDecision, ReviewEvent
from contracts.events import Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter
from contracts.streams import ACCEPTED_STREAM, MSG_ID_HEADER
from shinchoku.demo_plan import ADMITTED, FIRST_QUARTER, DemoMessage, event_uuid
from shinchoku.issuer import local_token
from shinchoku.stack import Stack
from shinchoku.stackhttp import get
from shinchoku_client.publisher import AgencyPublisher, SecretariatPublisher
from shinchoku_runtime.natsclient import connect

#: Shares of the reviewed reports the secretariat returns, and leaves unreviewed (pending).
RETURN_SHARE = 0.08
PENDING_SHARE = 0.1
#: Past reports migrated from spreadsheets (FY2023Q4), corrections after a close, first reports of the open quarter.
BACKFILLED = 40
RESTATEMENTS = 3
OPEN_REPORTS = 30
#: The secretariat reviews a sample of the last closable quarters' reports (every state shows, quickly).
REVIEWED_QUARTERS = 2
REVIEWS_PER_QUARTER = 60
#: A quarter is closed a day after its on-time deadline; the demo closes those whose close day has passed.
CLOSE_DELAY = timedelta(days=1)
SECRETARIAT_NAME = "重点計画事務局"
HISTORY = FiscalQuarter(2023, 4)
COMMENTS = (
    "KPIの実績値と基準値の時点が異なります。同じ時点の値で再提出してください。",
    "進捗率の根拠を備考に記載してください。",
    "主担当省庁間で状況の認識が異なります。調整のうえ再提出してください。",
)


@dataclass(frozen=True)
class PlannedReview:
    """A review of an agency's report (the subject is the report's agency and measure)."""

    review: ReviewEvent
    agency: str
    measure_id: str


@dataclass
class CyclePlan:
    """Everything the cycle sends, in the order it is sent."""

    backfills: list[StatusEvent] = field(default_factory=list)
    open_reports: list[StatusEvent] = field(default_factory=list)
    reviews: list[PlannedReview] = field(default_factory=list)
    answers: list[StatusEvent] = field(default_factory=list)
    closes: list[CloseEvent] = field(default_factory=list)
    corrections: list[StatusEvent] = field(default_factory=list)

    @property
    def facts(self) -> int:
        """How many facts the cycle adds to ACCEPTED when played on a stack that has none of them yet."""
        return (
            len(self.backfills)
            + len(self.open_reports)
            + len(self.reviews)
            + len(self.answers)
            + len(self.closes)
            + len(self.corrections)
        )

    def ids(self) -> list[str]:
        """Every id the cycle sends (event_id, review_id or close_id)."""
        return [
            *(str(e.event_id) for e in (*self.backfills, *self.open_reports, *self.answers, *self.corrections)),
            *(str(r.review.review_id) for r in self.reviews),
            *(str(c.close_id) for c in self.closes),
        ]


def closable(now: datetime) -> list[FiscalQuarter]:
    """FY2024Q1 onwards, every quarter whose close day (a day after its on-time deadline) has passed."""
    out, q = [], FIRST_QUARTER
    while q.on_time_deadline + CLOSE_DELAY < now:
        out.append(q)
        q = q.next()
    return out


def _rng(seed: int, *parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in (seed, "cycle", *parts)))


def _effective(reports: Sequence[DemoMessage]) -> dict[tuple[str, str, str], StatusEvent]:
    """Per (quarter label, measure, agency): the demo's effective report (latest reported_at, ties to the greater
    event_id), by the binding rule."""
    best: dict[tuple[str, str, str], StatusEvent] = {}
    for message in reports:
        if message.expect != ADMITTED:
            continue
        e = StatusEvent.model_validate_json(message.payload)
        key = (FiscalQuarter(e.fiscal_year, e.quarter).label, e.measure_id, e.agency.value)
        current = best.get(key)
        if current is None or (e.reported_at, str(e.event_id)) > (current.reported_at, str(current.event_id)):
            best[key] = e
    return best


def plan_cycle(measures: Sequence[Measure], reports: Sequence[DemoMessage], *, seed: int, now: datetime) -> CyclePlan:
    """The cycle for the demo's `reports` (from `plan_demo` with the same seed and day): see the module docstring."""
    plan = CyclePlan()
    ordered = sorted(measures, key=lambda m: tuple(int(x) for x in m.id.split("-")))
    effective = _effective(reports)

    # History: FY2023Q4 from the secretariat's spreadsheets, backfilled (marked so wherever it shows).
    rng = _rng(seed, "backfill")
    for m in rng.sample(ordered, min(BACKFILLED, len(ordered))):
        plan.backfills.append(
            StatusEvent(
                event_id=event_uuid(seed, m.id, m.lead_agencies[0].value, HISTORY.label, "backfill"),
                measure_id=m.id, agency=m.lead_agencies[0], fiscal_year=HISTORY.fiscal_year, quarter=HISTORY.quarter,
                status=rng.choice([Status.on_track, Status.on_track, Status.completed, Status.delayed]),
                reported_at=(HISTORY.end_at + timedelta(days=rng.randint(5, 25))).astimezone(TOKYO),
                note="移行データ（事務局の管理表から）",
            )
        )  # fmt: skip

    # The current quarter stays open: its first reports, made so far.
    current = FiscalQuarter.of_moment(now)
    rng = _rng(seed, "open", current.label)
    leads = [(m, a) for m in ordered for a in m.lead_agencies]
    for m, agency in sorted(rng.sample(leads, min(OPEN_REPORTS, len(leads))), key=lambda x: (x[0].id, x[1].value)):
        day = current.start + timedelta(days=rng.randint(3, 80))
        reported_at = datetime.combine(day, time(rng.randint(9, 18), rng.randrange(0, 60, 5)), tzinfo=TOKYO)
        if reported_at > now:
            continue  # not made yet: a later run sends it
        plan.open_reports.append(
            StatusEvent(
                event_id=event_uuid(seed, m.id, agency.value, current.label, "early"),
                measure_id=m.id, agency=agency, fiscal_year=current.fiscal_year, quarter=current.quarter,
                status=rng.choice([Status.on_track, Status.on_track, Status.on_track, Status.at_risk]),
                reported_at=reported_at, note="四半期途中の報告",
            )
        )  # fmt: skip

    # Reviews of the last closable quarters' on-time reports: most accepted, a few returned and answered.
    quarters = closable(now)
    reviewed: set[tuple[str, str, str]] = set()
    for quarter in quarters[-REVIEWED_QUARTERS:]:
        deadline = quarter.on_time_deadline
        candidates = sorted(
            (k for k, e in effective.items() if k[0] == quarter.label and e.reported_at <= deadline),
            key=lambda k: (tuple(int(x) for x in k[1].split("-")), k[2]),
        )
        rng = _rng(seed, "review", quarter.label)
        for key in rng.sample(candidates, min(REVIEWS_PER_QUARTER, len(candidates))):
            report = effective[key]
            roll = rng.random()
            if roll < PENDING_SHARE:
                continue
            returned = roll < PENDING_SHARE + RETURN_SHARE
            reviewed_at = min(report.reported_at + timedelta(days=2), deadline)
            review = ReviewEvent(
                review_id=event_uuid(seed, "review", report.event_id),
                event_id=report.event_id,
                decision=ReviewDecision.returned if returned else ReviewDecision.accepted,
                comment=rng.choice(COMMENTS) if returned else None,
                reviewed_at=reviewed_at,
                reviewer=SECRETARIAT_NAME,
            )
            plan.reviews.append(PlannedReview(review, report.agency.value, report.measure_id))
            reviewed.add(key)
            if returned:
                plan.answers.append(
                    report.model_copy(
                        update={
                            "event_id": event_uuid(seed, "answer", report.event_id),
                            "reported_at": (reviewed_at + timedelta(days=1)).astimezone(TOKYO),
                            "note": "差戻しを受けて、KPIの時点をそろえて再提出します。",
                        }
                    )
                )

    # Close and publish every closable quarter; the current one (and any still before its close day) stays open.
    for quarter in quarters:
        plan.closes.append(
            CloseEvent(
                close_id=event_uuid(seed, "close", quarter.label),
                fiscal_year=quarter.fiscal_year, quarter=quarter.quarter,
                closed_at=quarter.on_time_deadline + CLOSE_DELAY, closed_by=SECRETARIAT_NAME,
            )
        )  # fmt: skip

    # A few corrections after the last close: each changes a figure of the closed quarter, so each restates it.
    if quarters:
        target = quarters[-1]
        closed_at = target.on_time_deadline + CLOSE_DELAY
        candidates = sorted(
            (k for k in effective if k[0] == target.label and k not in reviewed),
            key=lambda k: (tuple(int(x) for x in k[1].split("-")), k[2]),
        )
        rng = _rng(seed, "restatement", target.label)
        for key in rng.sample(candidates, min(RESTATEMENTS, len(candidates))):
            report = effective[key]
            reported_at = max(report.reported_at, closed_at) + timedelta(days=1)
            if reported_at > now:
                continue
            plan.corrections.append(
                report.model_copy(
                    update={
                        "event_id": event_uuid(seed, "restatement", report.event_id),
                        "status": Status.delayed if report.status is not Status.delayed else Status.at_risk,
                        "reported_at": reported_at.astimezone(TOKYO),
                        "note": "公表後の訂正",
                    }
                )
            )
    return plan


@dataclass
class CycleSummary:
    backfilled: int = 0
    open_reports: int = 0
    accepted: int = 0
    returned: int = 0
    answered: int = 0
    closed: list[str] = field(default_factory=list)
    restated: int = 0
    #: Ids of the plan the platform had already decided (a second run): not sent again.
    already: int = 0


#: Past this many facts on ACCEPTED the demo does not read the log to learn what it holds: it sends everything
#: and leaves the duplicates to ingest (admitted once, never a conflict: the demo's bytes are fixed).
MAX_SCAN = 500_000


async def admitted_ids(stack: Stack) -> set[str] | None:
    """The ids of every fact on ACCEPTED (reports, backfills, reviews, closes): from each message's `Nats-Msg-Id`
    (`{agency}:{event_id}`, `review:{review_id}`, `close:{close_id}`), read as the administrator with a
    headers-only ordered consumer (one pass, no payloads). None when the log is too long to be worth reading."""
    nc = await connect(stack.nats_plain_url, name="shinchoku-demo-ids", user="admin", password=stack.password("admin"))
    try:
        js = nc.jetstream()
        count = int((await js.stream_info(ACCEPTED_STREAM.name)).state.messages or 0)
        if count > MAX_SCAN:
            return None
        out: set[str] = set()
        if not count:
            return out
        sub = await js.subscribe(
            ">", stream=ACCEPTED_STREAM.name, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, headers_only=True),
        )  # fmt: skip
        try:
            for _ in range(count):
                msg = await sub.next_msg(timeout=10)
                msg_id = (msg.headers or {}).get(MSG_ID_HEADER, "")
                out.add(msg_id.rpartition(":")[2])
        finally:
            await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def already_rejected(stack: Stack, token: str) -> set[tuple[str, bytes]]:
    """(subject, bytes) of every message ingest has rejected: the demo's deliberate rejections of an earlier run
    (a malformed message has no id to ask about, so it is recognised by its bytes)."""
    out: set[tuple[str, bytes]] = set()
    offset: int | None = 0
    while offset is not None:
        response = get(
            stack, "ingest", "/rejections", params={"limit": 1000, "offset": offset},
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        response.raise_for_status()
        body = response.json()
        for item in body["items"]:
            if item.get("payload_b64"):
                out.add((str(item["subject"]), base64.b64decode(item["payload_b64"])))
        offset = body.get("next_offset")
    return out


def closed_quarters(stack: Stack, quarters: Sequence[FiscalQuarter], token: str) -> set[str]:
    """The labels of the quarters reporting says are closed (by this demo or by anyone)."""
    out = set()
    for quarter in quarters:
        response = get(
            stack, "reporting", f"/rollups/{quarter.fiscal_year}/{quarter.quarter}",
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        response.raise_for_status()
        if response.json().get("closed"):
            out.add(quarter.label)
    return out


async def play_cycle(
    stack: Stack,
    plan: CyclePlan,
    *,
    wait: Callable[[], Awaitable[object]],
    done: set[str],
    closed: set[str],
) -> CycleSummary:
    """Send what of `plan` the platform has not decided yet (`done`: ids it has; `closed`: quarters closed), as the
    secretariat (its commands, with the data directory's token) and as each agency (its reports), waiting for
    ingest and reporting between the steps that depend on each other."""
    token = local_token(stack.data_dir)
    if token is None:
        raise RuntimeError("this data directory has no embedded issuer: the demo cannot act as the secretariat")
    summary = CycleSummary(already=sum(1 for i in plan.ids() if i in done))
    secretariat = SecretariatPublisher(stack.nats_plain_url, password=stack.password("secretariat"), timeout=10.0)
    await secretariat.connect()
    agencies: dict[str, AgencyPublisher] = {}

    async def agency(code: str) -> AgencyPublisher:
        if code not in agencies:
            agencies[code] = AgencyPublisher(
                stack.nats_plain_url, agency=code, password=stack.password(code), timeout=10.0
            )
            await agencies[code].connect()
        return agencies[code]

    def new(events: Sequence[Any], key: Callable[[Any], object]) -> list[Any]:
        return [e for e in events if str(key(e)) not in done]

    try:
        for event in new(plan.backfills, lambda e: e.event_id):
            await secretariat.publish_backfill(event, token=token)
            summary.backfilled += 1
        for event in new(plan.open_reports, lambda e: e.event_id):
            await (await agency(event.agency.value)).publish(event)
            summary.open_reports += 1
        await wait()
        # A returned report's answer must come after its review has been applied (it answers the return).
        for planned in new(plan.reviews, lambda r: r.review.review_id):
            await secretariat.publish_review(
                planned.review, agency=planned.agency, measure_id=planned.measure_id, token=token
            )
            if planned.review.decision is ReviewDecision.returned:
                summary.returned += 1
            else:
                summary.accepted += 1
        await wait()
        for event in new(plan.answers, lambda e: e.event_id):
            await (await agency(event.agency.value)).publish(event)
            summary.answered += 1
        await wait()
        for close in new(plan.closes, lambda c: c.close_id):
            label = FiscalQuarter(close.fiscal_year, close.quarter).label
            if label in closed:
                continue  # closed already (by someone else): a second close would be rejected already_closed
            await secretariat.publish_close(close, token=token)
            summary.closed.append(label)
        await wait()
        # One at a time, each once the one before is applied: each correction is its own restatement.
        for event in new(plan.corrections, lambda e: e.event_id):
            await (await agency(event.agency.value)).publish(event)
            summary.restated += 1
            await wait()
    finally:
        await secretariat.close()
        for publisher in agencies.values():
            await publisher.close()
    return summary
