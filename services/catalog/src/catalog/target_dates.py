"""Dates in a target's text: which mentions are deadlines, the day each covers, and how approximate it is.

Everything here reads the *plain* form of a target (`target_plain`): NFKC (full-width digits and ％ become
ASCII), 令和/平成 years as western years, the plan's relative years spelled out from its adoption on
2024-06-21 (本年度/今年度 → 2024年度, 来年度 → 2025年度, 今夏 → 2024年夏, a bare 年度末 → 2024年度末).

A date mention covers a period (DESIGN.md "Periods"): ``2024年度`` FY2024 (2024-04-01…2025-03-31),
``2024年度末`` its last day, ``2025年３月`` the calendar month, ``2025年`` the calendar year, ``2024年夏``
June–August, ``2025年通常国会`` the ordinary Diet session (convened in January for 150 days: January–June).
As a deadline it means the period's last day.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Final

from contracts.catalog import PLAN_ADOPTED
from contracts.periods import fiscal_year_end, fiscal_year_of

_YEAR = r"(?<![\d.,])(?P<year>(?:19|20)\d{2})\s*年"
DATE: Final = re.compile(
    r"(?P<until>[~〜]\s*)?" + _YEAR + r"(?:(?P<fiscal>度)|(?P<month>1[0-2]|0?[1-9])\s*月"
    r"(?:\s*(?P<day>[1-3]?\d)\s*日)?|(?P<season>[春夏秋冬])|(?P<decade>代)|(?P<diet>の?通常国会))?"
    r"(?P<part>末|中|内|頃)?"
)
_ERA = re.compile(r"(令和|平成)\s*(\d+|元)\s*年")
_ERA_OFFSET = {"令和": 2018, "平成": 1988}
_PLAN_FY = fiscal_year_of(PLAN_ADOPTED)
_RELATIVE = (
    (re.compile(r"[本今]年度"), f"{_PLAN_FY}年度"),
    (re.compile(r"来年度"), f"{_PLAN_FY + 1}年度"),
    (re.compile(r"[本今]年?([春夏秋冬])"), rf"{PLAN_ADOPTED.year}年\1"),
)
# A bare 年度末 is the end of the plan's year; not 2025 年度末, 毎年度末, 集計年度末 (the year counted), ….
_BARE_YEAR_END = re.compile(r"(?<![\d毎各同前翌当計])(?<![\d]\s)年度末")
_REFERENCE = re.compile(r"[(（]参考.*?(?=目標|$)")
_FOOTNOTE = re.compile(r"[(（]※[)）](?![)）]).*$")
_CITATION = re.compile(r"[^、。()（）\s]{0,16}(?:閣議|会議|総理|本部)決定")
_APPROXIMATE = re.compile(r"[^、。,]{0,20}?(?P<marker>目途|目処|めど|頃)")
_START_MARKERS = ("以降", "から", "より", "~", "〜")
# ``2025年４月からの運用開始``: the start itself is what the target aims at.
_AIMED_START = re.compile(r"から(?:の)?[^、。]{0,8}?開始")
# ``2024年度の高度利用者数を基に``, ``2023年度の運用等経費と比較して``: a reference, not a deadline.
_REFERENCE_WORDS = re.compile(r"を基に|をもとに|と比較|見込")
# ``時点の``/``時点での`` (a reference point) but not ``時点で`` (by then) or ``時点まで``.
_BASELINE_POINT = re.compile(r"時点(?:の|での|における|に)")
# ``2025年度入所申請``: a fiscal year naming an intake cohort, not a period to meet.
_COHORT = re.compile(r"(?:入所|入学|入社|採用)")
_CLAUSE_END = re.compile(r"[、。,]")
_SEASON_MONTHS = {"春": (3, 5), "夏": (6, 8), "秋": (9, 11), "冬": (12, 14)}
_SEASON_NAMES = {"春": "spring, March–May", "夏": "summer, June–August", "秋": "autumn, September–November",
                 "冬": "winter, December–February"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Deadline:
    """A date mention read as a deadline: the last day it covers and what else the text says of it."""

    due: date
    approximate: bool
    #: The period the mention names, when it names one (a month, a season, a year, a Diet session).
    period: tuple[date, date] | None
    #: How an approximate mention was read, in words.
    note: str | None
    start: int
    end: int

    @property
    def due_range(self) -> tuple[date, date] | None:
        """The period an approximate deadline names; None for exact deadlines."""
        return self.period if self.approximate else None


def plain(text: str) -> str:
    """NFKC text with era years as western years; ①… become spaces so they never read as digits."""
    text = re.sub(r"[①-⑳]", " ", text)
    text = unicodedata.normalize("NFKC", text)
    return _ERA.sub(lambda m: f"{_ERA_OFFSET[m.group(1)] + (1 if m.group(2) == '元' else int(m.group(2)))}年", text)


def target_plain(text: str) -> str:
    """`plain`, with the plan's relative years (本年度, 今夏, a bare 年度末, …) written as years."""
    text = plain(text)
    for pattern, replacement in _RELATIVE:
        text = pattern.sub(replacement, text)
    return _BARE_YEAR_END.sub(f"{_PLAN_FY}年度末", text)


def without_notes(text: str) -> str:
    """The text with reference figures (（参考…）) and footnote bodies (（※）…) blanked out."""
    return mask(mask(text, _REFERENCE), _FOOTNOTE)


def reference_spans(text: str) -> list[tuple[int, int]]:
    """Where reference figures (（参考…）, up to a following 目標) stand in the text."""
    return [m.span() for m in _REFERENCE.finditer(text)]


def mask(text: str, pattern: re.Pattern[str]) -> str:
    """The text with every match of a pattern blanked out, positions kept."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def deadlines(masked: str) -> list[Deadline]:
    """Every date mention of a (notes-masked) plain text that reads as a deadline, in text order."""
    return [_deadline(masked, match) for match in DATE.finditer(masked) if _is_deadline(masked, match)]


def final_deadline(found: list[Deadline]) -> Deadline | None:
    """The latest deadline (the first one on ties)."""
    return max(found, key=lambda d: d.due) if found else None


def mention_end(match: re.Match[str]) -> date:
    """The last day a date mention covers (a fiscal year's end, a month's last day, …)."""
    return _period(match)[1]


def _is_deadline(text: str, match: re.Match[str]) -> bool:
    """Whether a date is a deadline rather than a start, a reference, a citation, a cohort or a decade."""
    after = text[match.end() :].lstrip()
    if match.group("decade"):
        return False
    if after.startswith(_START_MARKERS) and not match.group("until") and not _AIMED_START.match(after):
        return False
    if after.startswith("比") or _BASELINE_POINT.match(after) or _COHORT.match(after):
        return False
    # Up to the clause's end or the next date: a reference word further on qualifies that other date.
    ends = [m.start() for m in (_CLAUSE_END.search(after), DATE.search(after)) if m is not None]
    clause = after[: min(ends)] if ends else after
    if not after.startswith("まで") and _REFERENCE_WORDS.search(clause):
        return False
    return not _CITATION.match(after)


def _deadline(text: str, match: re.Match[str]) -> Deadline:
    start, end = _period(match)
    part = match.group("part")
    marked = _APPROXIMATE.match(text, match.end())
    mention = match.group(0).lstrip("~〜 ")
    note: str | None = None
    if match.group("diet"):
        note = (
            f"{mention}: the ordinary Diet session, convened in January for 150 days (to about June, unless extended)"
        )
    elif match.group("season"):
        note = f"{mention}: a season ({_SEASON_NAMES[match.group('season')]}), no day given"
    elif part == "頃" or (marked and marked.group("marker") == "頃"):
        note = f"{mention}頃: about this date" if part != "頃" else f"{mention}: about this date"
    elif marked:
        note = f"{text[match.start() : marked.end()].lstrip('~〜 ')}: a date the plan aims at, not a fixed deadline"
    names_period = part != "末" and not match.group("day")
    return Deadline(end, note is not None, (start, end) if names_period else None, note, match.start(), match.end())


def _period(match: re.Match[str]) -> tuple[date, date]:
    """The first and last day a date mention covers."""
    year = int(match.group("year"))
    if match.group("fiscal"):
        end = fiscal_year_end(year)
        return (end if match.group("part") == "末" else date(year, 4, 1)), end
    if match.group("season"):
        first_month, last_month = _SEASON_MONTHS[match.group("season")]
        return date(year, first_month, 1), _month_end(year + (last_month - 1) // 12, (last_month - 1) % 12 + 1)
    if match.group("diet"):
        return date(year, 1, 1), date(year, 6, 30)
    if match.group("month"):
        month = int(match.group("month"))
        last = _month_end(year, month)
        day = match.group("day")
        if day:
            exact = last.replace(day=min(int(day), last.day))
            return exact, exact
        return date(year, month, 1), last
    end = date(year, 12, 31)
    return (end if match.group("part") == "末" else date(year, 1, 1)), end


def _month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])
