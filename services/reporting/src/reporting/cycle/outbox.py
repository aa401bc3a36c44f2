"""Sending the revisions the writer made on PUBLICATIONS: `published.{fy}.{q}` and `restated.{fy}.{q}`.

The writer's transaction writes each revision to `publications` (not sent); this loop, in the service process
(which follows the catalog the documents need), builds each document, publishes it with
`Nats-Msg-Id = published|restated.fy.q.revision` and marks it sent. A crash between the publish and the mark sends
it again with the same id, which the broker drops (PUBLICATIONS keeps a day of ids); replicas sending at once do
the same. Revisions of a quarter go out in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from nats.aio.client import Client
from sqlalchemy import Engine

from contracts.catalog import Measure
from contracts.cycle import canonical_json
from contracts.streams import MSG_ID_HEADER, PUBLICATIONS_STREAM, publication_msg_id, publication_subject
from reporting.cycle import publications
from shinchoku_runtime.db import in_thread

log = logging.getLogger(__name__)

#: How often the outbox looks for unsent revisions when nothing woke it.
POLL_SECONDS = 1.0


class PublicationOutbox:
    def __init__(self, engine: Engine, measures: Callable[[], Sequence[Measure] | None]) -> None:
        self._engine = engine
        #: The catalog's measures, or None while it is not loaded (nothing is built then).
        self._measures = measures
        self.wake = asyncio.Event()
        self.sent = 0

    def send_pending(self) -> list[tuple[str, bytes, str, tuple[int, int, int]]]:
        """(subject, body, msg id, key) of each unsent revision, documents built (in a thread)."""
        measures = self._measures()
        if measures is None:
            return []
        out = []
        for fy, q, rev in publications.unsent(self._engine):
            this = publications.revision(self._engine, measures, fy, q, rev)
            previous = publications.revision(self._engine, measures, fy, q, rev - 1) if rev > 1 else None
            if this is None:
                continue
            body = canonical_json(publications.message(this, previous))
            out.append((publication_subject(fy, q, rev), body, publication_msg_id(fy, q, rev), (fy, q, rev)))
        return out

    async def run(self, nc: Client) -> None:
        js = nc.jetstream()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=POLL_SECONDS)
            self.wake.clear()
            try:
                pending = await in_thread(self.send_pending)
                for subject, body, msg_id, key in pending:
                    await js.publish(
                        subject, body, headers={MSG_ID_HEADER: msg_id}, stream=PUBLICATIONS_STREAM.name, timeout=5
                    )
                    await in_thread(publications.mark_sent, self._engine, *key)
                    self.sent += 1
                    log.info("published %s (%s)", subject, msg_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # NATS or the database away: the revisions stay unsent, tried again
                log.warning("could not send the publications; retrying", exc_info=True)
                await asyncio.sleep(POLL_SECONDS)
