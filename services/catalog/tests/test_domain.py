"""The registry's pure rules, without NATS or a database."""

from __future__ import annotations

import pytest

from catalog.domain import (
    ChangeSet,
    check_registry,
    check_section,
    diff_registry,
    measure_search_key,
    normalise_measure_id,
    parse_agency,
    query_terms,
    registry_revision,
)
from contracts.agencies import Agency
from contracts.catalog import Measure


def test_revision_depends_on_content_not_order(plan: list[Measure]) -> None:
    assert registry_revision(plan) == registry_revision(list(reversed(plan)))
    renamed = [m.model_copy(update={"title": m.title + "（改）"}) if m.id == "1-25" else m for m in plan]
    assert registry_revision(renamed) != registry_revision(plan)


def test_diff_names_added_updated_removed_in_document_order() -> None:
    stored = {"1-2": "a", "1-10": "b", "2-1": "c"}
    wanted = {"1-2": "a", "1-10": "B", "1-3": "d", "6-17": "e"}
    changes = diff_registry(stored, wanted)
    assert changes == ChangeSet(added=("1-3", "6-17"), updated=("1-10",), removed=("2-1",))
    assert changes.changed_ids == ["1-3", "1-10", "2-1", "6-17"]
    assert not diff_registry(stored, stored)


@pytest.mark.parametrize(
    ("q", "terms"),
    [
        ("ｅ－Ｔａｘ", ["e-tax"]),
        ("E-TAX", ["e-tax"]),
        ("  e-Tax　確定申告 ", ["e-tax", "確定申告"]),
        ("ﾏｲﾅﾝﾊﾞｰ", ["マイナンバー"]),
        ("e-tax e-Tax", ["e-tax"]),
        ("", []),
        (None, []),
        ("%_", ["%_"]),
    ],
)
def test_query_terms_are_normalised_like_the_stored_key(q: str | None, terms: list[str]) -> None:
    assert query_terms(q) == terms


def test_search_key_keeps_fields_apart_and_drops_spaces(plan: list[Measure]) -> None:
    measure = next(m for m in plan if m.id == "1-25")
    key = measure_search_key(measure)
    assert "e-taxの利用状況" in key
    assert all(" " not in line for line in key.split("\n"))
    assert len(key.split("\n")) == 1 + len(measure.description) + len(measure.targets)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1-25", "1-25"),
        (" １－２５ ", "1-25"),
        ("No.1-25", "1-25"),
        ("6-17", "6-17"),
        ("1-025", "1-25"),
        ("7-1", None),
        ("1-", None),
        ("1-2-3", None),
        ("abc", None),
        ("", None),
        ("1-1000", None),
    ],
)
def test_measure_ids_as_users_type_them(raw: str, expected: str | None) -> None:
    assert normalise_measure_id(raw) == expected


def test_agency_codes() -> None:
    assert parse_agency(" MOF ") is Agency.mof
    with pytest.raises(ValueError, match="unknown agency 'tax'") as e:
        parse_agency("tax")
    assert all(a.value in str(e.value) for a in Agency)


def test_sections() -> None:
    assert check_section(6) == 6
    with pytest.raises(ValueError, match="1 to 6"):
        check_section(7)


def test_a_registry_with_a_duplicate_id_is_refused(plan: list[Measure]) -> None:
    with pytest.raises(ValueError, match="1-1 appears twice"):
        check_registry([plan[0], plan[0]])
