"""Settling each STATUS message: ack what was done, put back what must wait, dead-letter what cannot wait more.

A fault that is not the message's (database, NATS, catalog unavailable) puts it back with `nak(delay)`,
the delay growing with each delivery; the last permitted delivery dead-letters it on REJECTED as
`undeliverable` instead of letting the broker drop it. A message the broker gave up on without any
replica settling it (each one that held it stopped or hung) is dead-lettered when the broker's
max-deliveries advisory says so.

Never a message whose decision is stored: ingest decided it (an admission, say) and only publishing it
failed. Telling the ministry "NOT admitted" would contradict the store and `/events/{id}`, and its resend
would be an identical duplicate. On its last delivery such a message is acked, and the outbox publishes its
decision when the stream takes writes again (`reconciler`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.commands import id_field
from contracts.events import ReasonCode
from contracts.streams import MSG_ID_HEADER, STATUS_STREAM
from ingest import repository
from ingest.config import retry_delay
from ingest.delivery import Delivery, Fault
from ingest.domain import Reject, clean, readable_event_id
from ingest.observer import BatchObserver
from ingest.publishing import PubAcks
from ingest.records import decision_record, rejected
from ingest.repository import Mark, WriteConflict
from shinchoku_runtime.batchpublish import ack_all
from shinchoku_runtime.db import in_thread
from shinchoku_runtime.propagation import inject_span_context

log = logging.getLogger(__name__)

#: Tries at recording a message the broker gave up on (waiting 2, 4 … 32 s in between: about a minute).
ADVISORY_ATTEMPTS = 6

__all__ = ["ADVISORY_ATTEMPTS", "Settler", "retry_delay"]


class Settler:
    def __init__(
        self,
        *,
        nc: Client,
        engine: sa.Engine,
        observer: BatchObserver,
        pub_acks: PubAcks,
        max_deliver: int,
        retry_delay_max: float,
        publish_timeout: float,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._engine = engine
        self._observer = observer
        self._pub_acks = pub_acks
        self._max_deliver = max_deliver
        self._retry_delay_max = retry_delay_max
        self._publish_timeout = publish_timeout

    async def settle(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Put back what must wait, then acknowledge all the rest at once; the acknowledged ones."""
        done: list[Delivery] = []
        for d in deliveries:
            if d.fault is None:
                done.append(d)
            elif d.stored and d.delivered >= self._max_deliver:
                log.warning(
                    "STATUS-%d: its decision is stored but could not be published in %d deliveries (%s): acked, "
                    "the outbox publishes it",
                    d.seq,
                    d.delivered,
                    clean(d.fault.detail, 200),
                )
                done.append(d)
            else:
                await self._retry_later(d, d.fault)
        if not done:
            return done
        try:
            await ack_all(self._nc, [d.msg for d in done])
        except Exception as e:  # the acks will be lost; the redeliveries are answered from the store
            log.warning("could not ack %d messages (STATUS-%d…): %s", len(done), done[0].seq, e)
        return done

    async def _retry_later(self, d: Delivery, fault: Fault) -> None:
        self._observer.retried(fault)
        if d.delivered >= self._max_deliver:
            await self.dead_letter(d, f"{fault.kind} unavailable: {clean(fault.detail, 200)}")
            return
        delay = retry_delay(d.delivered, self._retry_delay_max)
        # One warning per batch is logged where the fault is seen; this is the per-message detail.
        log.debug(
            "STATUS-%d put back for %.1fs (delivery %d of %d): %s unavailable: %s",
            d.seq,
            delay,
            d.delivered,
            self._max_deliver,
            fault.kind,
            fault.detail,
        )
        try:
            await d.msg.nak(delay=delay)
        except Exception as e:  # without the nak, ack_wait brings it back all the same
            log.warning("could not nak STATUS-%d: %s", d.seq, e)

    async def on_max_deliveries(self, advisory: bytes) -> None:
        """The broker gave up on a STATUS message: `max_deliver` deliveries and no ack, because each replica that
        held it stopped or hung before deciding (a message that fails otherwise is dead-lettered on its last
        delivery by `_retry_later`). Record it as `undeliverable` so that the ministry learns it was not
        admitted; the store's decision for its sequence makes this idempotent across replicas, which all get
        the advisory."""
        try:
            body = json.loads(advisory)
            seq, deliveries = int(body["stream_seq"]), int(body.get("deliveries", self._max_deliver))
        except (ValueError, TypeError, KeyError) as e:
            log.warning("unreadable max-deliveries advisory ignored: %s", clean(repr(advisory), 200), exc_info=e)
            return
        raw = None
        for attempt in range(ADVISORY_ATTEMPTS):  # the advisory comes only once: ride out a short outage
            if attempt:
                await asyncio.sleep(min(self._retry_delay_max, 2.0**attempt))
            try:
                if seq in await in_thread(repository.load_stored, self._engine, seqs=[seq]):
                    return  # decided after all, or dead-lettered on its last delivery
                raw = await self._js.get_msg(STATUS_STREAM.name, seq)
                break
            except Exception as e:  # the store or NATS is away for a moment
                log.warning("max-deliveries advisory for STATUS-%d: %s (attempt %d)", seq, e, attempt + 1)
        if raw is None:
            log.error("STATUS-%d was given up by the broker and could not be recorded as undeliverable", seq)
            return
        msg = Msg(self._nc, subject=raw.subject or "", data=raw.data or b"", headers=raw.headers)
        stored_at = raw.time if raw.time is not None and raw.time.tzinfo is not None else datetime.now(UTC)
        d = self._observer.open(msg, seq=seq, delivered=deliveries, received_at=stored_at)
        try:
            await self.dead_letter(d, "each ingest process that held it stopped or hung before deciding it")
        finally:
            self._observer.close(d)
            self._observer.flush()

    async def dead_letter(self, d: Delivery, why: str) -> None:
        """Publish an `undeliverable` rejection (saying `why`) so that the report is not silently lost: on its
        last delivery, or after the broker gave up on it. Stored first, so the outbox publishes it if REJECTED
        does not take it now; never for a message whose decision is stored already."""
        message = (
            f"処理不能 (undeliverable): ingest could not process this message in {d.delivered} deliveries "
            f"({why}). It was NOT admitted: send the same report again (the same event_id is fine)"
        )
        read_id = readable_event_id(d.data, id_field(d.subject))
        reject = Reject(reason=ReasonCode.undeliverable, message=message, event_id=read_id)
        row = decision_record(d, reject, datetime.now(UTC))
        recorded = False
        try:
            async with self._pub_acks.write_lock:
                await in_thread(repository.write_batch, self._engine, decisions=[row], claims=[], late_admissions=[])
            recorded = True
        except WriteConflict:
            # Decided after all (its commit's answer was lost, or another replica): never say "NOT admitted".
            log.warning("STATUS-%d has a stored decision: not dead-lettered, the outbox publishes it", d.seq)
            await self._ack(d)
            return
        except sa.exc.SQLAlchemyError as e:
            # The store is what is unavailable: the message could not be decided. Should a commit have gone
            # through unseen, the ministry's resend republishes that admission (an identical duplicate).
            log.warning("undeliverable STATUS-%d not recorded in the store: %s", d.seq, e)
        out = rejected(d, reject)
        headers = {MSG_ID_HEADER: out.msg_id}
        inject_span_context(headers, d.span.context)
        try:
            ack = await self._js.publish(
                out.subject, out.payload, stream=out.stream, headers=headers, timeout=self._publish_timeout
            )
        except Exception as e:
            if not recorded:
                # It stays in the STATUS stream (limits retention) for an operator to replay.
                log.error("STATUS-%d dead-lettering failed, message left in STATUS: %s", d.seq, e)
                return
            log.warning("STATUS-%d dead letter stored, not yet published (the outbox publishes it): %s", d.seq, e)
        else:
            if recorded:
                self._pub_acks.add(out.stream, [Mark(d.seq, ack.seq)])
                self._pub_acks.flush_soon()
        self._observer.dead_lettered(d)
        await self._ack(d)

    async def _ack(self, d: Delivery) -> None:
        if not d.msg.reply:  # read back from the stream after the broker gave up on it: nothing to ack
            return
        try:
            await d.msg.ack()
        except Exception as e:  # max_deliver is reached: the broker will not deliver it again anyway
            log.warning("could not ack STATUS-%d: %s", d.seq, e)
