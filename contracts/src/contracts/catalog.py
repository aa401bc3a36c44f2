"""The registry of measures as the catalog serves it (binding shapes)."""

from __future__ import annotations

from datetime import date
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.agencies import Agency

SECTION_TITLES: dict[int, str] = {
    1: "デジタル化による成長戦略",
    2: "医療・教育・防災・こども等の準公共分野のデジタル化",
    3: "デジタル化による地域の活性化",
    4: "誰一人取り残されないデジタル社会",
    5: "デジタル人材の育成・確保",
    6: "DFFT の推進を始めとする国際戦略",
}

#: The Cabinet adopted the plan on this day: its relative dates (本年度, 今夏) are read from it, a date before it
#: is a fact the plan cites rather than a milestone, and KPI periods are counted from it.
PLAN_ADOPTED: Final = date(2024, 6, 21)

_FROZEN = ConfigDict(frozen=True, extra="forbid")

Direction = Literal["increase", "decrease"]


class DateRange(BaseModel):
    """A period of days, both ends included."""

    model_config = _FROZEN

    start: date = Field(description="First day of the period", examples=["2025-01-01"])
    end: date = Field(description="Last day of the period", examples=["2025-06-30"])


class Baseline(BaseModel):
    """The value of a target's indicator the plan states for a date before it (its starting point)."""

    model_config = _FROZEN

    value: float = Field(
        description="The indicator's value then (several parts the plan lists, such as 国管理河川 448 "
        "都道府県管理河川 1,578 その他河川 3,191, are summed)",
        examples=[35.4],
    )
    as_of: date | None = Field(
        default=None,
        description="The last day of the period the value describes (2021年度 → 2022-03-31, 2024年３月 → 2024-03-31); "
        "null when the plan gives none",
        examples=["2022-03-31"],
    )
    unit: str | None = Field(default=None, description="Unit written with the value, if any", examples=["％"])


class Milestone(BaseModel):
    """An intermediate deadline a target states before its final one (1-65: 786件 by the end of FY2024)."""

    model_config = _FROZEN

    due_date: date = Field(description="The milestone's deadline, read like `Target.due_date`", examples=["2025-03-31"])
    due_approximate: bool = Field(default=False, description="True when the plan gives the date as approximate")
    value: float | None = Field(default=None, description="The value stated for this date, if any", examples=[786])
    unit: str | None = Field(default=None, description="Unit of that value", examples=["件"])
    text: str = Field(
        description="The clause of the target that states the milestone (NFKC, western years)",
        examples=["2024年度末 786件"],
    )


class Target(BaseModel):
    """One concrete target (具体的な目標) of a measure."""

    model_config = _FROZEN

    index: int = Field(ge=0, description="Position among the measure's targets, 0-based", examples=[0])
    text: str = Field(
        description="The target as the plan writes it",
        examples=["e-Taxの利用状況（所得税の申告手続）（80％ 2026年度）"],
    )
    due_date: date | None = Field(
        default=None,
        description="Deadline the text states, as a date (年度末 → 03-31 of FY+1)",
        examples=["2027-03-31"],
    )
    due_approximate: bool = Field(
        default=False,
        description="True when the text gives the deadline as approximate: 目途/目処/めど/頃, a season "
        "(2024年夏), an ordinary Diet session (2025年通常国会); `due_date` is then the last day of what it names",
    )
    value: float | None = Field(default=None, description="Numeric target value the text states", examples=[80])
    unit: str | None = Field(default=None, description="Unit of the value (％, 件, 人, 手続, …)", examples=["％"])
    # Additive fields (issue 18): what the plan states beyond the final value and date.
    due_range: DateRange | None = Field(
        default=None,
        description="For an approximate deadline that names a period, that period: a month (2025年６月を目途), "
        "a season (2024年夏: June–August), a fiscal year (2025年度を目途), the ordinary Diet session "
        "(2025年通常国会: January–June 2025); null for an exact deadline and for about one day (年度末頃)",
    )
    due_note: str | None = Field(
        default=None,
        description="How an approximate deadline was read, in words (null when the deadline is exact)",
        examples=["2025年通常国会: the ordinary Diet session, convened in January for 150 days (to about June)"],
    )
    baseline: Baseline | None = Field(
        default=None,
        description="The starting point the plan states (3-14: 35.4% in FY2021), null where it states none",
    )
    direction: Direction | None = Field(
        default=None,
        description="Which way the measured quantity must move: from the wording (削減/減少/低減/半減 → decrease; "
        "増加/向上/拡大/拡充/引き上げ → increase), from the baseline or the dated values to the target value, or "
        "from a change's sign; null when the text says neither (a level to reach or hold, an activity)",
    )
    value_is_change: bool = Field(
        default=False,
        description="True when `value` is a change against a reference rather than a level to reach "
        "(2020年度比で３割を削減, ２倍以上, 前年度比30％増): an observation of it is the change achieved so far",
    )
    milestones: list[Milestone] = Field(
        default_factory=list,
        description="Intermediate deadlines before `due_date` (after the plan's adoption), in date order; "
        "`value`/`due_date`/`unit` remain the final ones",
    )


class Section(BaseModel):
    model_config = _FROZEN

    number: int = Field(ge=1, le=6, examples=[1])
    title: str = Field(examples=["デジタル化による成長戦略"])
    measures_total: int = Field(ge=0, examples=[156])


class Measure(BaseModel):
    """A numbered measure `[No.S-N]` of the plan."""

    model_config = _FROZEN

    id: str = Field(pattern=r"^[1-6]-\d{1,3}$", description="The document's number as S-N", examples=["1-25"])
    section: int = Field(ge=1, le=6, examples=[1])
    section_title: str = Field(examples=["デジタル化による成長戦略"])
    title: str = Field(examples=["e-Taxの利用促進"])
    description: list[str] = Field(default_factory=list, description="The measure's bullets, lines joined")
    lead_agencies: list[Agency] = Field(min_length=1, description="主担当省庁 in document order")
    targets: list[Target] = Field(default_factory=list, description="具体的な目標; empty when the plan says ―")


def measure_sort_key(measure_id: str) -> tuple[int, int]:
    """Document order of measure ids: `1-2` before `1-10`."""
    section, _, number = measure_id.partition("-")
    return int(section), int(number)
