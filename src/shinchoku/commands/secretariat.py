"""What the secretariat's verbs (`review`, `close`, `import --backfill`) share: who sends, how, and what ingest
decided.

A command goes out as the secretariat twice over: on the broker as its NATS user (which may publish only
`review.>`, `close.>` and `backfill.>`), and in the message as its bearer token (`Authorization: Bearer …`),
which ingest verifies before it admits anything. The token is `--token`, else $SHINCHOKU_TOKEN, else one
minted from the data directory's embedded issuer (whoever can read its key is the stack's administrator).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from contracts.commands import SECRETARIAT
from shinchoku.issuer import LOCAL_TTL, local_token
from shinchoku.stack import DEFAULT_DATA_DIR, Stack, StackNotFound
from shinchoku.stackhttp import StackUnavailable, detail, get
from shinchoku_runtime.natsconf import SECRETARIAT_USER

if TYPE_CHECKING:  # the NATS client is imported when a command is sent (the CLI starts faster without it)
    from nats.js.api import PubAck

    from shinchoku_client.publisher import SecretariatPublisher

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

#: How long `--wait` waits for ingest's decision (s).
WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class Secretariat:
    """Where the secretariat's commands go, and as whom."""

    url: str
    password: str | None
    token: str
    #: The running stack (None with `--nats-url`: nothing to ask about the decision then).
    stack: Stack | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(message)
    return typer.Exit(code)


def invalid(error: ValidationError, what: str) -> typer.Exit:
    """Exit 2 saying which fields of the command are wrong."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in error.errors())
    return fail(f"[red]Not a valid {what}:[/] {escape(problems)}", 2)


def secretariat(
    data_dir: Path | None, nats_url: str | None, token: str | None, *, ttl: timedelta = LOCAL_TTL
) -> Secretariat:
    """The secretariat of the running stack (or of `nats_url`), with its token; exits with what to do if none."""
    stack: Stack | None = None
    password: str | None = None
    url = nats_url
    try:
        stack = Stack.load(data_dir)
    except StackNotFound as e:
        if nats_url is None:
            raise fail(f"[red]{escape(str(e))}[/] (or pass --nats-url nats://secretariat:PASSWORD@host:port)") from None
    if url is None and stack is not None:
        url = stack.nats_plain_url
        try:
            password = stack.password(SECRETARIAT_USER)
        except StackNotFound:
            raise fail(
                f"[red]the stack under {stack.data_dir} has no NATS user for the secretariat yet:[/] restart it "
                "(`shinchoku up`) to generate it"
            ) from None
    chosen = (
        token
        or os.environ.get("SHINCHOKU_TOKEN")
        or local_token(stack.data_dir if stack else DEFAULT_DATA_DIR, ttl=ttl)
    )
    if not chosen:
        raise fail(
            "[red]no token to send as the secretariat:[/] this data directory has no embedded issuer (the stack "
            "trusts another identity provider): pass --token or set SHINCHOKU_TOKEN",
            2,
        )
    assert url is not None
    return Secretariat(url=url, password=password, token=chosen, stack=stack)


def publish(sender: Secretariat, send: Callable[[SecretariatPublisher], Awaitable[PubAck]]) -> PubAck:
    """Run one publish as the secretariat; exits 1 with the reason when it is not published."""
    from shinchoku_client.publisher import PublishError, SecretariatPublisher

    async def run() -> PubAck:
        async with SecretariatPublisher(sender.url, password=sender.password) as publisher:
            return await send(publisher)

    try:
        return asyncio.run(run())
    except (PublishError, OSError) as e:
        raise fail(f"[red]Not published:[/] {escape(str(e))}") from None


def ingest_get(sender: Secretariat, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET from ingest as the secretariat (a token minted from the data directory when it can be, since the
    command's own token may be another principal's, which may not read the secretariat's ids; else the
    command's token); exits 1 when ingest does not answer."""
    assert sender.stack is not None
    local = local_token(sender.stack.data_dir)
    headers = {"Authorization": f"Bearer {local}"} if local else sender.headers
    try:
        return get(sender.stack, "ingest", path, params=params, headers=headers)
    except StackUnavailable as e:
        raise fail(f"[red]{escape(str(e))}[/]") from None


def wait_for_decision(sender: Secretariat, command_id: str, *, owner: str = SECRETARIAT) -> dict[str, Any] | None:
    """Ingest's decision on a command (`/events/{id}`), once it is made; None after WAIT_SECONDS."""
    if sender.stack is None:
        return None
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        response = ingest_get(sender, f"/events/{command_id}", {"agency": owner})
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        if response.status_code != 404:
            raise fail(f"[red]ingest answered {response.status_code}:[/] {escape(detail(response))}")
        time.sleep(0.2)
    return None


def show_decision(sender: Secretariat, command_id: str, *, owner: str = SECRETARIAT) -> None:
    """Wait for ingest's decision and print it; exits 1 when it was rejected or did not come."""
    decided = wait_for_decision(sender, command_id, owner=owner)
    if decided is None:
        raise fail(
            f"[yellow]no decision from ingest within {WAIT_SECONDS:.0f} s[/] (ask again: GET /events/{command_id})"
        )
    if decided["outcome"] == "admitted":
        console.print(f"[green]admitted[/] at {decided.get('admitted_at')} (sent by {decided.get('principal')})")
        return
    console.print(f"[red]rejected: {decided.get('reason')}[/] — {escape(str(decided.get('message')))}")
    raise typer.Exit(1)
