"""Connecting to NATS and declaring the shared streams from the one definition in `contracts`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts.streams import agency_inbox_prefix
from shinchoku_runtime.natstransport import tls_options
from shinchoku_runtime.settings import ServiceSettings
from shinchoku_runtime.streamdefs import apply_streams, stream_config

__all__ = ["connect", "connect_service", "connection_options", "ensure_streams", "stream_config"]

log = logging.getLogger(__name__)


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """As the administrator: the shared streams as defined (see `streamdefs.apply_streams`; services check only)."""
    await apply_streams(js, replicas=replicas)


def _log_errors(name: str) -> Callable[[Exception], Awaitable[None]]:
    async def error_cb(e: Exception) -> None:
        log.warning("nats error (%s): %s", name, e)

    return error_cb


def connection_options(settings: ServiceSettings, *, name: str, **overrides: Any) -> dict[str, Any]:
    """What nats-py's `connect` takes for a service's connection: its servers and credentials, a name, reconnecting
    for ever, errors logged instead of swallowed. The one place a service's connection is described (the FastStream
    broker is built from it too, `broker.make_broker`); TLS when the settings name a CA (`natstransport`);
    `overrides` win."""
    options: dict[str, Any] = {
        "servers": settings.nats_servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "error_cb": _log_errors(name),
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or ""
        # Each user hears its own inbox only (`_INBOX_{user}`): no service reads another's replies.
        options["inbox_prefix"] = agency_inbox_prefix(settings.nats_user)
    options |= tls_options(
        settings.nats_tls_ca_file,
        cert_file=settings.nats_tls_cert_file,
        key_file=settings.nats_tls_key_file,
    )
    options.update(overrides)
    return options


async def connect_service(settings: ServiceSettings, *, name: str, **overrides: Any) -> Client:
    """A service's own NATS connection, from its settings (see `connection_options`)."""
    return await nats.connect(**connection_options(settings, name=name, **overrides))


async def connect(
    url: str | list[str],
    *,
    name: str,
    user: str | None = None,
    password: str | None = None,
    inbox_prefix: str | None = None,
    **kwargs: Any,
) -> Client:
    """A nats-py connection that reconnects for ever and logs its errors instead of swallowing them.

    `url` may name several servers of a cluster, comma-separated (the services' `nats_url` form) or as a list.
    For a service's own connection use `connect_service`, which reads all of this from its settings.
    """
    options: dict[str, Any] = {
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": _log_errors(name),
        **kwargs,
    }
    if user is not None:
        options["user"] = user
        options["password"] = password
    if inbox_prefix is None and user is not None:
        inbox_prefix = agency_inbox_prefix(user)  # every user hears its own inbox only
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    servers = [u.strip() for u in url.split(",") if u.strip()] if isinstance(url, str) else url
    return await nats.connect(servers, **options)
