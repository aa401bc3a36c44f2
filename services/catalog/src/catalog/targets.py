"""A target's numbers as the plan states them: the final value and deadline, milestones, baseline, direction.

Pure functions over one target's text; dates are read by `catalog.target_dates` (its docstring says how).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import date

from catalog.target_dates import (
    DATE,
    Deadline,
    deadlines,
    final_deadline,
    mask,
    mention_end,
    reference_spans,
    target_plain,
    without_notes,
)
from contracts.catalog import PLAN_ADOPTED, Baseline, DateRange, Direction, Milestone, Target

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_UNITS = (
    "% 割 倍 件 人 名 者 社 回 手続 団体 自治体 機関 参画機関 医療機関 法人 府省庁 校 "
    "都市 地域 分野 箇所 か所 か国 カ国 本 台 システム 業務システム 条項 補助金 火山 "
    "都道府県 領域 世帯 PV TB Tbps Gbps km2 km 円 時間 分 日 施設 事業 講座 プロジェクト"
).split()
_UNIT = "|".join(sorted(_UNITS, key=len, reverse=True))
_WITH_UNIT = rf"(?P<unit>[万億兆]?(?:{_UNIT})|[万億兆])"
_VALUE = re.compile(rf"(?<![A-Za-z0-9.\-])約?(?P<number>{_NUMBER})\s*{_WITH_UNIT}")
# A bare number closing the text or a parenthesis after ``：``/``数``, or the number a deadline reaches
# (``2026年度までに約17,000に拡充``).
_UNITLESS_VALUE = re.compile(
    rf"(?:(?<=[:：数])|(?<=までに))\s*約?(?P<number>{_NUMBER})\s*(?:以上|以下|程度|超)?\s*"
    r"(?=$|[()（）]|に(?:拡充|拡大|増加|する|引き上げ|達))"
)
_ZERO = re.compile(r"(?<=を)(?P<number>ゼロ)(?=に)")
_UNIT_DISPLAY = {"%": "％", "km2": "㎢"}
_RATIO_UNITS = ("%", "割")
_RELATIVE_UNITS = ("倍", "割")
_CLAUSE_END = re.compile(r"[、。,]")
_FINAL_PAREN = re.compile(r"[(（][^()（）]*[)）]\s*$")
_ADJACENT = re.compile(r"[\s:：,，、]*(?:以上|以下|程度|超|未満)?[\s:：,，、]*")
# A value followed by these is a change against a reference (３割を削減, 30%増), not a level to reach.
_CHANGE = re.compile(r"\s*(?:以上|以下)?\s*(?:を|の)?(?:コスト)?(?P<word>削減|減少?|増加?)")

_DECREASE = r"削減(?!額)|減少|低減|軽減|半減|縮減|縮小|抑制|短縮|なくし|なくす|ゼロ"
_INCREASE = r"増加|増大|向上|拡大|拡充|引き上げ|引上げ|倍増"
_DIRECTION_WORD = re.compile(rf"(?P<decrease>{_DECREASE})|(?P<increase>{_INCREASE})")
_TAIL = re.compile(rf"(?:{_DECREASE}|{_INCREASE})(?:させる|する|していく|ていく|を図る|を目指す|を進める)?$")
#: How far (characters) a direction word may stand from the value it qualifies.
_DIRECTION_REACH = 40

_DATED = rf"(?:{DATE.pattern})"
_BASE_FROM = re.compile(rf"{_DATED}\s*の\s*約?(?P<number>{_NUMBER})\s*{_WITH_UNIT}?\s*から")
_BASE_POINT = re.compile(rf"{_DATED}\s*時点(?:での|の)[^、。]*?約?(?P<number>{_NUMBER})\s*{_WITH_UNIT}")
_BASE_SURVEY = re.compile(rf"{_DATED}\s*の?調査(?:では|で|によると)[^。]*?(?P<number>{_NUMBER})\s*{_WITH_UNIT}")
_BASE_SERIES = re.compile(rf"{_DATED}\s*[:：]?\s*約?(?P<number>{_NUMBER})\s*{_WITH_UNIT}?(?=\s*[、,)）]|\s*$)")
_BARE_NUMBER = re.compile(rf"(?<![A-Za-z0-9.,])(?P<number>{_NUMBER})\s*{_WITH_UNIT}?(?![A-Za-z])")

_OPENERS = "(（「『［[＜<【"
_CLOSERS = ")）」』］]＞>】"
_DELIMITERS = "、。,，:："


@dataclass(frozen=True, slots=True)
class _Number:
    """A number the text states, with its unit as written."""

    value: float
    unit: str | None
    start: int
    end: int

    @property
    def display_unit(self) -> str | None:
        return _UNIT_DISPLAY.get(self.unit, self.unit) if self.unit else None


@dataclass(frozen=True, slots=True)
class _Start:
    """A baseline, and whether the text presents it as the point the target moves from."""

    baseline: Baseline
    moves_from: bool


def parse_target(index: int, text: str) -> Target:
    """One target with what its text states (nulls where it states none).

    Deadline (see `catalog.target_dates`): of the dates that read as deadlines (not starts ``から``/``以降``/
    ``～``, references ``比``/``時点の``/``を基に``, citations, cohorts, decades, nor anything in reference
    figures ``（参考…`` or a footnote body ``（※）…``), the latest is the due date. 目途/目処/めど/頃, a
    season or a Diet session make it approximate, with the period it names as `due_range`.

    Value: a number written with a unit (``80％``, ``500手続``, ``4回``), kept as written: ``100万人`` is
    value 100 with unit ``万人``, ``10.6億円`` is 10.6 ``億円``; ``%`` is reported as ``％``. A bare
    number after ``：`` or ``数`` closing the text or a parenthesis counts without unit, and so does the one a
    deadline reaches (``2026年度までに約17,000に拡充``); ``ゼロにする`` is 0. With a deadline, the value is the
    first number after it (a ％ or 割 in its clause first), else the last number before it when the date
    directly follows that number or sits in the closing parenthesis (``（80％ 2026年度）``); without a
    deadline, the first number. Numbers followed by ``から`` (baselines) or ``～`` (the lower end of a
    range) are skipped. A value followed by 削減/減/増 (``３割を削減``) or in 倍 is a change.

    Milestones are the other deadlines after the plan's adoption and before the due date, each with the first
    number of its clause. The baseline is the indicator's value at an earlier date (``2021年度の35.4%から``,
    ``（2020年度約22万件、…）``, ``（参考：2023年度 212件）``, ``時点での…約5,400億円``, ``調査では…49.9％``).
    The direction comes from a change's sign, a starting point or the dated values, else from the wording.
    """
    plain = target_plain(text)
    masked = without_notes(plain)
    found = deadlines(masked)
    final = final_deadline(found)
    candidates = _numbers(masked)
    chosen = _value_at(masked, candidates, final) if final else (candidates[0] if candidates else None)
    change = _change(masked, chosen)
    milestones = _milestones(plain, found, final, candidates)
    start = _baseline(plain)
    return Target(
        index=index,
        text=text,
        due_date=final.due if final else None,
        due_approximate=final.approximate if final else False,
        value=chosen.value if chosen else None,
        unit=chosen.display_unit if chosen else None,
        due_range=DateRange(start=final.due_range[0], end=final.due_range[1]) if final and final.due_range else None,
        due_note=final.note if final else None,
        baseline=start.baseline if start else None,
        direction=_direction(masked, chosen, change, start, milestones),
        value_is_change=change is not None,
        milestones=milestones,
    )


def _numbers(masked: str) -> list[_Number]:
    """The numbers a (notes-masked) text states as values, in text order, dates and starting points left out."""
    text = mask(masked, DATE)
    found = [m for m in _VALUE.finditer(text) if not text[m.end() :].lstrip().startswith(("から", "~", "〜"))]
    found += [*_UNITLESS_VALUE.finditer(text), *_ZERO.finditer(text)]
    numbers = [_number(m) for m in found]
    return sorted(numbers, key=lambda n: n.start)


def _number(match: re.Match[str]) -> _Number:
    written = match.group("number")
    value = 0.0 if written == "ゼロ" else float(written.replace(",", ""))
    return _Number(value, match.groupdict().get("unit"), match.start("number"), match.end())


def _value_at(masked: str, candidates: list[_Number], deadline: Deadline) -> _Number | None:
    """The value stated for a deadline: after it (a ratio in its clause first), else before it."""
    after = [n for n in candidates if n.start >= deadline.end]
    clause_end = _CLAUSE_END.search(masked, deadline.end)
    in_clause = [n for n in after if clause_end is None or n.start < clause_end.start()]
    ratios = [n for n in in_clause if n.unit in _RATIO_UNITS]
    if ratios or after:
        return (ratios or after)[0]
    before = [n for n in candidates if n.end <= deadline.start]
    if not before:
        return None
    # A value counts if the date is written right after it (80％ 2026年度) or the date is a closing
    # parenthesis that qualifies the whole target (1,400補助金でJグランツを利用（2024年度）).
    final_paren = _FINAL_PAREN.search(masked)
    closing = final_paren is not None and final_paren.start() < deadline.start
    return before[-1] if closing or _ADJACENT.fullmatch(masked, before[-1].end, deadline.start) else None


def _change(masked: str, value: _Number | None) -> str | None:
    """The word that makes a value a change (削減, 増, 倍), or None when the value is a level."""
    if value is None:
        return None
    if value.unit == "倍":
        return "倍"
    found = _CHANGE.match(masked, value.end)
    return found.group("word") if found else None


def _milestones(
    plain: str, found: list[Deadline], final: Deadline | None, candidates: list[_Number]
) -> list[Milestone]:
    """Deadlines after the plan's adoption and before the final one, each with the value of its clause."""
    if final is None:
        return []
    out: dict[date, Milestone] = {}
    for deadline in found:
        if not PLAN_ADOPTED < deadline.due < final.due or deadline.due in out:
            continue
        if re.match(r"\s*・\s*" + DATE.pattern, plain[deadline.end :]):
            continue  # 2024年度・2025年度: one period, not a milestone and a deadline
        value = _clause_value(plain, deadline, candidates)
        out[deadline.due] = Milestone(
            due_date=deadline.due,
            due_approximate=deadline.approximate,
            value=value.value if value else None,
            unit=value.display_unit if value else None,
            text=_clause(plain, deadline.start, value.end if value else deadline.end, date_only=value is None),
        )
    return sorted(out.values(), key=lambda m: m.due_date)


def _clause_value(plain: str, deadline: Deadline, candidates: list[_Number]) -> _Number | None:
    """The first value after a date, before its clause ends or another date begins."""
    stop = len(plain)
    for pattern in (r"[、。,()（）]", DATE.pattern):
        found = re.compile(pattern).search(plain, deadline.end)
        if found:
            stop = min(stop, found.start())
    return next((n for n in candidates if deadline.end <= n.start < stop), None)


def _clause(plain: str, start: int, end: int, *, date_only: bool) -> str:
    """The clause around [start, end): out to the nearest delimiter outside brackets on either side.

    A date without a value that only opens its clause (``2024年度末までに、…``) takes the following one.
    """
    left, right = _clause_edge(plain, start, -1), _clause_edge(plain, end, 1)
    opens = date_only and not plain[left:start].strip() and plain[end:right].strip() in ("", "に", "まで", "までに")
    if opens and right < len(plain):
        right = _clause_edge(plain, right + 1, 1)
    return plain[left:right].strip()


def _clause_edge(plain: str, position: int, step: int) -> int:
    """Where the clause ends walking from `position` by `step` (-1 left, 1 right), skipping whole brackets."""
    inward, outward = (_CLOSERS, _OPENERS) if step < 0 else (_OPENERS, _CLOSERS)
    depth = 0
    while (0 < position) if step < 0 else (position < len(plain)):
        char = plain[position - 1 if step < 0 else position]
        if char in inward:
            depth += 1
        elif char in outward or (char in _DELIMITERS and depth == 0):
            if depth == 0:
                break
            depth -= 1
        position += step
    return position


def _baseline(plain: str) -> _Start | None:
    """The first starting value the text states for its indicator (rules in parse_target)."""
    starts: list[tuple[int, _Start]] = []
    references = reference_spans(plain)
    for pattern, moves_from in ((_BASE_FROM, True), (_BASE_POINT, False), (_BASE_SURVEY, False)):
        for m in pattern.finditer(plain):
            unit = m.group("unit")
            if unit not in _RELATIVE_UNITS:
                starts.append(
                    (m.start(), _Start(_baseline_of(m, float(m.group("number").replace(",", ""))), moves_from))
                )
    for m in _BASE_SERIES.finditer(plain):
        if mention_end(m) < PLAN_ADOPTED and m.group("unit") not in _RELATIVE_UNITS:
            in_reference = any(a <= m.start() < b for a, b in references)
            value = float(m.group("number").replace(",", ""))
            starts.append((m.start(), _Start(_baseline_of(m, value), not in_reference)))
    for a, b in references:
        if not any(a <= position < b for position, _ in starts):
            summed = _reference_sum(plain[a:b])
            if summed is not None:
                starts.append((a, _Start(summed, False)))
    return min(starts, key=lambda s: s[0])[1] if starts else None


def _baseline_of(match: re.Match[str], value: float) -> Baseline:
    unit = match.group("unit")
    return Baseline(value=value, as_of=mention_end(match), unit=_UNIT_DISPLAY.get(unit, unit) if unit else None)


def _reference_sum(reference: str) -> Baseline | None:
    """Reference figures listing parts of the indicator at one date (国管理河川 448 … （2024年３月）): their sum."""
    dates = list(DATE.finditer(reference))
    if len(dates) != 1:
        return None
    parts = list(_BARE_NUMBER.finditer(mask(reference, DATE)))
    if not parts:
        return None
    units = {m.group("unit") for m in parts}
    unit = units.pop() if len(units) == 1 else None
    return Baseline(
        value=sum(float(m.group("number").replace(",", "")) for m in parts),
        as_of=mention_end(dates[0]),
        unit=_UNIT_DISPLAY.get(unit, unit) if unit else None,
    )


def _direction(
    masked: str, value: _Number | None, change: str | None, start: _Start | None, milestones: list[Milestone]
) -> Direction | None:
    """Which way the measured quantity moves: a change's sign, the stated path, else the wording."""
    if value is not None and change is not None:
        if change == "倍":
            return "increase" if value.value > 1 else "decrease"
        return "decrease" if change.startswith(("削", "減")) else "increase"
    if value is not None:
        path = [m.value for m in milestones if m.value is not None and m.unit == value.display_unit]
        if start is not None and start.moves_from and start.baseline.unit in (None, value.display_unit):
            path.insert(0, start.baseline.value)
        path.append(value.value)
        if len(path) >= 2 and all(a < b for a, b in itertools.pairwise(path)):
            return "increase"
        if len(path) >= 2 and all(a > b for a, b in itertools.pairwise(path)):
            return "decrease"
        return _word_near(masked, value)
    return _tail_direction(masked)


def _word_near(masked: str, value: _Number) -> Direction | None:
    """The direction word nearest the value in its sentence, within reach."""
    sentence_start = masked.rfind("。", 0, value.start) + 1
    sentence_end = masked.find("。", value.end)
    sentence_end = len(masked) if sentence_end < 0 else sentence_end
    best: tuple[int, Direction] | None = None
    for m in _DIRECTION_WORD.finditer(masked, sentence_start, sentence_end):
        distance = value.start - m.end() if m.end() <= value.start else m.start() - value.end
        if distance <= _DIRECTION_REACH and (best is None or distance < best[0]):
            best = (distance, "decrease" if m.group("decrease") else "increase")
    return best[1] if best else None


def _tail_direction(masked: str) -> Direction | None:
    """For a target without a value: the change it names at its end (読取回数の削減, 半減させる), if any.

    A closing parenthesis whose clauses each end in a change (（小：レベル３以下の減少、中：…の減少）) names the
    indicators, and speaks for them.
    """
    text = masked.strip().rstrip("。").strip()
    while text.endswith((")", "）")):
        opening = _matching_opener(text)
        if opening is None:
            break
        clauses = [_without_brackets(c).strip() for c in re.split(r"[、,]", text[opening + 1 : -1])]
        named = {_tail_word(c) for c in clauses}
        if len(named) == 1 and None not in named:
            return named.pop()
        text = text[:opening].rstrip()
    return _tail_word(text)


def _tail_word(text: str) -> Direction | None:
    found = _TAIL.search(text)
    if found is None:
        return None
    return "decrease" if re.match(_DECREASE, found.group(0)) else "increase"


def _without_brackets(text: str) -> str:
    return re.sub(r"[(（][^()（）]*[)）]", "", text)


def _matching_opener(text: str) -> int | None:
    """Where the bracket that closes `text` opens."""
    depth = 0
    for position in range(len(text) - 1, -1, -1):
        if text[position] in ")）":
            depth += 1
        elif text[position] in "(（":
            depth -= 1
            if depth == 0:
                return position
    return None
