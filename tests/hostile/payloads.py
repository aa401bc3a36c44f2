"""Hostile STATUS messages as hypothesis strategies: each draws a compact recipe, `build` turns it into bytes.

Every recipe here is bad input by construction (the contract or the subject rules it out), so it must end in a
rejection with a reason, never in an admission, an exception or a crash. Large bodies are described by their
size and made at build time, so that drawing them stays cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@dataclass(frozen=True)
class Hostile:
    """One hostile message: its kind (for counting), the measure token of its subject, and its bytes."""

    kind: str
    payload: bytes
    measure_token: str | None = None

    @property
    def expected_reason(self) -> str:
        """`malformed` for every recipe but the rule breakers, which name the rule they break."""
        return self.kind.removeprefix("rule: ") if self.kind.startswith("rule: ") else "malformed"


def subject_for(message: Hostile, agency: str, measure_id: str) -> str:
    """status.{agency}.{token}: the recipe's measure token when a NATS subject can carry it, else `measure_id`."""
    token = message.measure_token or measure_id
    if not token or any(c in token for c in ". *>\t\r\n\x00") or len(token) > 64:
        token = measure_id
    return f"status.{agency}.{token}"


def base_event(*, event_id: str, agency: str, measure_id: str) -> dict[str, Any]:
    """A valid v1 event (admitted as is, when agency leads measure_id): what the recipes spoil."""
    return {
        "event_id": event_id,
        "measure_id": measure_id,
        "agency": agency,
        "fiscal_year": 2024,
        "quarter": 3,
        "status": "on_track",
        "progress": 45.5,
        "kpis": [],
        "note": "順調",
        "reported_at": "2024-12-20T17:00:00+09:00",
        "reporter": "hostile-suite",
    }


def dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


uuids = st.uuids(version=4).map(str)
junk_text = st.text(max_size=40)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), junk_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk_text, inner, max_size=4),
    max_leaves=10,
)

#: For each field, values that can never be valid there (strict v1 validation).
WRONG_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.one_of(
        st.integers(), st.none(), st.lists(uuids, max_size=2), st.text(max_size=30).filter(lambda s: len(s) != 36)
    ),
    "schema_version": st.one_of(st.integers().filter(lambda n: n != 1), st.just("1"), st.none()),
    "measure_id": st.one_of(
        st.integers(),
        st.none(),
        st.just("１-２５"),
        st.just("0-1"),
        st.just("7-1"),
        st.just("1-1234"),
        st.just("1_25"),
        st.text(alphabet="abc-", min_size=1, max_size=8),
    ),
    "agency": st.one_of(st.integers(), st.none(), st.sampled_from(["MOF", "mof ", "財務省", "ｍｏｆ", "", "unknown"])),
    "fiscal_year": st.one_of(
        st.just("2024"),
        st.just("２０２４"),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.integers(max_value=1899),
        st.integers(min_value=9999),
        st.none(),
    ),
    "quarter": st.one_of(
        st.integers().filter(lambda n: not 1 <= n <= 4),
        st.sampled_from(["3", "３", 3.0, 2.5, True, None, [3]]),
    ),
    "status": st.one_of(st.sampled_from(["ON_TRACK", "done", "", "on track", "unreported"]), st.integers(), st.none()),
    "progress": st.one_of(
        st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False),
        st.floats(min_value=100.001, allow_nan=False, allow_infinity=False),
        st.sampled_from(["50", "５０", True, [], {}]),
    ),
    "kpis": st.one_of(
        st.sampled_from(["none", 0, {"target": 0}]),
        st.lists(st.fixed_dictionaries({"target": st.text(max_size=3)}), min_size=1, max_size=3),
        st.just([{"target": 0, "value": 1, "as_of": "2024-12-01"}] * 101),
        st.just([{"target": -1, "value": 1, "as_of": "2024-12-01"}]),
        st.just([{"target": 0, "value": 1, "as_of": "２０２４-１２-０１"}]),
    ),
    "note": st.one_of(st.integers(), st.lists(junk_text, max_size=2), st.just({"text": "x"})),
    "reported_at": st.one_of(
        st.sampled_from(
            [
                "2024-12-20T17:00:00",  # no offset
                "２０２４-１２-２０T１７:００:００+０９:００",
                "yesterday",
                "2024-13-01T00:00:00+09:00",
                "",
            ]
        ),
        st.integers(),
        st.none(),
    ),
    "reporter": st.one_of(st.integers(), st.lists(junk_text, min_size=1, max_size=2)),
}
REQUIRED = ("event_id", "measure_id", "agency", "fiscal_year", "quarter", "status", "reported_at")


@st.composite
def wrong_type(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    field = draw(st.sampled_from(sorted(WRONG_VALUES)))
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    body[field] = draw(WRONG_VALUES[field])
    token = body["measure_id"] if isinstance(body["measure_id"], str) else measure_id
    return Hostile(f"wrong value: {field}", dumps(body), measure_token=token)


@st.composite
def missing_or_unknown_field(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    if draw(st.booleans()):
        del body[draw(st.sampled_from(REQUIRED))]
        return Hostile("missing field", dumps(body), measure_token=measure_id)
    key = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in body))
    body[key] = draw(json_values)
    return Hostile("unknown field", dumps(body), measure_token=measure_id)


@st.composite
def huge_string(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    field, limit = draw(st.sampled_from([("note", 4000), ("reporter", 200), ("measure_id", 3), ("status", 20)]))
    size = draw(st.integers(min_value=limit + 1, max_value=60_000))
    body[field] = draw(st.sampled_from(["あ", "x", "１", "🚀"])) * size
    return Hostile(f"huge string: {field}", dumps(body), measure_token=measure_id)


@st.composite
def one_megabyte(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    """A body of about 1 MB (under the STATUS stream's limit of 1 MiB + 64 KiB, far over a report's size)."""
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    target = draw(st.integers(min_value=1_000_000, max_value=1_048_576))
    body["note"] = ""
    filler = target - len(dumps(body))
    body["note"] = "x" * max(0, filler)
    return Hostile("1 MB body", dumps(body), measure_token=measure_id)


@st.composite
def deep_nesting(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    depth = draw(st.integers(min_value=50, max_value=30_000))
    where = draw(st.sampled_from(["kpis", "note", "top", "unknown"]))
    nested = "[" * depth + "]" * depth
    if where == "top":
        return Hostile("deep nesting", nested.encode(), measure_token=measure_id)
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    body[where] = "__NESTED__"
    text = dumps(body).decode().replace('"__NESTED__"', nested)
    return Hostile("deep nesting", text.encode(), measure_token=measure_id)


@st.composite
def invalid_utf8(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    raw = dumps(body)
    bad = draw(
        st.sampled_from(
            [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe3\x81", b"\xf8\x88\x80\x80\x80", b"\x80"]
        )
    )
    # Inside the note's value, so that only the encoding is wrong.
    at = raw.index("順調".encode())
    return Hostile("invalid UTF-8", raw[:at] + bad + raw[at:], measure_token=measure_id)


@st.composite
def control_characters(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    """Raw (unescaped) control bytes inside JSON strings are not JSON; escaped ones where no control may go."""
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    char = chr(draw(st.sampled_from(range(0, 32))))
    if draw(st.booleans()):
        # Unescaped inside a JSON string (tab and newline included: JSON allows them only between tokens).
        raw = dumps(body)
        at = raw.index("順調".encode())
        return Hostile("control characters", raw[:at] + char.encode() + raw[at:], measure_token=measure_id)
    char = draw(st.sampled_from([char, "\x7f"]))
    field = draw(st.sampled_from(["event_id", "agency", "status", "reported_at", "measure_id"]))
    body[field] = f"{body[field]}{char}"
    return Hostile("control characters", dumps(body), measure_token=measure_id)


@st.composite
def nul_bytes(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    how = draw(st.sampled_from(["raw in JSON", "escaped in note", "escaped in reporter", "only NULs"]))
    if how == "only NULs":
        return Hostile("NUL bytes", b"\x00" * draw(st.integers(1, 64)), measure_token=measure_id)
    if how == "raw in JSON":
        raw = dumps(body)
        at = raw.index("順調".encode())
        return Hostile("NUL bytes", raw[:at] + b"\x00" + raw[at:], measure_token=measure_id)
    field = "note" if how == "escaped in note" else "reporter"
    body[field] = f"before\u0000after{draw(junk_text)}"
    return Hostile("NUL bytes", dumps(body), measure_token=measure_id)


@st.composite
def full_width_digits(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    """Mixed full-width digits where ASCII numbers are required (a JIS keyboard's typical slip)."""
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    field = draw(st.sampled_from(["fiscal_year", "quarter", "progress", "reported_at", "measure_id", "event_id"]))
    text = str(body[field])
    positions = [i for i, c in enumerate(text) if c.isdigit()]
    chosen = draw(st.lists(st.sampled_from(positions), min_size=1, unique=True))
    mixed = "".join(c.translate(FULL_WIDTH) if i in chosen else c for i, c in enumerate(text))
    body[field] = mixed
    # The subject keeps the ASCII number: a payload that differs from its subject is malformed too.
    return Hostile(f"full-width digits: {field}", dumps(body), measure_token=measure_id)


@st.composite
def not_an_event(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    payload = draw(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"", b"null", b"[]", b"{}", b"123", b'"text"', b"{", b"{'single': 'quotes'}"]),
            json_values.map(dumps),
        )
    )
    return Hostile("not an event", payload, measure_token=measure_id)


@st.composite
def forged_or_unknown(draw: st.DrawFn, agency: str, measure_id: str, ids: st.SearchStrategy[str]) -> Hostile:
    """Well-formed events the rules refuse: another agency's name, an unknown measure, a future quarter or time."""
    body = base_event(event_id=draw(ids), agency=agency, measure_id=measure_id)
    kind = draw(st.sampled_from(["agency_mismatch", "unknown_measure", "future_period", "future_timestamp"]))
    token = measure_id
    if kind == "agency_mismatch":
        body["agency"] = draw(st.sampled_from(["digital", "mic", "mhlw"]).filter(lambda a: a != agency))
    elif kind == "unknown_measure":
        token = body["measure_id"] = f"6-{draw(st.integers(min_value=900, max_value=999))}"
    elif kind == "future_period":
        body["fiscal_year"] = draw(st.integers(min_value=2100, max_value=9998))
    else:
        body["reported_at"] = "2999-01-01T00:00:00+09:00"
    return Hostile(f"rule: {kind}", dumps(body), measure_token=token)


def hostile_messages(
    agency: str, measure_id: str, *, big: bool = True, ids: st.SearchStrategy[str] = uuids
) -> st.SearchStrategy[Hostile]:
    """Any of the recipes, for `agency` publishing about `measure_id` (a measure it leads).

    `ids`: the event ids the recipes use (end to end, fresh ones: a repeated id would be a duplicate_conflict).
    """
    recipes = [
        wrong_type(agency, measure_id, ids),
        missing_or_unknown_field(agency, measure_id, ids),
        huge_string(agency, measure_id, ids),
        deep_nesting(agency, measure_id, ids),
        invalid_utf8(agency, measure_id, ids),
        control_characters(agency, measure_id, ids),
        nul_bytes(agency, measure_id, ids),
        full_width_digits(agency, measure_id, ids),
        not_an_event(agency, measure_id, ids),
        forged_or_unknown(agency, measure_id, ids),
    ]
    if big:
        recipes.append(one_megabyte(agency, measure_id, ids))
    return st.one_of(recipes)
