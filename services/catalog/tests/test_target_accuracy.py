"""The target parser against a hand-checked sample of the plan's targets (tests/data/targets_sample.json).

The sample's expected values were written by reading the plan's text, not from the parser (the file says how
it was made). The share the parser gets right is measured per field, shown in the terminal summary of every
run (see conftest.py), and must be at least 95 % for each field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from contracts.catalog import Measure, Target

SAMPLE = Path(__file__).parent / "data" / "targets_sample.json"
REQUIRED = 0.95
#: The record_property key the terminal summary looks for.
ACCURACY_PROPERTY = "target_parser_accuracy"

Expected = dict[str, Any]


def _day(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


def _same_number(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b))


def _baseline(t: Target, e: Expected) -> bool:
    want = e["baseline"]
    if t.baseline is None or want is None:
        return t.baseline is None and want is None
    return (
        _same_number(t.baseline.value, want["value"])
        and t.baseline.as_of == _day(want["as_of"])
        and t.baseline.unit == want["unit"]
    )


def _milestones(t: Target, e: Expected) -> bool:
    want = e["milestones"]
    return len(t.milestones) == len(want) and all(
        m.due_date == _day(w["due_date"])
        and m.due_approximate == w["due_approximate"]
        and _same_number(m.value, w["value"])
        and m.unit == w["unit"]
        for m, w in zip(t.milestones, want, strict=True)
    )


def _due_range(t: Target, e: Expected) -> bool:
    want = e["due_range"]
    got = None if t.due_range is None else {"start": t.due_range.start, "end": t.due_range.end}
    return got == (None if want is None else {"start": _day(want["start"]), "end": _day(want["end"])})


#: Field → whether the parsed target agrees with the hand-checked one.
FIELDS: dict[str, Callable[[Target, Expected], bool]] = {
    "text": lambda t, e: t.text == e["text"],
    "due_date": lambda t, e: (t.due_date, t.due_approximate) == (_day(e["due_date"]), e["due_approximate"]),
    "due_range": _due_range,
    "value": lambda t, e: _same_number(t.value, e["value"]),
    "unit": lambda t, e: t.unit == e["unit"],
    "value_is_change": lambda t, e: t.value_is_change == e["value_is_change"],
    "baseline": _baseline,
    "direction": lambda t, e: t.direction == e["direction"],
    "milestones": _milestones,
}


@pytest.fixture(scope="module")
def sample() -> list[Expected]:
    return list(json.loads(SAMPLE.read_text("utf-8"))["targets"])


def test_the_sample_covers_what_the_issue_names(sample: list[Expected]) -> None:
    keys = {(e["measure"], e["index"]) for e in sample}

    assert len(keys) == len(sample) >= 60
    assert {("1-1", 0), ("1-65", 0), ("2-40", 0), ("3-14", 0)} <= keys
    assert {e["measure"].split("-")[0] for e in sample} == {"1", "2", "3", "4", "5", "6"}
    assert sum(1 for e in sample if e["milestones"]) >= 10
    assert sum(1 for e in sample if e["baseline"]) >= 5
    assert sum(1 for e in sample if e["direction"] == "decrease") >= 5
    assert sum(1 for e in sample if e["due_approximate"]) >= 10
    assert sum(1 for e in sample if e["value"] is None) >= 30


def _misses(sample: list[Expected], measures: dict[str, Measure]) -> dict[str, list[str]]:
    """Per field, the sampled targets (`measure#index`) the parser reads differently from the sample."""
    misses: dict[str, list[str]] = {name: [] for name in FIELDS}
    for expected in sample:
        target = measures[expected["measure"]].targets[expected["index"]]
        for name, agrees in FIELDS.items():
            if not agrees(target, expected):
                misses[name].append(f"{expected['measure']}#{expected['index']}")
    return misses


def _share(misses: list[str], total: int) -> float:
    return 1 - len(misses) / total


def _lines(title: str, misses: dict[str, list[str]], total: int) -> list[str]:
    return [f"{title} ({total} targets)"] + [
        f"  {name:<16} {total - len(missed):>3}/{total} = {_share(missed, total):6.1%}"
        + (f"  (missed: {', '.join(missed)})" if missed else "")
        for name, missed in misses.items()
    ]


def test_parser_accuracy_per_field(
    sample: list[Expected], plan: list[Measure], record_property: Callable[[str, object], None]
) -> None:
    measures = {m.id: m for m in plan}
    held_out = [e for e in sample if e["held_out"]]
    misses = _misses(sample, measures)
    lines = _lines("whole sample", misses, len(sample))
    lines += _lines("held out (written before the parser ran on them)", _misses(held_out, measures), len(held_out))
    record_property(ACCURACY_PROPERTY, lines)

    below = [name for name, missed in misses.items() if _share(missed, len(sample)) < REQUIRED]
    assert not below, f"below {REQUIRED:.0%}: {below}\n" + "\n".join(lines)
