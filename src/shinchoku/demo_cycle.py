"""The demo's reporting cycle, played after its reports: history backfilled as the secretariat (marked), past
quarters reviewed (some returned, and answered by their agencies), closed and published, then a few corrections
that restate a closed quarter. The current quarter stays open. Reproducible from the demo's seed."""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from contracts.cycle import CloseEvent, ReviewDecision, ReviewEvent
from contracts.events import Status, StatusEvent
from contracts.periods import TOKYO, FiscalQuarter
from shinchoku.issuer import local_token
from shinchoku.stack import Stack
from shinchoku.stackhttp import get
from shinchoku_client.publisher import AgencyPublisher, SecretariatPublisher

#: Shares of the effective reports the secretariat returns, and leaves unreviewed (pending).
RETURN_SHARE = 0.08
PENDING_SHARE = 0.1
#: Past reports migrated from spreadsheets (FY2023Q4), and corrections after a close.
BACKFILLED = 40
RESTATEMENTS = 3
#: The secretariat reviews a sample of the last quarters' reports (enough to show every state, quickly).
REVIEWED_QUARTERS = 2
REVIEWS_PER_QUARTER = 60
COMMENTS = (
    "KPIの実績値と基準値の時点が異なります。同じ時点の値で再提出してください。",
    "進捗率の根拠を備考に記載してください。",
    "主担当省庁間で状況の認識が異なります。調整のうえ再提出してください。",
)


@dataclass
class CycleSummary:
    backfilled: int = 0
    accepted: int = 0
    returned: int = 0
    answered: int = 0
    closed: list[str] = field(default_factory=list)
    restated: int = 0


def _uuid(rnd: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rnd.getrandbits(128), version=4)


def closable(now: datetime) -> list[FiscalQuarter]:
    """FY2024Q1 onwards, every quarter whose on-time deadline has passed (the current one stays open)."""
    out, q = [], FiscalQuarter(2024, 1)
    while q.on_time_deadline < now:
        out.append(q)
        q = q.next()
    return out


def _leads(stack: Stack, quarter: FiscalQuarter) -> list[dict[str, Any]]:
    body = get(stack, "reporting", f"/rollups/{quarter.fiscal_year}/{quarter.quarter}/measures", params={"limit": 1000})
    body.raise_for_status()
    return [
        {**lead, "measure_id": item["measure_id"]}
        for item in body.json()["items"]
        for lead in item["leads"]
        if lead["event_id"]
    ]


async def play_cycle(
    stack: Stack, measures: list[Any], *, seed: int, now: datetime, wait: Callable[[], Awaitable[object]]
) -> CycleSummary:
    rnd = random.Random(seed * 7 + 17)
    token = local_token(stack.data_dir)
    if token is None:
        raise RuntimeError("this data directory has no embedded issuer: the demo cannot act as the secretariat")
    summary = CycleSummary()
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

    try:
        # History: FY2023Q4 from the secretariat's spreadsheets, backfilled (each marked so wherever it shows).
        history = FiscalQuarter(2023, 4)
        for m in rnd.sample(measures, min(BACKFILLED, len(measures))):
            event = StatusEvent(
                event_id=_uuid(rnd), measure_id=m.id, agency=m.lead_agencies[0], fiscal_year=2023, quarter=4,
                status=rnd.choice([Status.on_track, Status.on_track, Status.completed, Status.delayed]),
                reported_at=(history.end_at + timedelta(days=rnd.randint(5, 25))).astimezone(TOKYO),
                note="移行データ（事務局の管理表から）",
            )  # fmt: skip
            await secretariat.publish_backfill(event, token=token)
            summary.backfilled += 1
        await wait()
        # Review every past quarter's effective reports: most accepted, a few returned and answered.
        quarters = closable(now)
        for quarter in quarters[-REVIEWED_QUARTERS:]:
            leads = _leads(stack, quarter)
            for lead in rnd.sample(leads, min(REVIEWS_PER_QUARTER, len(leads))):
                roll = rnd.random()
                if roll < PENDING_SHARE:
                    continue
                decision = ReviewDecision.returned if roll < PENDING_SHARE + RETURN_SHARE else ReviewDecision.accepted
                review = ReviewEvent(
                    review_id=_uuid(rnd), event_id=uuid.UUID(lead["event_id"]), decision=decision,
                    comment=rnd.choice(COMMENTS) if decision is ReviewDecision.returned else None,
                    reviewed_at=now, reviewer="重点計画事務局",
                )  # fmt: skip
                await secretariat.publish_review(
                    review, agency=lead["agency"], measure_id=lead["measure_id"], token=token
                )
                if decision is ReviewDecision.accepted:
                    summary.accepted += 1
                    continue
                summary.returned += 1
                answer = StatusEvent(
                    event_id=_uuid(rnd), measure_id=lead["measure_id"], agency=lead["agency"],
                    fiscal_year=quarter.fiscal_year, quarter=quarter.quarter, status=Status(lead["status"]),
                    reported_at=now.astimezone(TOKYO), note="差戻しを受けて、KPIの時点をそろえて再提出します。",
                )  # fmt: skip
                await (await agency(lead["agency"])).publish(answer)
                summary.answered += 1
        await wait()
        # Close and publish every past quarter; the current one stays open.
        for quarter in quarters:
            close = CloseEvent(
                close_id=_uuid(rnd), fiscal_year=quarter.fiscal_year, quarter=quarter.quarter, closed_at=now,
                closed_by="重点計画事務局",
            )  # fmt: skip
            await secretariat.publish_close(close, token=token)
            summary.closed.append(quarter.label)
        await wait()
        # A few corrections after the close: each restates its quarter.
        if quarters:
            target = quarters[-1]
            for lead in rnd.sample(_leads(stack, target), min(RESTATEMENTS, len(_leads(stack, target)))):
                status = Status.delayed if lead["status"] != "delayed" else Status.at_risk
                correction = StatusEvent(
                    event_id=_uuid(rnd), measure_id=lead["measure_id"], agency=lead["agency"],
                    fiscal_year=target.fiscal_year, quarter=target.quarter, status=status,
                    reported_at=(now + timedelta(seconds=1)).astimezone(TOKYO), note="公表後の訂正",
                )  # fmt: skip
                await (await agency(lead["agency"])).publish(correction)
                summary.restated += 1
            await wait()
    finally:
        await secretariat.close()
        for publisher in agencies.values():
            await publisher.close()
    return summary
