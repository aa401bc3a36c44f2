"""The 17 lead agencies (binding codes) with their names as the plan writes them."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class Agency(StrEnum):
    digital = "digital"
    mic = "mic"
    mhlw = "mhlw"
    mext = "mext"
    mlit = "mlit"
    meti = "meti"
    cas = "cas"
    nisc = "nisc"
    cao = "cao"
    moj = "moj"
    cfa = "cfa"
    maff = "maff"
    npa = "npa"
    mof = "mof"
    env = "env"
    ppc = "ppc"
    jinji = "jinji"


@dataclass(frozen=True, slots=True)
class AgencyInfo:
    code: Agency
    name_ja: str
    name_en: str


AGENCIES: tuple[AgencyInfo, ...] = (
    AgencyInfo(Agency.digital, "デジタル庁", "Digital Agency"),
    AgencyInfo(Agency.mic, "総務省", "Ministry of Internal Affairs and Communications"),
    AgencyInfo(Agency.mhlw, "厚生労働省", "Ministry of Health, Labour and Welfare"),
    AgencyInfo(Agency.mext, "文部科学省", "Ministry of Education, Culture, Sports, Science and Technology"),
    AgencyInfo(Agency.mlit, "国土交通省", "Ministry of Land, Infrastructure, Transport and Tourism"),
    AgencyInfo(Agency.meti, "経済産業省", "Ministry of Economy, Trade and Industry"),
    AgencyInfo(Agency.cas, "内閣官房", "Cabinet Secretariat"),
    AgencyInfo(
        Agency.nisc,
        "内閣官房（NISC）",
        "National center of Incident readiness and Strategy for Cybersecurity",
    ),
    AgencyInfo(Agency.cao, "内閣府", "Cabinet Office"),
    AgencyInfo(Agency.moj, "法務省", "Ministry of Justice"),
    AgencyInfo(Agency.cfa, "こども家庭庁", "Children and Families Agency"),
    AgencyInfo(Agency.maff, "農林水産省", "Ministry of Agriculture, Forestry and Fisheries"),
    AgencyInfo(Agency.npa, "警察庁", "National Police Agency"),
    AgencyInfo(Agency.mof, "財務省", "Ministry of Finance"),
    AgencyInfo(Agency.env, "環境省", "Ministry of the Environment"),
    AgencyInfo(Agency.ppc, "個人情報保護委員会", "Personal Information Protection Commission"),
    AgencyInfo(Agency.jinji, "人事院", "National Personnel Authority"),
)

AGENCY_INFO: dict[Agency, AgencyInfo] = {a.code: a for a in AGENCIES}


def _key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).replace(" ", "").replace("\u3000", "")


_BY_JAPANESE: dict[str, Agency] = {_key(a.name_ja): a.code for a in AGENCIES}


def agency_from_japanese(name: str) -> Agency:
    """The agency a Japanese name denotes, matched after NFKC (so `内閣官房(NISC)` matches too).

    Raises KeyError with the name when the plan names an agency this registry does not know.
    """
    try:
        return _BY_JAPANESE[_key(name)]
    except KeyError:
        raise KeyError(f"unknown agency name: {name!r}") from None
