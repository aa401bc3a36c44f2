"""What one target's text states beyond its final value and date: ranges, baselines, direction, milestones."""

from __future__ import annotations

from datetime import date

import pytest

from catalog.plan import parse_target
from contracts.catalog import Baseline, DateRange


@pytest.mark.parametrize(
    ("text", "due", "period"),
    [
        ("2025年通常国会での法改正を目指す", date(2025, 6, 30), (date(2025, 1, 1), date(2025, 6, 30))),
        ("2025年冬までに整備", date(2026, 2, 28), (date(2025, 12, 1), date(2026, 2, 28))),
        ("令和７年度を目途に実現", date(2026, 3, 31), (date(2025, 4, 1), date(2026, 3, 31))),
        ("2030年頃に実現", date(2030, 12, 31), (date(2030, 1, 1), date(2030, 12, 31))),
        ("2024年度末頃に開始", date(2025, 3, 31), None),  # about one day: no period
        ("今夏目途に設定予定", date(2024, 8, 31), (date(2024, 6, 1), date(2024, 8, 31))),
        ("年度末を目途に50％", date(2025, 3, 31), None),  # a bare 年度末 is the plan's year's end
    ],
)
def test_approximate_deadlines_say_what_they_name(text: str, due: date, period: tuple[date, date] | None) -> None:
    target = parse_target(0, text)

    assert (target.due_date, target.due_approximate) == (due, True)
    assert target.due_range == (None if period is None else DateRange(start=period[0], end=period[1]))
    assert target.due_note is not None


@pytest.mark.parametrize(
    ("text", "due"),
    [
        ("本年度中に研究開発を開始する。", date(2025, 3, 31)),
        ("来年度以降本格的な事業化の開始を目指す", None),
        ("2025 年度末までにオンライン利用率 60％", date(2026, 3, 31)),  # a spaced year is not a bare 年度末
        ("論文の発表数（集計年度末までに登録された、年間250件以上）", None),
        ("2024年度中に整備を行い、2025年４月からの運用開始を目指す。", date(2025, 4, 30)),
        ("2025年から2027年にかけて需要が急増する見込みであり、体制を整備する。", None),
        ("件数（2024年度の利用者数を基に2025年度から設定）", None),
        ("2025年度入所申請に向けて標準化を行う", None),
    ],
)
def test_which_dates_are_deadlines(text: str, due: date | None) -> None:
    target = parse_target(0, text)

    assert (target.due_date, target.due_approximate, target.due_range, target.due_note) == (due, False, None, None)


@pytest.mark.parametrize(
    ("text", "baseline", "direction"),
    [
        ("2025年度には、2021年度の35.4%から引き上げ45.4％を目指す。", Baseline(value=35.4, as_of=date(2022, 3, 31), unit="％"), "increase"),
        ("2025年度には、2021年度の60.2％から50％に下げる", Baseline(value=60.2, as_of=date(2022, 3, 31), unit="％"), "decrease"),
        ("データ数（2020年度約22万件、2027年度約300万件）", Baseline(value=22, as_of=date(2021, 3, 31), unit="万件"), "increase"),
        ("開催件数：2024年度 250件（参考：2023年度 212件）", Baseline(value=212, as_of=date(2024, 3, 31), unit="件"), None),
        ("箇所数（参考：実績値）A 448 B 1,500 （2024年３月）※目標：2026年度までに約17,000に拡充予定", Baseline(value=1948, as_of=date(2024, 3, 31)), "increase"),
        ("2024年12月２日からの発行終了", None, None),  # a day, not a value
        ("データ量：2026年度末までに６TB（2023年時点の17倍）", None, None),  # a ratio, not a level
    ],
)  # fmt: skip
def test_baselines_and_the_direction_they_give(text: str, baseline: Baseline | None, direction: str | None) -> None:
    target = parse_target(0, text)

    assert (target.baseline, target.direction) == (baseline, direction)


@pytest.mark.parametrize(
    ("text", "value", "unit", "change", "direction"),
    [
        ("運用等経費の削減（2025年度において2020年度比で３割を削減）", 3, "割", True, "decrease"),
        ("事業者数を2025年度末までに2023年度末比で２倍以上を目指す。", 2, "倍", True, "increase"),
        ("参加者の増加（前年度比30％増）", 30, "％", True, "increase"),
        ("基盤経費削減額 2024年度末10.6億円", 10.6, "億円", False, None),  # an amount saved: no direction stated
        ("登録者数を5万人に増加させる。", 5, "万人", False, "increase"),
        ("交換枚数をゼロにすることを目指す。", 0, None, False, "decrease"),
        ("利用率（80％ 2026年度）", 80, "％", False, None),
        ("読取回数の削減", None, None, False, "decrease"),
        ("団体を2025年度中に半減させる。", None, None, False, "decrease"),
        ("能力向上（小：レベル３以下の減少、中：レベル５以下の減少（※））", None, None, False, "decrease"),
        ("枠組みの発展（2024年度中に日EU間拡大協議の終了）", None, None, False, None),  # 拡大協議 is a name
        ("利用者の利便性の向上を図りつつ、方法を検討する。", None, None, False, None),
    ],
)
def test_values_changes_and_direction(
    text: str, value: float | None, unit: str | None, change: bool, direction: str | None
) -> None:
    target = parse_target(0, text)

    assert (target.value, target.unit, target.value_is_change, target.direction) == (value, unit, change, direction)


def test_milestones_are_the_earlier_deadlines_with_their_values() -> None:
    cases = parse_target(0, "手続の件数：2024年度末 786件、2025年度末 1,160件")
    data = parse_target(0, "データ数（2020年度約22万件、2025年度約150万件、2027年度約300万件）")
    diet = parse_target(0, "2024年夏までに調査を行い、2025年通常国会での改正を目指す。")
    steps = parse_target(0, "2024年度末までに、提供基盤を整備し、2025年度末までにリモートアクセス方式を導入")

    assert [(m.due_date, m.value, m.unit, m.text) for m in cases.milestones] == [
        (date(2025, 3, 31), 786, "件", "2024年度末 786件")
    ]
    assert (cases.due_date, cases.value) == (date(2026, 3, 31), 1160)
    # 2020 is before the plan: a baseline, not a milestone.
    assert [(m.due_date, m.value, m.unit) for m in data.milestones] == [(date(2026, 3, 31), 150, "万件")]
    assert [(m.due_date, m.due_approximate, m.value) for m in diet.milestones] == [(date(2024, 8, 31), True, None)]
    assert [m.text for m in diet.milestones + steps.milestones] == [
        "2024年夏までに調査を行い",
        "2024年度末までに、提供基盤を整備し",  # a date that only opens its clause takes the next one
    ]


@pytest.mark.parametrize(
    "text",
    [
        "2024年度・2025年度：機能拡充",  # one period
        "2024年５月の開始を受け、2026年10月に設置する",  # before the plan's adoption: a fact it cites
        "2025年度に調査研究が実施される予定であることから、2025年度末までに検討する",  # same day as the due date
    ],
)
def test_what_is_not_a_milestone(text: str) -> None:
    assert parse_target(0, text).milestones == []
