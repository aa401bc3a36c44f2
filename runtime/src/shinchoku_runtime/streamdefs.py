"""The shared streams as JetStream configurations: applied by the administrator, checked by every service.

Only the administrative identity creates or changes a stream (`shinchoku streams apply`, `python -m
shinchoku_runtime.streamdefs`; `shinchoku up` and the test fixtures apply them as admin before the services start).
The services' NATS users have no right to (`natsconf.service_permissions`): a service checks the live streams it
uses against the definition at start-up, limits and replicas included, and refuses to start, saying which field
differs, instead of rewriting a stream another deployment step owns.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.errors import BadRequestError, NotFoundError

from contracts.agencies import Agency
from contracts.streams import (
    AGENCY_STATUS_MAX_BYTES,
    AGENCY_STATUS_MAX_MSGS,
    STATUS_STREAM,
    STREAMS,
    StreamSpec,
    agency_status_spec,
)

log = logging.getLogger(__name__)


class StreamMissing(RuntimeError):
    """A shared stream does not exist (yet): the administrator has not applied the definitions."""


class StreamDiffers(RuntimeError):
    """A live stream differs from the shared definition: the service refuses to run on it."""

    def __init__(self, stream: str, fields: dict[str, tuple[object, object]]) -> None:
        self.stream = stream
        self.fields = fields
        detail = ", ".join(f"{k} is {live!r}, the definition says {wanted!r}" for k, (live, wanted) in fields.items())
        super().__init__(
            f"stream {stream} differs from the shared definition ({detail}): an administrator changed it, or "
            "another version defines it; apply the definitions as admin (`shinchoku streams apply`) or run "
            "the matching version"
        )


@dataclass(frozen=True)
class AgencyQuota:
    """Each agency's share of STATUS: what its own stream `STATUS_{agency}` takes before refusing (discard new).

    A deployment setting of the administrator (`SHINCHOKU_STREAM_AGENCY_MAX_BYTES`, `…_AGENCY_MAX_MSGS`; the
    defaults are `contracts.streams`'): the services never read the agencies' streams, only STATUS, whose
    definition does not depend on it."""

    max_bytes: int = AGENCY_STATUS_MAX_BYTES
    max_msgs: int = AGENCY_STATUS_MAX_MSGS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgencyQuota:
        env = os.environ if environ is None else environ
        return cls(
            max_bytes=int(env.get("SHINCHOKU_STREAM_AGENCY_MAX_BYTES") or AGENCY_STATUS_MAX_BYTES),
            max_msgs=int(env.get("SHINCHOKU_STREAM_AGENCY_MAX_MSGS") or AGENCY_STATUS_MAX_MSGS),
        )

    def specs(self) -> tuple[StreamSpec, ...]:
        return tuple(agency_status_spec(a, max_bytes=self.max_bytes, max_msgs=self.max_msgs) for a in Agency)


def stream_config(spec: StreamSpec, *, replicas: int = 1) -> StreamConfig:
    """The nats-py StreamConfig for a shared stream spec."""
    per_subject = spec.max_msgs_per_subject > 0
    bounded = spec.max_bytes > 0 or spec.max_msgs > 0
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.listened),
        sources=[StreamSource(name=name) for name in spec.sources] or None,
        description=spec.description,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        # A bound refuses the next message (the publisher hears it); nothing old is dropped.
        discard=DiscardPolicy.NEW if per_subject or bounded else DiscardPolicy.OLD,
        discard_new_per_subject=per_subject,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        max_msgs=spec.max_msgs,
        max_bytes=spec.max_bytes,
        max_age=0,
        duplicate_window=spec.duplicate_window_seconds,
        max_msg_size=spec.max_msg_size,
        num_replicas=replicas,
        allow_atomic=spec.allow_atomic,
        deny_delete=spec.deny_delete,
        deny_purge=spec.deny_purge,
    )


def _normal(key: str, value: Any) -> Any:
    """The server's spelling of an unset value (nats-py leaves None where the server says -1 or 0)."""
    if key in ("max_msgs", "max_bytes", "max_msgs_per_subject", "max_msg_size") and value in (None, 0):
        return -1
    if key in ("max_age", "duplicate_window") and value is None:
        return 0
    if key in ("allow_atomic", "deny_delete", "deny_purge", "discard_new_per_subject", "sealed"):
        return bool(value)
    if key == "num_replicas" and value is None:
        return 1
    if key == "sources":
        return [getattr(source, "name", source) for source in value or ()]
    return value


#: What a service checks: everything that decides what the stream keeps, refuses or drops.
CHECKED = (
    "subjects",
    "sources",
    "storage",
    "retention",
    "discard",
    "discard_new_per_subject",
    "max_msgs",
    "max_bytes",
    "max_age",
    "max_msgs_per_subject",
    "max_msg_size",
    "duplicate_window",
    "num_replicas",
    "allow_atomic",
    "deny_delete",
    "deny_purge",
    "sealed",
)


def differences(live: StreamConfig, wanted: StreamConfig) -> dict[str, tuple[object, object]]:
    """Each checked field where the live stream differs from the definition: field → (live, wanted)."""
    out: dict[str, tuple[object, object]] = {}
    for key in CHECKED:
        have, want = _normal(key, getattr(live, key)), _normal(key, getattr(wanted, key))
        if have != want:
            out[key] = (have, want)
    return out


#: The broker's "no suitable peers for placement": a replicated stream's peers are not all counted by the meta
#: leader (a cluster just started, whose nodes have not all reported in: "…, peer offline"; or too few nodes).
NO_SUITABLE_PEERS = 10005
#: How long a declaration waits for the peers before the broker's refusal stands.
PLACEMENT_WAIT_SECONDS = 30.0

_T = TypeVar("_T")


async def _placed(step: Callable[[], Awaitable[_T]], name: str, wait: float) -> _T:
    """`step()`, again every quarter second while the broker finds no peers for the stream, for up to `wait`."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return await step()
        except BadRequestError as e:
            if e.err_code != NO_SUITABLE_PEERS or time.monotonic() >= deadline:
                raise
            if not said:
                log.info("stream %s: %s; waiting up to %.0fs for the cluster's peers", name, e.description, wait)
                said = True
            await asyncio.sleep(0.25)


async def apply_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    specs: Iterable[StreamSpec] | None = None,
    quota: AgencyQuota | None = None,
    placement_wait: float = PLACEMENT_WAIT_SECONDS,
) -> list[str]:
    """As the administrator: create each shared stream, or bring a live one to the definition. What changed, said.

    By default the agencies' own STATUS streams (with `quota`, else `AgencyQuota.from_env()`) and the shared
    streams. The agencies' streams come before STATUS, which sources them; a STATUS of the first layout (listening
    on `status.>` itself) first stops listening there, so that the agencies' streams can take those subjects.
    A replicated stream the broker cannot place yet (a cluster whose nodes have not all reported in) is tried again
    for up to `placement_wait` seconds.
    """
    if specs is None:
        specs = (*(quota or AgencyQuota.from_env()).specs(), *STREAMS)
    specs = list(specs)
    changes = []
    if any(spec.name != STATUS_STREAM.name and spec.subjects[0].startswith("status.") for spec in specs):
        changes += await _stop_listening_to_reports(js)
    for spec in specs:
        wanted = stream_config(spec, replicas=replicas)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await _placed(lambda: js.add_stream(wanted), spec.name, placement_wait)  # noqa: B023 (awaited here)
            changes.append(f"{spec.name}: created")
            log.info("stream %s created", spec.name)
            continue
        changed = differences(info.config, wanted)
        if changed:
            await _placed(lambda: js.update_stream(wanted), spec.name, placement_wait)  # noqa: B023 (awaited here)
            changes.append(f"{spec.name}: updated {', '.join(changed)}")
            log.warning("stream %s differed from the shared definition in %s: updated", spec.name, sorted(changed))
    return changes


async def _stop_listening_to_reports(js: JetStreamContext) -> list[str]:
    """A live STATUS that still listens on the reports' subjects itself (the layout before the agencies' own
    streams) listens only on the secretariat's commands from now on; what it holds stays."""
    try:
        live = (await js.stream_info(STATUS_STREAM.name)).config
    except NotFoundError:
        return []
    if list(live.subjects or []) == list(STATUS_STREAM.listened):
        return []
    await js.update_stream(dataclasses.replace(live, subjects=list(STATUS_STREAM.listened)))
    log.warning(
        "stream %s: now listens on %s only (the agencies' streams take status.>)",
        STATUS_STREAM.name,
        list(STATUS_STREAM.listened),
    )
    return [f"{STATUS_STREAM.name}: listens on the secretariat's commands only"]


async def check_streams(js: JetStreamContext, specs: Iterable[StreamSpec], *, replicas: int = 1) -> None:
    """As a service: raise StreamMissing or StreamDiffers unless each live stream is exactly its definition."""
    for spec in specs:
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            raise StreamMissing(
                f"stream {spec.name} does not exist: an administrator declares the streams (`shinchoku streams "
                "apply`, or the deployment's stream job) before the services start"
            ) from None
        changed = differences(info.config, stream_config(spec, replicas=replicas))
        if changed:
            raise StreamDiffers(spec.name, changed)


async def apply_as(url: str, user: str, password: str, replicas: int, *, ca_file: Path | None = None) -> list[str]:
    """Connect as `user` (the administrator; TLS verified by `ca_file` when given) and apply the definitions."""
    from shinchoku_runtime.natsclient import connect
    from shinchoku_runtime.natstransport import tls_options

    nc = await connect(
        url,
        name="shinchoku-streams-apply",
        user=user,
        password=password,
        max_reconnect_attempts=0,
        **tls_options(ca_file),
    )
    try:
        return await apply_streams(nc.jetstream(), replicas=replicas)
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m shinchoku_runtime.streamdefs`: apply the shared definitions as the administrator (a deployment's
    one-shot job). The password comes from SHINCHOKU_NATS_ADMIN_PASSWORD (never from the command line)."""
    parser = argparse.ArgumentParser(prog="python -m shinchoku_runtime.streamdefs", description=main.__doc__)
    parser.add_argument("--url", default=os.environ.get("SHINCHOKU_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--user", default=os.environ.get("SHINCHOKU_NATS_ADMIN_USER", "admin"))
    parser.add_argument(
        "--tls-ca-file",
        type=Path,
        default=os.environ.get("SHINCHOKU_NATS_TLS_CA_FILE") or None,
        help="CA that verifies the NATS servers (TLS)",
    )
    parser.add_argument(
        "--replicas", type=int, default=int(os.environ.get("SHINCHOKU_STREAM_REPLICAS", "1")), choices=range(1, 6)
    )
    args = parser.parse_args(argv)
    password = os.environ.get("SHINCHOKU_NATS_ADMIN_PASSWORD")
    if not password:
        parser.error("set SHINCHOKU_NATS_ADMIN_PASSWORD to the admin user's NATS password")
    changes = asyncio.run(apply_as(args.url, args.user, password, args.replicas, ca_file=args.tls_ca_file))
    print("\n".join(changes) if changes else "every stream is as defined")  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
