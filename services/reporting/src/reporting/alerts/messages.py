"""What an alert says, in Japanese and English: which measure, which quarter, what to do, by when.

A clerk reads these in a chat channel or on the dashboard without opening anything else, so each names the
measure by number and title, the quarter by label and in Japanese (2024年度第3四半期), the deadline as a date
(Asia/Tokyo), and the next step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from contracts.agencies import AGENCY_INFO, Agency
from contracts.catalog import Measure, Target
from contracts.periods import FiscalQuarter, tokyo_date
from reporting.domain import LeadReport

if TYPE_CHECKING:
    from reporting.alerts.conditions import Review
    from reporting.progress import Observation

STATUS_JA = {
    "delayed": "遅延",
    "at_risk": "懸念あり",
    "suspended": "中断",
    "not_started": "未着手",
    "on_track": "順調",
    "completed": "完了",
    "unreported": "未報告",
}


@dataclass(frozen=True, slots=True)
class Text:
    ja: str
    en: str


def _title(measure: Measure, limit: int = 60) -> str:
    title = measure.title if len(measure.title) <= limit else measure.title[: limit - 1] + "…"
    return f"{measure.id}「{title}」"


def _quarter_ja(q: FiscalQuarter) -> str:
    return f"{q.fiscal_year}年度第{q.quarter}四半期（{q.label}）"


def _agency_ja(agency: str) -> str:
    try:
        return AGENCY_INFO[Agency(agency)].name_ja
    except (ValueError, KeyError, AttributeError):
        return agency


def last_on_time_day(q: FiscalQuarter) -> date:
    """The last day (Asia/Tokyo) a report on `q` is on time: the deadline is the end of that day."""
    return tokyo_date(q.on_time_deadline - timedelta(microseconds=1))


def report_due(measure: Measure, agency: str, q: FiscalQuarter) -> Text:
    by = last_on_time_day(q).isoformat()
    return Text(
        f"【報告期限間近】施策 {_title(measure)} の{_quarter_ja(q)}の進捗報告が{_agency_ja(agency)}から未提出です。"
        f"{by} までに報告してください。",
        f"Report due: measure {measure.id} ({measure.title}) has no {q.label} progress report from {agency} yet. "
        f"Send it by {by} (Asia/Tokyo) to be on time.",
    )


def report_missing(measure: Measure, agency: str, q: FiscalQuarter) -> Text:
    by = last_on_time_day(q).isoformat()
    return Text(
        f"【報告未提出】施策 {_title(measure)} の{_quarter_ja(q)}の進捗報告が期限（{by}）を過ぎても"
        f"{_agency_ja(agency)}から提出されていません。至急報告してください（遅延提出として記録されます）。",
        f"Report missing: measure {measure.id} ({measure.title}) has no {q.label} progress report from {agency}; "
        f"the deadline was {by}. Send it now (it will count as late).",
    )


def stale(
    measure: Measure, agency: str, first: FiscalQuarter, second: FiscalQuarter, last: FiscalQuarter | None
) -> Text:
    since_ja = f"最後の報告は{last.label}です" if last is not None else "報告はまだ一度もありません"
    since_en = f"its last report was for {last.label}" if last is not None else "it has never reported"
    return Text(
        f"【報告途絶】施策 {_title(measure)} について{_agency_ja(agency)}から{first.label}・{second.label}の"
        f"2四半期続けて報告がありません（{since_ja}）。担当者に状況を確認し、最新の四半期を報告してください。",
        f"Gone silent: {agency} has not reported on measure {measure.id} ({measure.title}) for two quarters running "
        f"({first.label}, {second.label}); {since_en}. Check with the owner and report the latest quarter.",
    )


def returned(measure: Measure, report: LeadReport, review: Review) -> Text:
    q = report.fiscal_quarter
    comment = (review.comment or "").strip()
    comment_ja = f"事務局コメント：「{comment[:300]}」" if comment else ""
    comment_en = f' Secretariat\'s comment: "{comment[:300]}".' if comment else ""
    return Text(
        f"【差戻し】施策 {_title(measure)} の{_quarter_ja(q)}の報告が事務局から差し戻されました。{comment_ja}"
        "修正した報告を新しい event_id で再提出してください。",
        f"Returned: the secretariat returned {report.agency}'s {q.label} report on measure {measure.id} "
        f"({measure.title}).{comment_en} Send a corrected report (a new event_id) for {q.label}.",
    )


def _target_text(target: Target) -> str:
    return target.text if len(target.text) <= 80 else target.text[:79] + "…"


def target_overdue(measure: Measure, position: int, target: Target, observation: Observation | None) -> Text:
    due = target.due_date.isoformat() if target.due_date else "?"
    if target.value is None:
        state_ja, state_en = "施策が「完了」と報告されていません", "the measure is not reported completed"
    elif observation is None:
        state_ja, state_en = "実績値の報告がありません", "no observed value has been reported"
    else:
        state_ja = f"最新の実績値は {observation.value:g}（{observation.as_of.isoformat()}時点）で目標値 {target.value:g} に未達です"
        state_en = f"the latest value is {observation.value:g} (as of {observation.as_of}), short of {target.value:g}"
    return Text(
        f"【目標期限超過】施策 {_title(measure)} の目標{position + 1}「{_target_text(target)}」は期限 {due} を過ぎましたが、"
        f"{state_ja}。達成していれば実績値（kpis）を報告し、未達であれば状況と見通しを次の報告に記載してください。",
        f"Target overdue: target {position + 1} of measure {measure.id} ({measure.title}) was due {due} and "
        f"{state_en}. If it is met, report the value (kpis); if not, explain the status and outlook in your next report.",
    )


def co_lead_disagreement(measure: Measure, q: FiscalQuarter, statuses: Mapping[str, str]) -> Text:
    ja = "、".join(f"{_agency_ja(a)}：{STATUS_JA.get(s, s)}" for a, s in statuses.items())
    en = ", ".join(f"{a}: {s}" for a, s in statuses.items())
    return Text(
        f"【共管省庁間の評価不一致】施策 {_title(measure)} の{_quarter_ja(q)}の報告で共管省庁の評価が大きく異なります"
        f"（{ja}）。共管省庁と調整のうえ、必要なら報告を訂正してください。",
        f"Co-leads disagree: on measure {measure.id} ({measure.title}) for {q.label} the leads' statuses are two or "
        f"more steps apart ({en}). Agree with your co-lead and correct the report if needed.",
    )


def worsened(measure: Measure, q: FiscalQuarter, before: str, now: str) -> Text:
    return Text(
        f"【状況悪化】施策 {_title(measure)} の{_quarter_ja(q)}の状況が前四半期の「{STATUS_JA.get(before, before)}」から"
        f"「{STATUS_JA.get(now, now)}」に悪化しました。原因と対応策を次の報告（note）に記載してください。",
        f"Worsened: measure {measure.id} ({measure.title}) went from {before} in {q.previous().label} to {now} in "
        f"{q.label}. Explain the cause and the remedy in the note of your next report.",
    )


def kpi_jump(measure: Measure, report: LeadReport, target: int, before: float, after: float, unit: str | None) -> Text:
    q = report.fiscal_quarter
    u = unit or ""
    return Text(
        f"【実績値の急変】施策 {_title(measure)} の目標{target + 1}の実績値が前回の {before:g}{u} から {after:g}{u} に"
        f"急変しました（{report.agency}、{q.label}の報告 {report.event_id}）。事務局は値を確認し、誤りなら差し戻し、"
        "正しければ承認してください。",
        f"KPI jump: target {target + 1} of measure {measure.id} ({measure.title}) went from {before:g}{u} to "
        f"{after:g}{u} ({report.agency}'s {q.label} report {report.event_id}). Secretariat: check the value; return "
        "the report if it is wrong, accept it if it is right.",
    )
