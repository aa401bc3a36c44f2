"""The plan importer against the bundled document and against the layouts that make it hard."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import pytest

from catalog.plan import PlanFormatError, bundled_plan_text, parse_plan, parse_target, search_key
from contracts.agencies import AGENCY_INFO, Agency
from contracts.catalog import SECTION_TITLES, Measure


@pytest.fixture(scope="module")
def text() -> str:
    return bundled_plan_text()


@pytest.fixture(scope="module")
def measures(text: str) -> dict[str, Measure]:
    return {measure.id: measure for measure in parse_plan(text)}


def raw_leads(text: str) -> dict[str, list[str]]:
    """Measure id → lead names, read straight from the text without the parser."""
    leads: dict[str, list[str]] = {}
    for block in text.split("○[No.")[1:]:
        measure_id = block.split("]", 1)[0]
        tail = re.split(r"\n\s*[０-９]．", block.split("主担当省庁：", 1)[1])[0]
        lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.strip().isdigit()]
        leads[measure_id] = "".join(lines).split("、")
    return leads


# --- acceptance: the whole document ---------------------------------------------------------------


def test_all_320_measures_in_document_order(text: str) -> None:
    parsed = parse_plan(text)

    assert len(parsed) == 320
    assert Counter(m.section for m in parsed) == {1: 156, 2: 72, 3: 33, 4: 27, 5: 15, 6: 17}
    expected_ids = [
        f"{s}-{n}" for s, total in [(1, 156), (2, 72), (3, 33), (4, 27), (5, 15), (6, 17)] for n in range(1, total + 1)
    ]
    assert [m.id for m in parsed] == expected_ids
    assert all(m.section_title == SECTION_TITLES[m.section] for m in parsed)


def test_lead_agency_counts_match_an_independent_count(text: str, measures: dict[str, Measure]) -> None:
    expected = Counter(name for names in raw_leads(text).values() for name in names)
    parsed = Counter(AGENCY_INFO[agency].name_ja for m in measures.values() for agency in m.lead_agencies)

    assert parsed == expected
    assert (parsed["デジタル庁"], parsed["総務省"], parsed["厚生労働省"]) == (114, 59, 27)


def test_multi_lead_measures_keep_all_leads_in_order(text: str, measures: dict[str, Measure]) -> None:
    multi = {measure_id: names for measure_id, names in raw_leads(text).items() if len(names) > 1}

    assert len(multi) == 18
    for measure_id, names in multi.items():
        assert [AGENCY_INFO[a].name_ja for a in measures[measure_id].lead_agencies] == names
    assert measures["4-17"].lead_agencies == [Agency.cas, Agency.digital, Agency.mic, Agency.meti]
    assert measures["4-13"].lead_agencies == [Agency.digital, Agency.nisc]


def test_etax_target_of_measure_1_25(measures: dict[str, Measure]) -> None:
    (target,) = measures["1-25"].targets

    assert target.text == "e-Taxの利用状況（所得税の申告手続）（80％ 2026年度）"
    assert (target.value, target.unit, target.due_date) == (80, "％", date(2027, 3, 31))
    assert target.due_approximate is False


def test_every_measure_has_title_bullets_and_leads(measures: dict[str, Measure]) -> None:
    for measure in measures.values():
        assert measure.title
        assert measure.description, measure.id
        assert measure.lead_agencies, measure.id
        assert [t.index for t in measure.targets] == list(range(len(measure.targets)))
        assert not any("主担当省庁" in t.text or "具体的な目標：" in t.text for t in measure.targets)


# --- hard cases from the document --------------------------------------------------------------------


def test_wrapped_titles_are_joined_keeping_full_width_and_ascii_spaces(measures: dict[str, Measure]) -> None:
    assert measures["1-4"].title == "マイナポータルの継続的改善に関する具体的な施策「年末調整・確定申告の利便性向上」"
    assert measures["1-113"].title == "国土交通分野のデータ整備・活用・オープンデータ化プロジェクト（Project LINKS）"
    assert measures["1-141"].title.endswith("データの整備･拡充")


def test_page_numbers_inside_a_measure_are_dropped(measures: dict[str, Measure]) -> None:
    # "41" stands alone between the two targets of 1-9; "98" interrupts a bullet of 3-20.
    assert [t.text for t in measures["1-9"].targets] == [
        "新たな認定クラウド企業の参画",
        "データポータビリティにおける対象調書の拡大",
    ]
    assert "2024年度から地方における" in measures["3-20"].description[0]


def test_several_targets_with_a_wrapped_one(measures: dict[str, Measure]) -> None:
    targets = measures["1-86"].targets

    assert len(targets) == 5
    assert targets[2].text == "e-Taxの利用状況（法人税の添付書類を含めた申告手続）（80％ 2026年度）"
    assert [(t.value, t.due_date) for t in targets][-1] == (40, date(2026, 3, 31))


def test_a_dash_means_no_target_even_with_a_note_after_it(measures: dict[str, Measure]) -> None:
    assert measures["2-18"].targets == []
    assert [m for m in measures.values() if not m.targets] == [
        measures[i] for i in ("2-18", "4-12", "4-15", "4-16", "5-15")
    ]


def test_numbered_targets_keep_their_lines_together(measures: dict[str, Measure]) -> None:
    first, second = measures["1-48"].targets

    assert first.text.startswith("①ガバクラ移行予定業務システム数")
    assert first.text.endswith("地方10,500）")
    assert second.text.startswith("②ガバメントクラウド上での基盤経費削減額（各府省庁のシステム）2024年度末10.6億円")
    assert (second.value, second.unit, second.due_date) == (10.6, "億円", date(2025, 3, 31))


def test_reference_figures_stay_with_their_target(measures: dict[str, Measure]) -> None:
    (target,) = measures["2-40"].targets

    assert "（参考：実績値）" in target.text
    assert target.text.endswith("※目標：2026年度までに約17,000に拡充予定")
    assert target.due_date == date(2027, 3, 31)
    assert len(measures["2-12"].targets) == 2
    assert measures["2-12"].targets[1].due_date is None  # 2023年５月 is the reference data's month


def test_headings_and_qualifiers_join_the_target_they_introduce(measures: dict[str, Measure]) -> None:
    assert measures["1-15"].targets[0].text == (
        "＜受給者証とマイナンバーカードの一体化＞ 2023年度：情報連携基盤の整備と先行実施事業の開始"
    )
    assert measures["1-10"].targets[0].text.endswith("口座照会の開始（2024年度末頃）")
    assert measures["1-10"].targets[0].due_approximate is True
    assert measures["1-65"].targets[0].text.endswith("2024年度末 786件、2025年度末 1,160件")


def test_several_dates_take_the_deadline_and_its_value(measures: dict[str, Measure]) -> None:
    (cases,) = measures["1-65"].targets
    data_count = measures["2-66"].targets[0]

    assert (cases.due_date, cases.value, cases.unit) == (date(2026, 3, 31), 1160, "件")
    assert (data_count.due_date, data_count.value, data_count.unit) == (date(2028, 3, 31), 300, "万件")


# --- hard cases for one target text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "due", "approximate"),
    [
        ("2024年度中にPMHと連携した予診票提出機能の実装", date(2025, 3, 31), False),
        ("2025年度末までに共通算定モジュールの本格的な提供", date(2026, 3, 31), False),
        ("2027年１月までに特許事務システムを段階的に刷新。", date(2027, 1, 31), False),
        ("2025年６月を目途に、協議会を通じて対応策を整理する。", date(2025, 6, 30), True),
        ("出生届のオンライン届出を2026年度を目途に実現", date(2027, 3, 31), True),
        ("2024年度末を目処に、ダッシュボードを更新する。", date(2025, 3, 31), True),
        ("電子申請等において、2030年までに500手続で参照", date(2030, 12, 31), False),
        ("２０２５年度末までにオンライン利用率 ６０％", date(2026, 3, 31), False),
        ("2025 年度末までにオンライン利用率 60％", date(2026, 3, 31), False),
        ("令和７年度末までに整備する", date(2026, 3, 31), False),
        ("2025年夏までに、整備改善計画の策定", date(2025, 8, 31), True),
        ("システムの完全移行（～2029年１月）", date(2029, 1, 31), False),
        ("受験手数料のキャッシュレス化の導入（2025年度～）", None, False),
        ("機能改修の実施（2024年10月以降）", None, False),
        ("2024年12月２日からの現行の健康保険証の新規発行終了", None, False),
        ("2030年代の導入が見込まれるBeyond 5Gの早期実現", None, False),
        (
            "2024年度からシステム基幹部分の設計開発を進め、2026年度中に一部運用を開始する。",
            date(2027, 3, 31),
            False,
        ),
        ("2025年５月時点の国民に、2026年８月を目途に振り仮名を記載する。", date(2026, 8, 31), True),
        (
            "ロードマップ2024※に基づいた社会実装※ロードマップ：2024年６月21日デジタル社会推進会議決定",
            None,
            False,
        ),
        ("事業者目線での行政手続に関する事業者向けポータルの検討", None, False),
    ],
)
def test_due_date(text: str, due: date | None, approximate: bool) -> None:
    target = parse_target(0, text)

    assert (target.due_date, target.due_approximate) == (due, approximate)


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("e-Taxの利用状況（所得税の申告手続）（80％ 2026年度）", 80, "％"),
        ("2024年度の在留申請オンラインシステム利用率を25%とする。", 25, "％"),
        ("２０２５年度末までにオンライン利用率 ６０％", 60, "％"),
        ("2030年度までに登録者数を5万人に増加させる。", 5, "万人"),
        ("ガバメントクラウド上での基盤経費削減額 2024年度末10.6億円", 10.6, "億円"),
        ("e-Statの利用件数（2027年度までに15,000万件以上）", 15000, "万件"),
        ("1,400補助金でJグランツを利用（2024年度）", 1400, "補助金"),
        ("端末を活用している学校の割合の向上（2024年度末までに「週３回以上」を９割）", 9, "割"),
        ("2025年度までに対象を10～20件に拡大", 20, "件"),
        ("テレワーク導入企業の割合を、2025年度には2021年度の35.4%から引き上げ45.4％とする", 45.4, "％"),
        ("デジタル認証アプリ導入予定の行政機関・民間事業者数：70", 70, None),
        ("関東地方の都市における200㎢の地下インフラのデジタルツイン構築", 200, "㎢"),
        ("マイナポータルアプリの設計・開発の一部を内製化", None, None),
        ("職員が１人以下である団体を2025年度中に半減させる。", None, None),
        ("NICTのデータ量：2024年度末までに3.5TB（2023年時点の10倍）、2026年度末までに６TB", 6, "TB"),
    ],
)
def test_value(text: str, value: float | None, unit: str | None) -> None:
    target = parse_target(3, text)

    assert (target.index, target.text, target.value, target.unit) == (3, text, value, unit)


def test_search_key_folds_width_case_and_spaces() -> None:
    assert search_key("ＤＸ　の推進\n e-Tax") == "dx の推進 e-tax"
    assert search_key("２０２５年度") == "2025年度"


# --- structure the importer refuses ------------------------------------------------------------------

_SECTION_ONE = " １．デジタル化による成長戦略 \n\n"
_MEASURE_ONE = "○[No.1-1] 名称 \n\n・ 説明。\n\n具体的な目標： ― \n\n主担当省庁： デジタル庁 \n\n"


def test_a_minimal_document_with_form_feed_and_page_number() -> None:
    (measure,) = parse_plan(_SECTION_ONE + "\f12 \n\n" + _MEASURE_ONE)

    assert (measure.id, measure.title, measure.description, measure.targets) == (
        "1-1",
        "名称",
        ["説明。"],
        [],
    )


def test_wrapped_lead_agencies() -> None:
    document = _SECTION_ONE + _MEASURE_ONE.replace("デジタル庁 ", "デジタル庁、内閣官房\n\n（NISC）、厚生労働省")
    (measure,) = parse_plan(document)

    assert measure.lead_agencies == [Agency.digital, Agency.nisc, Agency.mhlw]


@pytest.mark.parametrize(
    ("document", "line_no", "message"),
    [
        ("前書き\n" + _SECTION_ONE + _MEASURE_ONE, 1, "outside any measure"),
        (_SECTION_ONE + _MEASURE_ONE.replace("No.1-1", "No.1-2"), 3, "out of sequence"),
        (_SECTION_ONE + _MEASURE_ONE.replace("主担当省庁： デジタル庁 \n\n", ""), 7, "without 主担当省庁"),
        (_SECTION_ONE + _MEASURE_ONE.replace("デジタル庁", "宇宙庁"), 9, "unknown agency"),
        (" ２．医療 \n\n" + _MEASURE_ONE, 1, "section 2 where section 1"),
        ("", 1, "no measure"),
    ],
)
def test_unknown_structure_raises_with_the_line(document: str, line_no: int, message: str) -> None:
    with pytest.raises(PlanFormatError, match=message) as raised:
        parse_plan(document)

    assert raised.value.line_no == line_no
