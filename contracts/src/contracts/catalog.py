"""The registry of measures as the catalog serves it (binding shapes)."""

from __future__ import annotations

from datetime import date

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

_FROZEN = ConfigDict(frozen=True, extra="forbid")


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
    due_approximate: bool = Field(default=False, description="True when the text says 目途 (approximately)")
    value: float | None = Field(default=None, description="Numeric target value the text states", examples=[80])
    unit: str | None = Field(default=None, description="Unit of the value (％, 件, 人, 手続, …)", examples=["％"])


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
