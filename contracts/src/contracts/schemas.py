"""JSON Schemas of the public contracts, exported for clients in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.alerts import AlertEvent
from contracts.catalog import Measure
from contracts.cycle import AdmittedClose, AdmittedReview, CloseEvent, Published, Restated, ReviewEvent
from contracts.events import AdmittedEvent, CatalogChanged, Rejection, StatusEvent

PUBLIC_MODELS: dict[str, type[BaseModel]] = {
    "status_event.v1": StatusEvent,
    "admitted_event.v1": AdmittedEvent,
    "rejection.v1": Rejection,
    "measure.v1": Measure,
    "catalog_changed.v1": CatalogChanged,
    "review_event.v1": ReviewEvent,
    "close_event.v1": CloseEvent,
    "admitted_review.v1": AdmittedReview,
    "admitted_close.v1": AdmittedClose,
    "published.v1": Published,
    "restated.v1": Restated,
    "alert_event.v1": AlertEvent,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema() for name, model in PUBLIC_MODELS.items()}


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_schemas(Path(__file__).resolve().parents[2] / "schemas"):
        print(p)  # noqa: T201
