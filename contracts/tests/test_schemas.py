"""The JSON Schemas are a public interface: any change fails here until the snapshot is updated on purpose.

Update with: .venv/bin/python -m contracts.schemas
"""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.events import StatusEvent
from contracts.schemas import json_schemas

SNAPSHOTS = Path(__file__).resolve().parents[1] / "schemas"


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_schema_matches_snapshot(name: str) -> None:
    snapshot = json.loads((SNAPSHOTS / f"{name}.schema.json").read_text("utf-8"))
    assert json_schemas()[name] == snapshot, f"{name} changed: contract changes must be additive and deliberate"


def _event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11",
        "measure_id": "1-25",
        "agency": "mof",
        "fiscal_year": 2024,
        "quarter": 3,
        "status": "on_track",
        "reported_at": "2024-12-20T17:00:00+09:00",
    }
    base.update(overrides)
    return base


def test_minimal_event_is_valid_and_frozen() -> None:
    event = StatusEvent.model_validate(_event())
    assert event.schema_version == 1
    with pytest.raises(ValidationError):
        event.status = "delayed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides",
    [
        {"unexpected": 1},
        {"reported_at": "2024-12-20T17:00:00"},  # no offset
        {"quarter": 5},
        {"progress": 101},
        {"note": "x" * 4001},
        {"reporter": "x" * 201},
        {"status": "done"},
        {"agency": "MOF"},
        {"event_id": "not-a-uuid"},
        {"kpis": [{"target": 0, "value": 1}]},
    ],
)
def test_contract_violations(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        StatusEvent.model_validate(_event(**overrides))
