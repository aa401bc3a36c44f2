"""The ministry side: publish status reports as one agency, with its own NATS credentials; and the
secretariat's side: publish its commands (reviews, closes, backfilled reports) with its bearer token.

    async with AgencyPublisher(url, agency="mof", password=secret) as publisher:
        ack = await publisher.publish(event)
        acks = await publisher.publish_batch(events)          # atomic where the server supports it
    async with SecretariatPublisher(url, password=secret) as secretariat:
        ack = await secretariat.publish_review(review, agency="mof", measure_id="1-25", token=token)

A publish waits for JetStream's PubAck. On a timeout it resends the very same bytes (same event_id), so
a retry can never become a second report: ingest de-duplicates by event_id. A publish the broker refuses
(another agency's subject) fails at once with `PermissionDenied` instead of timing out in silence.
With OpenTelemetry installed, each publish is the root (or a child of the caller's span) of the report's
trace: the `traceparent` header carries it to ingest and on to reporting.

Ingest decides each report after it is stored: `publish_batch(events, wait=True)` (with an `AgencyApi` given
to the publisher) also waits for each decision (`Sent.decision`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nats.js.api import PubAck

from contracts.agencies import Agency
from contracts.commands import SECRETARIAT
from contracts.cycle import CloseEvent, ReviewEvent
from contracts.events import StatusEvent
from contracts.streams import backfill_subject, close_subject, review_subject, status_subject
from shinchoku_client.batch import OutMessage
from shinchoku_client.sending import PermissionDenied, Publisher, PublishError, PublishTimeout, Sent

if TYPE_CHECKING:
    from shinchoku_client.api import AgencyApi

__all__ = [
    "AgencyPublisher",
    "PermissionDenied",
    "PublishError",
    "PublishTimeout",
    "SecretariatPublisher",
    "Sent",
]


class AgencyPublisher(Publisher):
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
        tracer_provider: Any = None,
        connect_options: dict[str, Any] | None = None,
        api: AgencyApi | None = None,
    ) -> None:
        """`api` (the agency's HTTP API, with its token) lets `publish_batch(..., wait=True)` wait for decisions."""
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
        self.api = api
        self._user = self.agency.value
        self._may_publish = f"status.{self.agency.value}.>"

    @property
    def _client_name(self) -> str:
        return f"shinchoku-agency-{self.agency.value}"

    @property
    def _who(self) -> str:
        return f"agency {self.agency.value}"

    def _message(self, event: StatusEvent) -> tuple[OutMessage, dict[str, str]]:
        if event.agency != self.agency:
            raise ValueError(
                f"this publisher reports as {self.agency.value}; the event says agency {event.agency.value}"
            )
        attributes = {
            "shinchoku.event_id": str(event.event_id),
            "shinchoku.measure_id": event.measure_id,
            "shinchoku.agency": self.agency.value,
        }
        return OutMessage(status_subject(self.agency, event.measure_id), event.model_dump_json().encode()), attributes

    async def publish(self, event: StatusEvent) -> PubAck:
        """Publish one report on its agency's subject and return the PubAck."""
        message, attributes = self._message(event)
        return await self._publish(message.subject, message.payload, attributes=attributes)

    async def publish_batch(
        self,
        events: Sequence[StatusEvent],
        *,
        atomic: bool | None = None,
        on_sent: Callable[[Sent], None] | None = None,
        wait: bool = False,
        wait_timeout: float = 60.0,
    ) -> list[Sent]:
        """Publish many reports (or one): in atomic batches (up to 1000 each, stored all or nothing as one
        write) where the server supports them (nats-server 2.12+ and a stream that allows it), else one by one.
        Returns one `Sent` per report, in order; a report that was not stored says why (resending it is safe).
        `on_sent` hears each as it is settled (for a progress bar). `atomic=True` insists on batches, `False`
        refuses them. `wait=True` then waits for ingest's decision on each stored report (`Sent.decision`;
        `ApiError` when one has none after `wait_timeout` seconds)."""
        if wait and self.api is None:
            raise ValueError("waiting for decisions needs the agency's API: AgencyPublisher(..., api=AgencyApi(...))")
        pairs = [self._message(e) for e in events]
        sent = await self._publish_many([m for m, _ in pairs], [a for _, a in pairs], atomic=atomic, on_sent=on_sent)
        if not wait or self.api is None:
            return sent
        stored = [str(events[s.index].event_id) for s in sent if s.ok]
        decided = await self.api.wait_for_decisions(stored, timeout=wait_timeout)
        return [dataclasses.replace(s, decision=decided[str(events[s.index].event_id)]) if s.ok else s for s in sent]


class SecretariatPublisher(Publisher):
    """Publishes the secretariat's commands on STATUS as its NATS user, each with the sender's bearer token in
    the `Authorization` header (ingest admits a command only from a verified `secretariat` principal)."""

    _user = SECRETARIAT
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

    async def publish_backfills(
        self,
        events: Sequence[StatusEvent],
        *,
        token: str,
        on_sent: Callable[[Sent], None] | None = None,
    ) -> list[Sent]:
        """Publish many past reports, one by one (ingest judges each command with its token on arrival)."""
        messages = [
            OutMessage(
                backfill_subject(e.agency, e.measure_id),
                e.model_dump_json().encode(),
                {"Authorization": f"Bearer {token}"},
            )
            for e in events
        ]
        attributes = [{"shinchoku.sender": SECRETARIAT, "shinchoku.command_id": str(e.event_id)} for e in events]
        return await self._publish_many(messages, attributes, atomic=False, on_sent=on_sent)

    async def publish_command(self, subject: str, data: bytes, token: str, *, command_id: object = None) -> PubAck:
        """Publish a command's bytes with the bearer token (a retry resends the same bytes and token)."""
        attributes = {"shinchoku.sender": SECRETARIAT}
        if command_id is not None:
            attributes["shinchoku.command_id"] = str(command_id)
        return await self._publish(subject, data, headers={"Authorization": f"Bearer {token}"}, attributes=attributes)
