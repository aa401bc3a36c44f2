"""The catalog's HTTP API over SQLite and PostgreSQL: shapes, filters, Japanese search, paging, and user errors."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from contracts.agencies import AGENCIES
from contracts.catalog import Measure

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECTION_TOTALS = {1: 156, 2: 72, 3: 33, 4: 27, 5: 15, 6: 17}


async def _ids(client: httpx.AsyncClient, **params: str | int) -> list[str]:
    response = await client.get("/measures", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["items"])
    return [m["id"] for m in body["items"]]


async def test_measure_1_25_as_the_contract_shapes_it(api: httpx.AsyncClient) -> None:
    response = await api.get("/measures/1-25")
    assert response.status_code == 200
    measure = response.json()
    assert set(measure) == {"id", "section", "section_title", "title", "description", "lead_agencies", "targets"}
    assert measure["section"] == 1
    assert measure["section_title"] == "デジタル化による成長戦略"
    assert measure["lead_agencies"] == ["mof"]
    (target,) = measure["targets"]
    additive = {"due_range", "due_note", "baseline", "direction", "value_is_change", "milestones"}
    assert {k: v for k, v in target.items() if k not in additive} == {
        "index": 0,
        "text": "e-Taxの利用状況（所得税の申告手続）（80％ 2026年度）",
        "due_date": "2027-03-31",
        "due_approximate": False,
        "value": 80,
        "unit": "％",
    }
    # The additive fields of DESIGN.md "HTTP" (issue 18): this target states none of them.
    assert {k: target[k] for k in additive} == {
        "due_range": None,
        "due_note": None,
        "baseline": None,
        "direction": None,
        "value_is_change": False,
        "milestones": [],
    }
    assert (await api.get("/measures/１－２５")).json() == measure


async def test_a_target_with_baseline_milestones_and_an_approximate_date(api: httpx.AsyncClient) -> None:
    telework = (await api.get("/measures/3-14")).json()["targets"][0]
    cases = (await api.get("/measures/1-65")).json()["targets"][0]
    diet = (await api.get("/measures/1-1")).json()["targets"][0]

    assert (telework["baseline"], telework["direction"]) == (
        {"value": 35.4, "as_of": "2022-03-31", "unit": "％"},
        "increase",
    )
    assert [(m["due_date"], m["value"], m["unit"]) for m in cases["milestones"]] == [("2025-03-31", 786, "件")]
    assert (diet["due_date"], diet["due_approximate"], diet["due_range"]) == (
        "2025-06-30",
        True,
        {"start": "2025-01-01", "end": "2025-06-30"},
    )
    assert "通常国会" in diet["due_note"]


async def test_the_default_page_is_the_first_100_in_document_order(api: httpx.AsyncClient, plan: list[Measure]) -> None:
    body = (await api.get("/measures")).json()
    assert body["total"] == 320
    assert [m["id"] for m in body["items"]] == [m.id for m in plan[:100]]
    assert body["items"][0] == (await api.get("/measures/1-1")).json()


@pytest.mark.parametrize(
    ("params", "first", "count"),
    [
        ({"limit": 1000}, "1-1", 320),
        ({"limit": 1}, "1-1", 1),
        ({"limit": 50, "offset": 303}, "6-1", 17),
        ({"offset": 320}, None, 0),
        ({"offset": 5000}, None, 0),
        ({"section": 6, "offset": 10}, "6-11", 7),
    ],
)
async def test_paging(api: httpx.AsyncClient, params: dict[str, int], first: str | None, count: int) -> None:
    body = (await api.get("/measures", params=params)).json()
    assert len(body["items"]) == count
    assert (body["items"][0]["id"] if body["items"] else None) == first
    assert body["total"] == (17 if "section" in params else 320)


async def test_section_filter(api: httpx.AsyncClient) -> None:
    for section, total in SECTION_TOTALS.items():
        ids = await _ids(api, section=section)
        assert len(ids) == total
        assert all(i.startswith(f"{section}-") for i in ids)
    ids = await _ids(api, section=1)
    assert ids.index("1-2") < ids.index("1-10")


async def test_agency_filter(api: httpx.AsyncClient, plan: list[Measure]) -> None:
    leads = Counter(a.value for m in plan for a in m.lead_agencies)
    for info in AGENCIES:
        code = info.code.value
        ids = await _ids(api, agency=code)
        assert ids == [m.id for m in plan if info.code in m.lead_agencies]
        assert len(ids) == leads[code]
    assert await _ids(api, agency=" MOF ") == await _ids(api, agency="mof")
    both = await _ids(api, agency="digital", section=2)
    assert both == [m.id for m in plan if m.section == 2 and "digital" in m.lead_agencies]


@pytest.mark.parametrize(
    "variants",
    [
        ["e-Tax", "ｅ－Ｔａｘ", "e-tax", "E-TAX", " e-Tax "],
        ["マイナンバーカード", "ﾏｲﾅﾝﾊﾞｰｶｰﾄﾞ", "マイナンバー　カード"],
        ["ガバメントクラウド", "ｶﾞﾊﾞﾒﾝﾄｸﾗｳﾄﾞ"],
        ["DFFT", "ｄｆｆｔ", "dfft"],
    ],
)
async def test_search_ignores_width_case_and_spacing(api: httpx.AsyncClient, variants: list[str]) -> None:
    results = [await _ids(api, q=v) for v in variants]
    assert results[0]
    assert all(r == results[0] for r in results), dict(zip(variants, results, strict=True))


async def test_search_terms_are_anded_over_title_bullets_and_targets(api: httpx.AsyncClient) -> None:
    e_tax = await _ids(api, q="e-Tax")
    assert "1-25" in e_tax
    # "80％" occurs only in 1-25's target; the term meets it in the target text.
    assert "1-25" in await _ids(api, q="e-tax ８０％")
    both = await _ids(api, q="e-Tax 確定申告")
    assert set(both) <= set(e_tax) & set(await _ids(api, q="確定申告"))
    assert "1-25" in both
    assert await _ids(api, q="e-Tax 存在しない語") == []
    assert await _ids(api, q="e-Tax", section=2) == [i for i in e_tax if i.startswith("2-")]
    # LIKE wildcards are plain characters.
    assert await _ids(api, q="_") == []
    assert len(await _ids(api, q="%")) < 320


async def test_agencies(api: httpx.AsyncClient, plan: list[Measure]) -> None:
    body = (await api.get("/agencies")).json()
    leads = Counter(a.value for m in plan for a in m.lead_agencies)
    assert [a["code"] for a in body] == [a.code.value for a in AGENCIES]
    mof = next(a for a in body if a["code"] == "mof")
    assert mof == {"code": "mof", "name_ja": "財務省", "name_en": "Ministry of Finance", "measures_total": leads["mof"]}
    assert {a["code"]: a["measures_total"] for a in body} == {a.code.value: leads[a.code.value] for a in AGENCIES}


async def test_sections(api: httpx.AsyncClient) -> None:
    body = (await api.get("/sections")).json()
    assert [(s["number"], s["measures_total"]) for s in body] == list(SECTION_TOTALS.items())
    assert body[5]["title"] == "DFFT の推進を始めとする国際戦略"


async def test_csv_has_one_row_per_measure(api: httpx.AsyncClient) -> None:
    response = await api.get("/measures", params={"format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert len(rows) == 320
    row = next(r for r in rows if r["id"] == "1-25")
    assert row["lead_agencies"] == "mof"
    assert row["lead_agencies_ja"] == "財務省"
    assert row["targets"] == "e-Taxの利用状況（所得税の申告手続）（80％ 2026年度）"
    section_six = await api.get("/measures", params={"format": "csv", "section": 6})
    assert section_six.headers["x-total-count"] == "17"
    assert len(list(csv.reader(io.StringIO(section_six.text.lstrip("\ufeff"))))) == 18


@pytest.mark.parametrize(
    ("url", "status", "mentions"),
    [
        ("/measures/1-999", 404, "no measure 1-999"),
        ("/measures/7-1", 404, "measure ids look like 1-25"),
        ("/measures/abc", 404, "measure ids look like 1-25"),
        ("/measures/1-25x", 404, "measure ids look like 1-25"),
        ("/measures?agency=tax", 400, "use one of digital, mic"),
        ("/measures?agency=", 400, "unknown agency"),
        ("/measures?section=0", 400, "1 to 6"),
        ("/measures?section=7", 400, "1 to 6"),
        ("/measures?section=abc", 422, "section"),
        ("/measures?limit=0", 422, "limit"),
        ("/measures?limit=1001", 422, "limit"),
        ("/measures?limit=abc", 422, "limit"),
        ("/measures?offset=-1", 422, "offset"),
        ("/measures?offset=x", 422, "offset"),
        ("/measures?format=xml", 422, "format"),
        ("/measures?q=" + "あ" * 201, 422, "q"),
    ],
)
async def test_user_errors_are_4xx_with_a_message(api: httpx.AsyncClient, url: str, status: int, mentions: str) -> None:
    response = await api.get(url)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert mentions in detail


async def test_operations_endpoints(api: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 20
    while (health := await api.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert health.status_code == 200, health.text
    assert health.json()["measures_total"] == 320
    assert (await api.get("/docs")).status_code == 200
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {"/measures", "/measures/{measure_id}", "/agencies", "/sections", "/healthz"} <= set(paths)
    assert "404" in paths["/measures/{measure_id}"]["get"]["responses"]
    metrics = (await api.get("/metrics")).text
    assert "shinchoku_catalog_measures 320.0" in metrics


async def test_the_asyncapi_document_is_served_as_generated(api: httpx.AsyncClient) -> None:
    """Public, and byte for byte the snapshot in docs/asyncapi.json (tests/runtime/test_asyncapi.py checks it)."""
    response = await api.get("/asyncapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.text == (Path(__file__).resolve().parents[3] / "docs" / "asyncapi.json").read_text("utf-8")
    assert response.json()["channels"]["ingest:status"]["address"] == "status.{agency}.{measure_id}"
