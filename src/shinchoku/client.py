"""The ministry side: publish status reports as one agency, with its own NATS credentials; and the
secretariat's side: publish its commands (reviews, closes, backfilled reports) with its bearer token.

    async with AgencyPublisher(url, agency="mof", password=secret) as publisher:
        ack = await publisher.publish(event)
    async with SecretariatPublisher(url, password=secret) as secretariat:
        ack = await secretariat.publish_review(review, agency="mof", measure_id="1-25", token=token)

A publish waits for JetStream's PubAck. On a timeout it resends the very same bytes (same event_id), so
a retry can never become a second report: ingest de-duplicates by event_id. A publish the broker refuses
(another agency's subject) fails at once with `PermissionDenied` instead of timing out in silence.
Each publish is the root (or a child of the caller's span) of the report's trace: the `traceparent`
header carries it to ingest and on to reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind, StatusCode, TracerProvider

from contracts.agencies import Agency
from contracts.cycle import CloseEvent, ReviewEvent
from contracts.events import StatusEvent
from contracts.streams import (
    STATUS_STREAM,
    agency_inbox_prefix,
    backfill_subject,
    close_subject,
    review_subject,
    status_subject,
)
from shinchoku_runtime.natsconf import SECRETARIAT_USER

log = logging.getLogger(__name__)

_VIOLATION = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class PublishError(Exception):
    """A report could not be published."""


class PermissionDenied(PublishError):
    """The broker refused the publish: an agency may publish only on status.{its own code}.>, the secretariat
    only its commands."""


class PublishTimeout(PublishError):
    """No PubAck after every retry: the report may or may not be stored; resending it is safe."""


class _Publisher:
    """Publishes on STATUS as one NATS user, waiting for the PubAck, retrying with the same bytes (an async
    context manager)."""

    #: The NATS user (and the name of the inbox it may hear), and what it may publish (for messages).
    _user: str
    _may_publish: str

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        password: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        tracer_provider: TracerProvider | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._password = password
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("shinchoku.client")
        self._connect_options = connect_options or {}
        self._nc: Client | None = None
        self._denied: dict[str, asyncio.Future[str]] = {}
        self.errors: list[str] = []

    # --- connection ---

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        options: dict[str, Any] = {
            "name": self._client_name,
            # JetStream acks come back on the user's own inbox: the only one it may subscribe to.
            "inbox_prefix": agency_inbox_prefix(self._user),
            "error_cb": self._on_error,
            "max_reconnect_attempts": 10,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            **self._connect_options,
        }
        if self._password is not None:
            options["user"] = self._user
            options["password"] = self._password
        # A cluster's URLs: a list, or comma-separated as the services take them (SHINCHOKU_NATS_URL).
        url = self.url
        servers = [u.strip() for u in url.split(",") if u.strip()] if isinstance(url, str) else list(url)
        self._nc = await nats.connect(servers, **options)

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None

    async def _on_error(self, error: Exception) -> None:
        text = str(error)
        self.errors.append(text)
        match = _VIOLATION.search(text)
        if match:
            waiter = self._denied.get(match.group(1))
            if waiter is not None and not waiter.done():
                waiter.set_result(text)
            return
        log.warning("nats error (%s): %s", self._user, text)

    @property
    def _client_name(self) -> str:
        return f"shinchoku-{self._user}"

    @property
    def _who(self) -> str:
        return f"the {self._user}"

    # --- publishing ---

    async def publish_raw(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> PubAck:
        """Publish arbitrary bytes on any subject (for tests and tools): the broker still decides who may."""
        return await self._publish(subject, data, headers=headers, attributes={"shinchoku.agency": self._user})

    async def _publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        attributes: dict[str, str],
    ) -> PubAck:
        if self._nc is None:
            raise PublishError("not connected: use `async with AgencyPublisher(...)` or call connect() first")
        js = self._nc.jetstream()
        with self._tracer.start_as_current_span(
            f"{subject} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation": "publish",
                "messaging.destination.name": subject,
                **attributes,
            },
        ) as span:
            # Fixed once: every retry resends exactly these bytes and headers.
            hdrs = dict(headers or {})
            inject(hdrs)
            last: BaseException | None = None
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    span.add_event("retry", {"attempt": attempt})
                try:
                    ack = await self._attempt(js, subject, data, hdrs)
                except PermissionDenied as e:
                    span.set_status(StatusCode.ERROR, str(e))
                    raise
                except (NatsTimeoutError, TimeoutError, NoRespondersError, NoStreamResponseError) as e:
                    last = e
                    continue
                except APIError as e:
                    span.set_status(StatusCode.ERROR, str(e))
                    raise PublishError(f"JetStream refused the publish to {subject}: {e}") from e
                except NatsError as e:
                    span.set_status(StatusCode.ERROR, str(e))
                    raise PublishError(f"publish to {subject} failed: {e}") from e
                span.set_attribute("messaging.nats.stream_sequence", ack.seq)
                return ack
            span.set_status(StatusCode.ERROR, "no PubAck")
            raise PublishTimeout(
                f"no acknowledgement from JetStream for {subject} after {self.retries + 1} attempts "
                f"({type(last).__name__ if last else 'timeout'}); it is safe to publish the same report again"
            )

    async def _attempt(self, js: Any, subject: str, data: bytes, headers: dict[str, str]) -> PubAck:
        """One publish, failing fast when the broker reports a permissions violation for this subject."""
        loop = asyncio.get_running_loop()
        denied: asyncio.Future[str] = self._denied.setdefault(subject, loop.create_future())
        if denied.done():
            self._denied[subject] = denied = loop.create_future()
        publish = asyncio.ensure_future(
            js.publish(subject, data, timeout=self.timeout, stream=STATUS_STREAM.name, headers=dict(headers) or None)
        )
        try:
            await asyncio.wait({publish, denied}, return_when=asyncio.FIRST_COMPLETED)
            if denied.done():
                publish.cancel()
                raise PermissionDenied(
                    f"the broker refused {subject}: {self._who} may publish only on {self._may_publish} "
                    f"({denied.result()})"
                )
            ack: PubAck = publish.result()
            return ack
        finally:
            if not publish.done():
                publish.cancel()
            self._denied.pop(subject, None)


class AgencyPublisher(_Publisher):
    """Publishes status reports on `status.{agency}.{measure_id}` as that agency (an async context manager)."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        agency: Agency | str,
        password: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        tracer_provider: TracerProvider | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            url,
            password=password,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            tracer_provider=tracer_provider,
            connect_options=connect_options,
        )
        self.agency = Agency(agency)
        self._user = self.agency.value
        self._may_publish = f"status.{self.agency.value}.>"

    @property
    def _client_name(self) -> str:
        return f"shinchoku-agency-{self.agency.value}"

    @property
    def _who(self) -> str:
        return f"agency {self.agency.value}"

    async def publish(self, event: StatusEvent) -> PubAck:
        """Publish one report on its agency's subject and return the PubAck."""
        if event.agency != self.agency:
            raise ValueError(
                f"this publisher reports as {self.agency.value}; the event says agency {event.agency.value}"
            )
        subject = status_subject(self.agency, event.measure_id)
        data = event.model_dump_json().encode()
        return await self._publish(
            subject,
            data,
            attributes={
                "shinchoku.event_id": str(event.event_id),
                "shinchoku.measure_id": event.measure_id,
                "shinchoku.agency": self.agency.value,
            },
        )


class SecretariatPublisher(_Publisher):
    """Publishes the secretariat's commands on STATUS as its NATS user, each with the sender's bearer token in
    the `Authorization` header (ingest admits a command only from a verified `secretariat` principal)."""

    _user = SECRETARIAT_USER
    _may_publish = "review.>, close.> and backfill.>"

    async def publish_review(self, review: ReviewEvent, *, agency: Agency | str, measure_id: str, token: str) -> PubAck:
        """Publish a review of `agency`'s admitted report on `measure_id` (its subject is the report's)."""
        return await self.publish_command(
            review_subject(agency, measure_id), review.model_dump_json().encode(), token, command_id=review.review_id
        )

    async def publish_close(self, close: CloseEvent, *, token: str) -> PubAck:
        """Publish the close of a quarter."""
        subject = close_subject(close.fiscal_year, close.quarter)
        return await self.publish_command(subject, close.model_dump_json().encode(), token, command_id=close.close_id)

    async def publish_backfill(self, event: StatusEvent, *, token: str) -> PubAck:
        """Publish an agency's past report (history migrated from spreadsheets) on backfill.{agency}.{measure}."""
        subject = backfill_subject(event.agency, event.measure_id)
        return await self.publish_command(subject, event.model_dump_json().encode(), token, command_id=event.event_id)

    async def publish_command(self, subject: str, data: bytes, token: str, *, command_id: object = None) -> PubAck:
        """Publish a command's bytes with the bearer token (a retry resends the same bytes and token)."""
        attributes = {"shinchoku.sender": SECRETARIAT_USER}
        if command_id is not None:
            attributes["shinchoku.command_id"] = str(command_id)
        return await self._publish(subject, data, headers={"Authorization": f"Bearer {token}"}, attributes=attributes)
