"""The dashboard's alert panel, `/dashboard/alerts`: per agency, what needs doing (the alerts still raised, most
urgent kinds first), and what was resolved lately. Server-rendered with the dashboard's templates."""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import Engine

from contracts.agencies import AGENCIES
from contracts.alerts import AlertEvent, AlertKind
from reporting import access
from reporting.access import AlertReader
from reporting.alerts.api import alert_list
from reporting.dashboard.i18n import LANGS, TEXT, Lang, is_agency
from reporting.dashboard.routes import _error, render

router = APIRouter(include_in_schema=False)

#: The order the panel lists kinds in: what blocks a report first, then what the figures say.
KIND_ORDER: Final[tuple[AlertKind, ...]] = (
    AlertKind.report_missing,
    AlertKind.returned,
    AlertKind.report_due,
    AlertKind.stale,
    AlertKind.kpi_jump,
    AlertKind.co_lead_disagreement,
    AlertKind.target_overdue,
    AlertKind.worsened,
)
KIND_LABELS: Final[dict[Lang, dict[str, str]]] = {
    "ja": {
        "report_missing": "報告未提出",
        "returned": "差戻し",
        "report_due": "報告期限間近",
        "stale": "報告途絶",
        "kpi_jump": "実績値の急変",
        "co_lead_disagreement": "共管省庁間の評価不一致",
        "target_overdue": "目標期限超過",
        "worsened": "状況悪化",
    },
    "en": {
        "report_missing": "Report missing",
        "returned": "Returned",
        "report_due": "Report due",
        "stale": "Gone silent",
        "kpi_jump": "KPI jump",
        "co_lead_disagreement": "Co-leads disagree",
        "target_overdue": "Target overdue",
        "worsened": "Worsened",
    },
}
PANEL_TEXT: Final[dict[Lang, dict[str, str]]] = {
    "ja": {
        "title": "対応が必要なこと",
        "all_agencies": "すべての府省庁（事務局）",
        "open": "未対応",
        "resolved": "解消済み（最近）",
        "none_open": "対応が必要なアラートはありません。",
        "none_resolved": "最近解消されたアラートはありません。",
        "kind": "種類",
        "measure": "施策",
        "quarter": "四半期",
        "since": "発生",
        "resolved_at": "解消",
        "what": "対応内容",
        "show": "表示",
        "more": "件中 {shown} 件を表示",
    },
    "en": {
        "title": "What needs doing",
        "all_agencies": "All agencies (secretariat)",
        "open": "Open",
        "resolved": "Resolved lately",
        "none_open": "Nothing needs doing.",
        "none_resolved": "Nothing was resolved lately.",
        "kind": "Kind",
        "measure": "Measure",
        "quarter": "Quarter",
        "since": "Raised",
        "resolved_at": "Resolved",
        "what": "What to do",
        "show": "Show",
        "more": "showing {shown} of",
    },
}
OPEN_SHOWN = 500
RESOLVED_SHOWN = 20


def _order(alert: AlertEvent) -> tuple[int, str, str]:
    return (KIND_ORDER.index(alert.kind), alert.measure_id or "", alert.alert_id)


def panel_context(engine: Engine, *, agency: str | None, lang: Lang) -> dict[str, Any]:
    agencies = [agency] if agency else None
    raised = alert_list(engine, agencies=agencies, kind=None, state="raised", limit=OPEN_SHOWN, offset=0)
    resolved = alert_list(engine, agencies=agencies, kind=None, state="resolved", limit=RESOLVED_SHOWN, offset=0)
    counts = Counter(a.kind.value for a in raised.items)
    return {
        "lang": lang,
        "t": TEXT[lang],
        "p": PANEL_TEXT[lang],
        "kind_labels": KIND_LABELS[lang],
        "kinds": [k.value for k in KIND_ORDER],
        "agency": agency,
        "agencies": AGENCIES,
        "open": sorted(raised.items, key=_order),
        "open_total": raised.total,
        "resolved": resolved.items,
        "counts": counts,
        "lang_toggle": "/dashboard/alerts?"
        + "&".join(part for part in (f"agency={agency}" if agency else "", "" if lang == "en" else "lang=en") if part),
    }


@router.get("/dashboard/alerts", response_class=Response)
def alerts_panel(request: Request, principal: AlertReader) -> Response:
    """Per agency, the alerts still raised (what to do, by when) and those resolved lately (HTML): an agency's
    own, the secretariat's of every agency (the rules of `GET /alerts`)."""
    lang_text = request.query_params.get("lang", "ja")
    lang: Lang = "en" if lang_text == "en" else "ja"
    if lang_text not in LANGS:
        return _error(request, None, 400, f"lang must be ja or en, not {lang_text!r}")
    agency = request.query_params.get("agency", "").strip() or None
    if agency is not None and not is_agency(agency):
        return _error(request, None, 400, f"unknown agency code: {agency!r}")
    agency = access.alerts_owner(principal, agency)
    engine: Engine = request.app.state.service.engine
    context = panel_context(engine, agency=agency, lang=lang)
    return render(request, "alerts.html", {**context, "state": None})
