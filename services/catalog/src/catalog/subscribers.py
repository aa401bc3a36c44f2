"""The catalog on NATS: answers `catalog.measure.get` request-reply."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from faststream.nats import NatsBroker, NatsMessage, NatsResponse
from opentelemetry import trace

from catalog import handlers
from contracts.streams import CATALOG_MEASURE_GET

JSON_HEADERS = {"content-type": "application/json"}


async def raw_body(msg: NatsMessage) -> bytes:
    """The request as sent: a measure id is plain text, and `125` must not turn into a number."""
    return msg.body


def register_subscribers(broker: NatsBroker, *, documents: Callable[[], Mapping[str, bytes]]) -> None:
    """`documents` gives the current registry as Measure JSON by id (swapped whole after each seed)."""

    @broker.subscriber(
        CATALOG_MEASURE_GET,
        queue="catalog",
        decoder=raw_body,
        title="catalog.measure.get",
        description=(
            "Request-reply lookup of one measure. Request: the measure id as UTF-8 text (`1-25`). "
            'Reply: the Measure JSON, or `{"error": "not_found", "message": ...}`.'
        ),
    )
    async def measure_get(body: bytes) -> NatsResponse:
        measure_id, reply = handlers.measure_reply(documents(), body)
        if measure_id is not None:
            trace.get_current_span().set_attribute("shinchoku.measure_id", measure_id)
        return NatsResponse(reply, headers=JSON_HEADERS)
