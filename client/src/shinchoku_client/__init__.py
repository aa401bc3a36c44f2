"""shinchoku-client: what a ministry installs to report to Shinchoku (進捗).

    from shinchoku_client import AgencyApi, AgencyPublisher

    async with AgencyPublisher(nats_url, agency="mof", password=password) as publisher:
        sent = await publisher.publish_batch(events)          # atomic where the server supports it
    async with AgencyApi(agency="mof", token=token, ingest_url=..., reporting_url=...) as api:
        decisions = await api.wait_for_decisions(e.event_id for e in events)
        alerts = await api.alerts(state="raised")

The contracts (`contracts.events.StatusEvent`, the admission rules in `contracts.admission`) come with it
(`shinchoku-contracts`). The command line is `shinchoku-client` (template, import, decision, alerts).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shinchoku_client.api import AgencyApi, Alert, ApiError, Decision, NotServed
    from shinchoku_client.publisher import (
        AgencyPublisher,
        PermissionDenied,
        PublishError,
        PublishTimeout,
        SecretariatPublisher,
        Sent,
    )

#: Where each public name lives: imported on first use, so that `shinchoku_client.cells` (say) loads without
#: the NATS and HTTP clients.
_HOMES = {
    "AgencyApi": "api",
    "Alert": "api",
    "ApiError": "api",
    "Decision": "api",
    "NotServed": "api",
    "AgencyPublisher": "publisher",
    "PermissionDenied": "publisher",
    "PublishError": "publisher",
    "PublishTimeout": "publisher",
    "SecretariatPublisher": "publisher",
    "Sent": "publisher",
}
__all__ = [
    "AgencyApi",
    "AgencyPublisher",
    "Alert",
    "ApiError",
    "Decision",
    "NotServed",
    "PermissionDenied",
    "PublishError",
    "PublishTimeout",
    "SecretariatPublisher",
    "Sent",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shinchoku_client' has no attribute {name!r}")
    return getattr(import_module(f"shinchoku_client.{home}"), name)
