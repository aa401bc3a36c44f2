"""One spreadsheet cell → one field of a status report, read as clerks write it.

Japanese or English column headers (施策番号/measure_id, 年度/fiscal_year, 四半期/quarter, 状況/status,
進捗率/progress, 備考/note, 報告日時/reported_at, 報告者/reporter, KPI/kpis, event_id); Japanese status
labels (順調, 遅延, 完了 …); full-width digits and the like (matched after NFKC); fiscal years as 2024,
2024年度 or 令和6年度; quarters as 3, Q3 or 第3四半期. Each parser raises `CellError` naming the field.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime

from pydantic import ValidationError

from contracts.events import KpiObservation, Status
from contracts.periods import TOKYO

# Column headers, matched after NFKC, case folding and removing spaces, brackets and underscores.
HEADERS: dict[str, tuple[str, ...]] = {
    "event_id": ("event_id", "eventid", "イベントid", "報告id", "id"),
    "measure_id": ("measure_id", "measure", "measureid", "施策番号", "施策id", "施策no", "施策", "no", "番号"),
    "agency": ("agency", "省庁", "主担当省庁", "報告省庁", "府省庁"),
    "fiscal_year": ("fiscal_year", "fiscalyear", "fy", "年度"),
    "quarter": ("quarter", "q", "四半期"),
    "status": ("status", "状況", "進捗状況", "ステータス", "状態"),
    "progress": ("progress", "進捗率", "進捗", "進捗(%)", "進捗率(%)", "達成率"),
    "note": ("note", "備考", "コメント", "メモ", "特記事項"),
    "reported_at": ("reported_at", "reportedat", "報告日時", "報告日", "報告時刻"),
    "reporter": ("reporter", "報告者", "担当者", "担当"),
    "kpis": ("kpis", "kpi", "指標", "kpi実績"),
}
#: Headers of columns that inform the clerk and are not part of the report (the template's reference columns):
#: read past without a word.
INFORMATIONAL_HEADERS: tuple[str, ...] = (
    "施策名", "title", "目標", "targets", "前期の状況", "previous_status", "前期の進捗率", "previous_progress",
    "報告期限", "deadline",
)  # fmt: skip

#: The label of each status in Japanese: what the template's drop-down offers (the dashboard's words).
STATUS_LABELS_JA: dict[Status, str] = {
    Status.not_started: "未着手",
    Status.on_track: "順調",
    Status.at_risk: "要注意",
    Status.delayed: "遅延",
    Status.completed: "完了",
    Status.suspended: "中断",
}
#: Japanese status labels (after NFKC) and the contract's codes: the drop-down's labels and their synonyms.
STATUS_LABELS: dict[str, Status] = {
    **{label: status for status, label in STATUS_LABELS_JA.items()},
    "概ね順調": Status.on_track,
    "予定通り": Status.on_track,
    "遅れ": Status.delayed,
    "遅延あり": Status.delayed,
    "達成": Status.completed,
    "終了": Status.completed,
    "着手前": Status.not_started,
    "懸念": Status.at_risk,
    "懸念あり": Status.at_risk,
    "リスクあり": Status.at_risk,
    "課題あり": Status.at_risk,
    "休止": Status.suspended,
    "停止": Status.suspended,
}
_ERAS = {"令和": 2018, "平成": 1988, "r": 2018, "h": 1988}


class CellError(ValueError):
    """A cell that cannot be read as its field: `field` is the report's field, `message` what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


def header_key(text: str) -> str:
    key = nfkc(text).casefold()
    return re.sub(r"[\s_\[\]【】・]", "", key)


HEADER_INDEX = {header_key(alias): name for name, aliases in HEADERS.items() for alias in aliases}
INFORMATIONAL_KEYS = frozenset(header_key(h) for h in INFORMATIONAL_HEADERS)


def status_choices() -> str:
    """The words a status cell may hold, for messages."""
    return ", ".join(STATUS_LABELS_JA.values()) + " (or " + ", ".join(s.value for s in Status) + ")"


def parse_measure_id(text: str) -> str:
    value = nfkc(text).replace("―", "-").replace("‐", "-").replace("ー", "-")
    match = re.fullmatch(r"(?:\[?No\.?\s*)?([1-6])\s*-\s*0*(\d{1,3})\]?", value, flags=re.IGNORECASE)
    if not match:
        raise CellError("measure_id", f"{text!r} is not a measure number like 1-25")
    return f"{match.group(1)}-{int(match.group(2))}"


def parse_fiscal_year(text: str) -> int:
    value = nfkc(text).casefold().replace(" ", "")
    match = re.fullmatch(r"(?:fy)?(\d{4})(?:年度?)?", value)
    if match:
        return int(match.group(1))
    match = re.fullmatch(r"(令和|平成|r|h)(\d{1,2}|元)(?:年度?)?", value)
    if match:
        year = 1 if match.group(2) == "元" else int(match.group(2))
        return _ERAS[match.group(1)] + year
    raise CellError("fiscal_year", f"{text!r} is not a fiscal year like 2024, 2024年度 or 令和6年度")


def parse_quarter(text: str) -> int:
    value = nfkc(text).casefold().replace(" ", "")
    match = re.fullmatch(r"(?:q|第)?([1-4])(?:q|四半期)?", value)
    if not match:
        raise CellError("quarter", f"{text!r} is not a quarter 1–4 (also Q3, 第3四半期)")
    return int(match.group(1))


def parse_status(text: str) -> Status:
    value = nfkc(text)
    if value.casefold() in Status.__members__:
        return Status(value.casefold())
    label = STATUS_LABELS.get(value.replace(" ", ""))
    if label is None:
        raise CellError("status", f"{text!r} is not a status; use one of {status_choices()}")
    return label


def parse_progress(text: str) -> float:
    value = nfkc(text).rstrip("%").strip()
    try:
        return float(value)
    except ValueError:
        raise CellError("progress", f"{text!r} is not a percentage 0–100") from None


def parse_reported_at(text: str) -> datetime:
    """RFC 3339; a time without an offset is Japan time (as clerks write it); a bare date is 00:00 JST."""
    value = nfkc(text).replace("/", "-")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise CellError(
                "reported_at", f"{text!r} is not a time like 2024-12-20T17:00:00+09:00 or 2024/12/20 17:00"
            ) from None
        moment = datetime(day.year, day.month, day.day)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=TOKYO)


def parse_kpi(text: str) -> KpiObservation:
    """`TARGET=VALUE@DATE`, e.g. `0=62.5@2025-03-31` (target = the measure's target index, 0-based)."""
    value = nfkc(text)
    match = re.fullmatch(r"(\d+)\s*=\s*([-+0-9.eE]+)\s*%?\s*@\s*(\d{4}-\d{2}-\d{2})", value.replace("/", "-"))
    if not match:
        raise CellError("kpis", f"{text!r} is not TARGET=VALUE@DATE (for example 0=62.5@2025-03-31)")
    try:
        return KpiObservation(target=int(match.group(1)), value=float(match.group(2)), as_of=match.group(3))
    except ValidationError as e:
        raise CellError("kpis", f"{text!r}: {e.errors()[0]['msg']}") from None


def parse_kpis(text: str) -> list[KpiObservation]:
    return [parse_kpi(part) for part in re.split(r"[;；\n]", text) if part.strip()]
