"""HTTP calls from the CLI to the running stack, with messages a newcomer can act on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from shinchoku.issuer import bearer_headers
from shinchoku.stack import DEFAULT_DATA_DIR, Stack, StackNotFound
from shinchoku_client.api import detail

__all__ = ["StackUnavailable", "agency_api", "detail", "get", "load_stack"]

if TYPE_CHECKING:
    from shinchoku_client.api import AgencyApi


class StackUnavailable(Exception):
    """The stack (or one of its services) cannot be reached; the message says what to do."""


def load_stack(data_dir: Path | None) -> Stack:
    try:
        return Stack.load(data_dir)
    except StackNotFound as e:
        raise StackUnavailable(str(e)) from None


def _not_running(stack: Stack, service: str, url: str, error: Exception) -> StackUnavailable:
    dd = "" if stack.data_dir == DEFAULT_DATA_DIR else f" --data-dir {stack.data_dir}"
    if stack.running_pid() is None and not stack.external_nats_url:
        return StackUnavailable(f"the stack is not running on {stack.data_dir}: start it with `shinchoku up{dd}`")
    return StackUnavailable(f"the {service} service does not answer at {url} ({error}): see {stack.log_file(service)}")


def get(
    stack: Stack,
    service: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> httpx.Response:
    """GET a service's path; raises StackUnavailable when nothing answers, returns the response otherwise.

    Sent with `headers`, else with `token` (`--token`), else $SHINCHOKU_TOKEN, else a short-lived token of the
    secretariat minted from the data directory (the embedded default: whoever can read the key is the local
    administrator), so that the reading verbs work without copying tokens by hand."""
    if headers is None:
        headers = bearer_headers(stack.data_dir, token)
    url = stack.http[service].rstrip("/") + path
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        return httpx.get(url, params=query, timeout=timeout, headers=headers)
    except httpx.TransportError as e:
        raise _not_running(stack, service, url, e) from None


def agency_api(data_dir: Path | None, agency: str, token: str | None = None) -> AgencyApi:
    """The ministry client's HTTP API as `agency` on the running stack, with `token` (else $SHINCHOKU_TOKEN, else
    one minted from the data directory); StackUnavailable when no stack was started there."""
    from shinchoku.issuer import bearer_headers
    from shinchoku_client.api import AgencyApi

    stack = load_stack(data_dir)
    bearer = bearer_headers(stack.data_dir, token, agency).get("Authorization", "").removeprefix("Bearer ")
    return AgencyApi(
        agency=agency,
        token=bearer or None,
        catalog_url=stack.http["catalog"],
        ingest_url=stack.http["ingest"],
        reporting_url=stack.http["reporting"],
    )
