"""Connecting to NATS and declaring the shared streams from the one definition in `contracts`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from contracts.streams import REJECTED_STREAM, STREAMS, StreamSpec
from shinchoku_runtime.natstransport import tls_options
from shinchoku_runtime.settings import ServiceSettings

log = logging.getLogger(__name__)


def stream_config(spec: StreamSpec, *, replicas: int = 1) -> StreamConfig:
    """The nats-py StreamConfig for a shared stream spec."""
    max_msg_size = spec.max_msg_size
    if spec is REJECTED_STREAM:
        # A rejection carries the original bytes base64-encoded plus its reason.
        max_msg_size = 2 * spec.max_msg_size
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        description=spec.description,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=spec.duplicate_window_seconds,
        max_msg_size=max_msg_size,
        num_replicas=replicas,
        allow_atomic=spec.allow_atomic,
    )


def _differs(live: StreamConfig, wanted: StreamConfig) -> list[str]:
    keys = ("subjects", "storage", "retention", "duplicate_window", "max_msg_size", "num_replicas", "discard")
    changed = [k for k in keys if getattr(live, k) != getattr(wanted, k)]
    if bool(live.allow_atomic) != bool(wanted.allow_atomic):
        changed.append("allow_atomic")
    return changed


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the shared streams, or bring a live one back to the shared definition (and say so)."""
    for spec in STREAMS:
        wanted = stream_config(spec, replicas=replicas)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(wanted)
            log.info("stream %s created", spec.name)
            continue
        changed = _differs(info.config, wanted)
        if changed:
            log.warning("stream %s differs from the shared definition in %s: updating", spec.name, changed)
            await js.update_stream(wanted)


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
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    servers = [u.strip() for u in url.split(",") if u.strip()] if isinstance(url, str) else url
    return await nats.connect(servers, **options)
