"""The platform's AsyncAPI document: generated (snapshot in docs/asyncapi.json) and naming every subject in use.

Update the snapshot on purpose with: .venv/bin/shinchoku asyncapi
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from faststream.specification import AsyncAPI
from jsonschema import Draft7Validator

from catalog.app import CatalogRuntime
from catalog.config import CatalogSettings
from catalog.subscribers import asyncapi_document
from contracts import streams
from ingest.config import IngestSettings
from ingest.subscribers import consumer_config as ingest_consumer
from reporting.subscribers import consumer_config as reporting_consumer
from shinchoku_runtime.asyncapi import render
from shinchoku_runtime.natsconf import all_users, permissions_of

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "docs" / "asyncapi.json"

#: Permission subjects that are the broker's own machinery, not the platform's messages.
MACHINERY = ("$JS.API.", "$JS.ACK.", "$JS.FC.", "_INBOX")

#: Sample values for the parameters of contracts.streams' subject functions.
SAMPLES: dict[str, object] = {"agency": "mof", "measure_id": "1-25", "fiscal_year": 2025, "quarter": 2, "revision": 2}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document()


def tokens(address: str) -> list[str]:
    """A channel address as NATS subject tokens, its `{parameter}`s as `*`."""
    return ["*" if t.startswith("{") and t.endswith("}") else t for t in address.split(".")]


def overlaps(pattern: str, address: str) -> bool:
    """Whether a NATS subject or filter (`*`, `>`) and a channel address can name the same message."""
    a, b = pattern.split("."), tokens(address)
    for i, token in enumerate(a):
        if token == ">":
            return len(b) > i
        if i >= len(b):
            return False
        if token != "*" and b[i] != "*" and token != b[i]:
            return False
    return len(a) == len(b)


def addresses(document: dict[str, Any], *, service: str | None = None, action: str | None = None) -> list[str]:
    found = []
    for key, operation in document["operations"].items():
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[1]]
        if (service is None or key.startswith(f"{service}:")) and (action is None or operation["action"] == action):
            found.append(channel["address"])
    return found


def unnamed(document: dict[str, Any], subjects: list[str], **which: str) -> list[str]:
    named = addresses(document, **which)
    return [s for s in subjects if not any(overlaps(s, a) for a in named)]


def test_the_snapshot_is_the_generated_document(document: dict[str, Any]) -> None:
    assert SNAPSHOT.read_text("utf-8") == render(document), (
        "the platform's AsyncAPI document changed: check the change is deliberate (contracts change only "
        "additively), then regenerate docs/asyncapi.json with `.venv/bin/shinchoku asyncapi`"
    )


def test_it_is_asyncapi_3_with_a_payload_schema_for_every_message(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    schemas = document["components"]["schemas"]
    for name, message in document["components"]["messages"].items():
        assert message["payload"]["$ref"].rsplit("/", 1)[1] in schemas, name
    for model in ("StatusEvent", "AdmittedEvent", "Rejection", "ReviewEvent", "CloseEvent", "Published", "Restated"):
        assert schemas[model]["additionalProperties"] is False, model


def test_every_channel_parameter_is_described(document: dict[str, Any]) -> None:
    for key, channel in document["channels"].items():
        named = {t[1:-1] for t in channel["address"].split(".") if t.startswith("{")}
        assert set(channel.get("parameters", {})) == named, key
    status = document["channels"]["ingest:status"]
    assert status["address"] == "status.{agency}.{measure_id}"
    assert "mof" in status["parameters"]["agency"]["enum"]
    assert "secretariat" in document["channels"]["ingest:rejected"]["parameters"]["agency"]["enum"]


def test_it_names_every_subject_of_the_contracts(document: dict[str, Any]) -> None:
    subjects = [s for spec in streams.STREAMS for s in spec.subjects]
    subjects += [streams.CATALOG_MEASURE_GET, streams.CATALOG_CHANGED, streams.INGEST_MAX_DELIVERIES_ADVISORY]
    subjects.append(f"$KV.{streams.CATALOG_BUCKET}.>")
    subjects += [getattr(streams, name) + ".>" for name in dir(streams) if name.endswith("_SUBJECT_PREFIX")]
    for name, function in inspect.getmembers(streams, inspect.isfunction):
        if name.endswith("_subject") and not name.startswith("parse_") and function.__module__ == streams.__name__:
            parameters = inspect.signature(function).parameters
            subjects.append(function(**{p: SAMPLES[p] for p in parameters}))
    assert len(subjects) > 25
    assert unnamed(document, subjects) == []


def test_it_names_every_filter_of_the_durable_consumers(document: dict[str, Any]) -> None:
    ingest = ingest_consumer(IngestSettings())
    reporting = reporting_consumer(ack_wait=30.0, max_ack_pending=1000)
    for service, config, stream in (
        ("ingest", ingest, streams.STATUS_STREAM),
        ("reporting", reporting, streams.ACCEPTED_STREAM),
    ):
        filters = [*(config.filter_subjects or ()), *([config.filter_subject] if config.filter_subject else [])]
        filters = filters or list(stream.subjects)  # no filter: every subject of the stream
        assert filters, service
        assert unnamed(document, filters, service=service, action="receive") == [], service


def test_it_names_every_subject_a_nats_user_may_use(document: dict[str, Any]) -> None:
    missing = {}
    for user in all_users():
        if user == "admin":  # may do anything: the administrative identity that declares streams
            continue
        permissions = permissions_of(user)
        subjects = [s for s in (*permissions.publish, *permissions.subscribe) if not s.startswith(MACHINERY)]
        if gaps := unnamed(document, subjects):
            missing[user] = gaps
    assert missing == {}


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [
        ("status.mof.>", "status.{agency}.{measure_id}", True),
        ("status.mof.1-25", "status.{agency}.{measure_id}", True),
        ("status.>", "accepted.{agency}.{measure_id}", False),
        ("rejected.>", "rejected.{agency}", True),
        ("rejected.mof.x", "rejected.{agency}", False),
        ("close.2025.2", "close.{fy}.{q}", True),
        ("catalog.changed", "catalog.measure.get", False),
        ("alert.>", "accepted.{agency}.{measure_id}", False),
    ],
)
def test_overlaps(pattern: str, address: str, expected: bool) -> None:
    """The matcher the coverage tests rely on."""
    assert overlaps(pattern, address) is expected


def test_the_catalogs_channels_are_its_running_brokers_own(document: dict[str, Any], tmp_path: Path) -> None:
    """The catalog's channels in the document are what the catalog's broker declares when it runs."""
    settings = CatalogSettings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    runtime = CatalogRuntime(settings)
    try:
        running = AsyncAPI(runtime.broker, schema_version="3.0.0").to_specification().to_jsonable()
    finally:
        runtime.engine.dispose()
        runtime.tracer_provider.shutdown()
    assert set(running["channels"]) == {"catalog:catalog.measure.get", "catalog:catalog.changed"}
    for key, channel in running["channels"].items():
        assert channel["address"] == document["channels"][key]["address"]
        assert channel["description"] == document["channels"][key]["description"]
        assert running["operations"][key]["action"] == document["operations"][key]["action"]


def test_the_document_is_json_a_generator_can_read() -> None:
    data = json.loads(SNAPSHOT.read_text("utf-8"))
    assert data["info"]["title"] == "Shinchoku message API"
    assert data["servers"]["development"]["protocol"] == "nats"


def test_it_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    """Against the specification's own JSON Schema, so that AsyncAPI tools (generators, parsers) accept it."""
    schema = json.loads((Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json").read_text("utf-8"))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in Draft7Validator(schema).iter_errors(document)]
    assert errors == []
