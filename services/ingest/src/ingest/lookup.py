"""Measures as the catalog knows them: an in-memory mirror of the `CATALOG` KV bucket (the runtime's
`CatalogMirror`), with request-reply behind it.

The mirror answers almost every lookup without I/O. A key it does not hold is asked of the catalog on
`catalog.measure.get`; a catalog that does not answer is a transient fault (the message is retried later),
never an `unknown_measure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError, NotFoundError
from opentelemetry.context import Context
from opentelemetry.propagate import inject
from pydantic import ValidationError

from contracts.catalog import Measure
from contracts.events import CatalogChanged
from contracts.streams import CATALOG_CHANGED, CATALOG_MEASURE_GET
from shinchoku_runtime.catalogmirror import CatalogMirror, parse_measure

log = logging.getLogger(__name__)

#: How long a measure the catalog said it does not know is believed absent (the watch clears it sooner).
NEGATIVE_TTL = 10.0


class CatalogUnavailable(Exception):
    """The catalog could not be asked: retry the message later."""


class MeasureMirror:
    """Measures by id, kept current by a watch on the KV bucket; misses fall back to request-reply."""

    def __init__(self, nc: Client, *, timeout: float = 2.0, retry_every: float = 2.0) -> None:
        self._nc = nc
        self._timeout = timeout
        self._measures: dict[str, Measure] = {}
        self._absent: dict[str, float] = {}
        self._bucket = CatalogMirror(nc, on_loaded=self._loaded, on_changed=self._apply, retry_delay=retry_every)
        self._tasks: list[asyncio.Task[None]] = []
        self.loaded = asyncio.Event()

    def __len__(self) -> int:
        return len(self._measures)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._bucket.follow(), name="catalog-kv-watch"))
        await self._nc.subscribe(CATALOG_CHANGED, cb=self._on_changed)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # --- the mirror (until the bucket is loaded, and whenever it lacks a key, lookups use request-reply) ---

    def _loaded(self, measures: dict[str, Measure]) -> None:
        self._measures = measures
        for key in measures:
            self._absent.pop(key, None)
        self.loaded.set()

    def _apply(self, key: str, measure: Measure | None) -> None:
        if measure is None:
            self._measures.pop(key, None)
            return
        self._measures[key] = measure
        self._absent.pop(key, None)

    async def _on_changed(self, msg: Msg) -> None:
        """Refresh the ids a change names, in case the watch missed them."""
        try:
            changed = CatalogChanged.model_validate_json(msg.data)
        except ValidationError:
            return
        for measure_id in changed.changed_ids:
            self._absent.pop(measure_id, None)
            kv = self._bucket.kv
            if kv is None:
                self._measures.pop(measure_id, None)
                continue
            try:
                entry = await kv.get(measure_id)
                if not entry.value:
                    self._apply(measure_id, None)
                elif (measure := parse_measure(measure_id, entry.value)) is not None:
                    self._apply(measure_id, measure)
            except (KeyNotFoundError, NotFoundError):
                self._apply(measure_id, None)
            except Exception as e:
                log.warning("could not refresh measure %s after catalog.changed: %s", measure_id, e)
                self._measures.pop(measure_id, None)

    # --- lookups ---

    def cached(self, measure_id: str) -> tuple[bool, Measure | None]:
        """(known, measure): known is False when the catalog has to be asked."""
        measure = self._measures.get(measure_id)
        if measure is not None:
            return True, measure
        expires = self._absent.get(measure_id)
        if expires is not None and expires > time.monotonic():
            return True, None
        return False, None

    async def ask(self, measure_id: str, context: Context | None = None) -> Measure | None:
        """Ask the catalog for one measure: None when it says not found; CatalogUnavailable when it cannot say.

        The request carries `context` as a W3C traceparent, so the catalog's span joins the report's trace.
        """
        headers: dict[str, str] = {}
        if context is not None:
            inject(headers, context=context)
        try:
            reply = await self._nc.request(
                CATALOG_MEASURE_GET, measure_id.encode(), timeout=self._timeout, headers=headers or None
            )
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as e:
            raise CatalogUnavailable(f"the catalog did not answer {CATALOG_MEASURE_GET} for {measure_id}: {e!r}") from e
        except Exception as e:  # connection closed or reconnecting: transient all the same
            raise CatalogUnavailable(f"could not ask the catalog for {measure_id}: {e!r}") from e
        try:
            body = json.loads(reply.data)
        except ValueError as e:
            raise CatalogUnavailable(f"the catalog answered {measure_id} with something unreadable") from e
        if isinstance(body, dict) and "error" in body:
            if body.get("error") == "not_found":
                self._absent[measure_id] = time.monotonic() + NEGATIVE_TTL
                return None
            raise CatalogUnavailable(f"the catalog could not answer {measure_id}: {body}")
        try:
            measure = Measure.model_validate(body)
        except ValidationError as e:
            raise CatalogUnavailable(f"the catalog answered {measure_id} with an invalid measure: {e}") from e
        self._measures.setdefault(measure_id, measure)
        return measure

    async def lookup_many(
        self, measure_ids: Iterable[str], contexts: Mapping[str, Context] | None = None
    ) -> tuple[dict[str, Measure | None], dict[str, str]]:
        """Look up several measures: (found or known absent, unavailable with why).

        `contexts` gives, per measure id, the trace context a request to the catalog should carry.
        """
        found: dict[str, Measure | None] = {}
        to_ask: list[str] = []
        for measure_id in set(measure_ids):
            known, measure = self.cached(measure_id)
            if known:
                found[measure_id] = measure
            else:
                to_ask.append(measure_id)
        unavailable: dict[str, str] = {}
        if to_ask:
            traced = contexts or {}
            answers = await asyncio.gather(*(self.ask(m, traced.get(m)) for m in to_ask), return_exceptions=True)
            for measure_id, answer in zip(to_ask, answers, strict=True):
                if isinstance(answer, CatalogUnavailable):
                    unavailable[measure_id] = str(answer)
                elif isinstance(answer, BaseException):
                    unavailable[measure_id] = f"{type(answer).__name__}: {answer}"
                else:
                    found[measure_id] = answer
        return found, unavailable
