"""The catalog on NATS through FastStream: it answers `catalog.measure.get` request-reply and announces registry
changes on `catalog.changed`.

These declarations are the running catalog's own and the source of those channels in the platform's AsyncAPI
document (`asyncapi_document`, served at `GET /asyncapi.json`; see `shinchoku_runtime.asyncapi`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from faststream.nats import NatsBroker, NatsMessage, NatsResponse
from faststream.nats.publisher.usecase import LogicPublisher
from opentelemetry import trace

from catalog import handlers
from contracts.events import CatalogChanged
from contracts.streams import CATALOG_CHANGED, CATALOG_MEASURE_GET
from shinchoku_runtime.asyncapi import platform_document

JSON_HEADERS = {"content-type": "application/json"}


async def raw_body(msg: NatsMessage) -> bytes:
    """The request as sent: a measure id is plain text, and `125` must not turn into a number."""
    return msg.body


def register(broker: NatsBroker, *, documents: Callable[[], Mapping[str, bytes]]) -> LogicPublisher:
    """Subscribe the lookup and declare the announcement; returns the `catalog.changed` publisher.

    `documents` gives the current registry as Measure JSON by id (swapped whole after each seed).
    """

    @broker.subscriber(
        CATALOG_MEASURE_GET,
        queue="catalog",
        decoder=raw_body,
        title="catalog:catalog.measure.get",
        description=(
            "Request-reply lookup of one measure (ingest asks it when its mirror lacks a measure). Request: the "
            'measure id as UTF-8 text (`1-25`). Reply: the Measure JSON, or `{"error": "not_found", "message": ...}`.'
        ),
    )
    async def measure_get(body: bytes) -> NatsResponse:
        measure_id, reply = handlers.measure_reply(documents(), body)
        if measure_id is not None:
            trace.get_current_span().set_attribute("shinchoku.measure_id", measure_id)
        return NatsResponse(reply, headers=JSON_HEADERS)

    return broker.publisher(
        CATALOG_CHANGED,
        schema=CatalogChanged,
        title="catalog:catalog.changed",
        description=(
            "The registry changed (a new plan was seeded): mirrors may re-read the bucket. Announced once per "
            "stored revision, after the bucket holds it."
        ),
    )


def asyncapi_document() -> dict[str, Any]:
    """The platform's AsyncAPI document, the catalog's channels from `register` itself."""
    return platform_document(lambda broker: register(broker, documents=dict))
