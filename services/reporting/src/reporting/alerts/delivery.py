"""From the outbox to the world: the ALERTS stream, and a deployment's webhook.

`publish_pending` publishes each committed raise and resolve on `alert.{agency}.{kind}` with `Nats-Msg-Id` =
`alert_msg_id` (a copy published again by another replica or after a crash is dropped by the broker), then marks
it published. `WebhookPoster` posts each one, in order, as JSON with a `text` (what Slack-compatible and Microsoft
Teams incoming webhooks accept) and an `Idempotency-Key` header; a failure is retried with exponential backoff
and holds back the later ones, so the receiver sees each change once and in order.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import httpx
from nats.js import JetStreamContext
from sqlalchemy import Engine

from contracts.alerts import alert_msg_id, alert_subject
from contracts.streams import ALERTS_STREAM, MSG_ID_HEADER
from reporting.alerts import store
from reporting.alerts.store import OutboxRow
from shinchoku_runtime.db import in_thread

log = logging.getLogger(__name__)


def msg_id(row: OutboxRow) -> str:
    return alert_msg_id(row.alert_id, row.state, row.occurrence)


async def publish_pending(engine: Engine, js: JetStreamContext) -> int:
    """Publish what the outbox holds unpublished, oldest first; returns how many were published."""
    total = 0
    while True:
        rows = await in_thread(_unpublished, engine)
        if not rows:
            return total
        done = []
        for row in rows:
            await js.publish(
                alert_subject(row.agency, row.kind),
                row.payload.encode(),
                headers={MSG_ID_HEADER: msg_id(row)},
                stream=ALERTS_STREAM.name,
            )
            done.append(row.seq)
        await in_thread(_mark_published, engine, done)
        total += len(done)


def _unpublished(engine: Engine) -> list[OutboxRow]:
    with engine.connect() as conn:
        return store.unpublished(conn)


def _mark_published(engine: Engine, seqs: list[int]) -> None:
    with engine.begin() as conn:
        store.mark_published(conn, seqs, datetime.now(UTC))


def webhook_body(row: OutboxRow) -> dict[str, str]:
    """`{"text": …}`: Slack-compatible and Teams incoming webhooks both show `text` (Markdown-ish)."""
    alert = json.loads(row.payload)
    mark = "🔔 発生 / raised" if row.state == "raised" else "✅ 解消 / resolved"
    return {"text": f"{mark} [{row.kind}] {alert['message_ja']}\n{alert['message_en']}\n(alert_id: {row.alert_id})"}


class WebhookPoster:
    """Delivers the outbox to one webhook URL, in order, each change once."""

    def __init__(
        self,
        engine: Engine,
        url: str,
        *,
        timeout: float = 10.0,
        first_retry: float = 0.5,
        max_retry: float = 300.0,
        max_attempts: int = 30,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._engine = engine
        self._url = url
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._max_attempts = max_attempts
        self._client = client or httpx.AsyncClient(timeout=timeout)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: doubling from `first_retry`, at most `max_retry`."""
        return float(min(self._max_retry, self._first_retry * 2.0 ** max(0, attempts - 1)))

    async def deliver_due(self) -> int:
        """Post every change that is due, in order, until one fails; returns how many were delivered."""
        delivered = 0
        while True:
            now = datetime.now(UTC)
            row = await in_thread(self._next, now)
            if row is None:
                return delivered
            retry_at = now + timedelta(seconds=self.backoff(row.webhook_attempts + 1))
            if not await in_thread(self._claim, row, retry_at):
                return delivered  # another replica is posting it
            if await self._post(row):
                await in_thread(self._delivered, row.seq)
                delivered += 1
                continue
            if row.webhook_attempts + 1 >= self._max_attempts:
                log.error("webhook: giving up on %s after %d attempts", msg_id(row), row.webhook_attempts + 1)
                await in_thread(self._delivered, row.seq)
                continue
            return delivered

    async def _post(self, row: OutboxRow) -> bool:
        try:
            response = await self._client.post(
                self._url,
                json=webhook_body(row),
                headers={
                    "Idempotency-Key": msg_id(row),
                    "X-Shinchoku-Alert-Id": row.alert_id,
                    "X-Shinchoku-Alert-State": row.state,
                },
            )
        except httpx.HTTPError as e:
            log.warning("webhook: %s not delivered (%s: %s); retrying", msg_id(row), type(e).__name__, e)
            return False
        if response.is_success:
            return True
        log.warning("webhook: %s answered %d for %s; retrying", self._url, response.status_code, msg_id(row))
        return False

    def _next(self, now: datetime) -> OutboxRow | None:
        with self._engine.connect() as conn:
            return store.next_for_webhook(conn, now=now)

    def _claim(self, row: OutboxRow, retry_at: datetime) -> bool:
        with self._engine.begin() as conn:
            return store.claim_webhook_attempt(conn, row, retry_at=retry_at)

    def _delivered(self, seq: int) -> None:
        with self._engine.begin() as conn:
            store.mark_delivered(conn, seq, datetime.now(UTC))

    async def close(self) -> None:
        await self._client.aclose()
