"""Publishing on JetStream as one NATS user: the connection (JetStream acks on the user's own inbox), one
message with its PubAck (a retry resends exactly the same bytes; a denied subject fails at once), and many
messages (atomic batches where the server stores them, else a window at a time). The agency's and the
secretariat's publishers (`shinchoku_client.publisher`) build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from contracts.streams import agency_inbox_prefix, publish_stream
from shinchoku_client.batch import (
    MAX_BATCH,
    AtomicUnsupported,
    BatchRefused,
    OutMessage,
    publish_batch,
    supports_atomic,
)
from shinchoku_client.telemetry import Tracing

if TYPE_CHECKING:
    from shinchoku_client.api import Decision

log = logging.getLogger(__name__)

_VIOLATION = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
_RETRYABLE = (NatsTimeoutError, TimeoutError, NoRespondersError, NoStreamResponseError)
#: Reports in flight at once when a batch goes out message by message.
WINDOW = 64


class PublishError(Exception):
    """A report could not be published."""


class PermissionDenied(PublishError):
    """The broker refused the publish: an agency may publish only on status.{its own code}.>, the secretariat
    only its commands."""


class PublishTimeout(PublishError):
    """No PubAck after every retry: the report may or may not be stored; resending it is safe."""


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of one message of a batch: stored (`error` None, with its stream and `seq` when the broker
    said it) or not (`error` says why; resending the same report is safe)."""

    index: int
    stream: str | None
    seq: int | None
    error: str | None = None
    #: Stored as part of an atomic batch (one write for the whole batch).
    atomic: bool = False
    #: Ingest's decision, when the publisher was asked to wait for it.
    decision: Decision | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Publisher:
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
        tracer_provider: Any = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._password = password
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._tracing = Tracing(tracer_provider)
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

    def _connection(self) -> Client:
        if self._nc is None:
            raise PublishError(f"not connected: use `async with {type(self).__name__}(...)` or call connect() first")
        return self._nc

    # --- publishing one message ---

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
        js = self._connection().jetstream()
        # Fixed once: every retry resends exactly these bytes and headers.
        hdrs = dict(headers or {})
        with self._tracing.producer(subject, attributes, hdrs) as span:
            last: BaseException | None = None
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    span.add_event("retry", {"attempt": attempt})
                try:
                    ack = await self._attempt(js, subject, data, hdrs)
                except PermissionDenied:
                    raise
                except _RETRYABLE as e:
                    last = e
                    continue
                except APIError as e:
                    raise PublishError(f"JetStream refused the publish to {subject}: {e}") from e
                except NatsError as e:
                    raise PublishError(f"publish to {subject} failed: {e}") from e
                span.set_attribute("messaging.nats.stream_sequence", ack.seq)
                return ack
            raise PublishTimeout(
                f"no acknowledgement from JetStream for {subject} after {self.retries + 1} attempts "
                f"({type(last).__name__ if last else 'timeout'}); it is safe to publish the same report again"
            )

    async def _attempt(self, js: Any, subject: str, data: bytes, headers: dict[str, str]) -> PubAck:
        """One publish, failing fast when the broker reports a permissions violation for this subject."""
        denied = self._watch_denial(subject)
        publish = asyncio.ensure_future(
            js.publish(
                subject, data, timeout=self.timeout, stream=publish_stream(subject), headers=dict(headers) or None
            )
        )
        try:
            await asyncio.wait({publish, denied}, return_when=asyncio.FIRST_COMPLETED)
            if denied.done():
                publish.cancel()
                raise self._denial(subject, denied.result())
            ack: PubAck = publish.result()
            return ack
        finally:
            if not publish.done():
                publish.cancel()
            self._denied.pop(subject, None)

    def _watch_denial(self, subject: str) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        denied: asyncio.Future[str] = self._denied.setdefault(subject, loop.create_future())
        if denied.done():
            self._denied[subject] = denied = loop.create_future()
        return denied

    def _denial(self, subject: str, text: str) -> PermissionDenied:
        return PermissionDenied(
            f"the broker refused {subject}: {self._who} may publish only on {self._may_publish} ({text})"
        )

    # --- publishing many ---

    async def _publish_many(
        self,
        messages: Sequence[OutMessage],
        attributes: Sequence[dict[str, str]],
        *,
        atomic: bool | None,
        on_sent: Callable[[Sent], None] | None,
    ) -> list[Sent]:
        """Publish each message, in atomic batches of at most MAX_BATCH when the server stores them (`atomic`
        None: when it can; False: never; True: or raise), else one by one, WINDOW at a time. Never raises for
        one message: each `Sent` says what became of its message (a denial raises PermissionDenied)."""
        nc = self._connection()
        results: list[Sent | None] = [None] * len(messages)

        def done(sent: Sent) -> None:
            results[sent.index] = sent
            if on_sent is not None:
                on_sent(sent)

        singles: list[int] = list(range(len(messages)))
        if atomic is not False and messages:
            if not supports_atomic(nc):
                if atomic:
                    raise PublishError(
                        f"the server ({nc.connected_server_version}) does not store atomic batches (nats-server 2.12+)"
                    )
            else:
                singles = []
                for start in range(0, len(messages), MAX_BATCH):
                    indexes = list(range(start, min(start + MAX_BATCH, len(messages))))
                    stored = await self._batch(messages, attributes, indexes, done, strict=bool(atomic))
                    if not stored:
                        # The stream does not take batches: this chunk and the rest go one by one.
                        singles = list(range(start, len(messages)))
                        break
        if singles:
            window = asyncio.Semaphore(WINDOW)

            async def one(i: int) -> None:
                async with window:
                    m = messages[i]
                    try:
                        ack = await self._publish(m.subject, m.payload, headers=m.headers, attributes=attributes[i])
                    except PermissionDenied:
                        raise
                    except PublishError as e:
                        done(Sent(i, None, None, str(e)))
                        return
                    done(Sent(i, ack.stream, ack.seq))

            await asyncio.gather(*(one(i) for i in singles))
        return [r for r in results if r is not None]

    async def _batch(
        self,
        messages: Sequence[OutMessage],
        attributes: Sequence[dict[str, str]],
        indexes: list[int],
        done: Callable[[Sent], None],
        *,
        strict: bool,
    ) -> bool:
        """One atomic batch, retried whole on a timeout; False when the stream does not take batches."""
        nc = self._connection()
        chunk: list[OutMessage] = []
        spans: list[Any] = []
        for i in indexes:
            headers = dict(messages[i].headers)
            spans.append(self._tracing.start(messages[i].subject, attributes[i], headers))
            chunk.append(OutMessage(messages[i].subject, messages[i].payload, headers))
        error: str | None = None
        subjects = {m.subject for m in chunk}
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            denials = {s: self._watch_denial(s) for s in subjects}
            commit = asyncio.ensure_future(publish_batch(nc, chunk, timeout=self.timeout))
            try:
                waiting: set[asyncio.Future[Any]] = {commit, *denials.values()}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                refused = next(((s, d.result()) for s, d in denials.items() if d.done()), None)
                if refused is not None:
                    commit.cancel()
                    denial = self._denial(*refused)
                    for span in spans:
                        self._tracing.end(span, error=str(denial))
                    raise denial
                ack = commit.result()
            except AtomicUnsupported as e:
                if strict:
                    raise PublishError(f"the stream does not store atomic batches: {e}") from e
                for span in spans:
                    self._tracing.end(span, attributes={"shinchoku.batch.unsupported": True})
                return False
            except BatchRefused as e:
                error = f"JetStream refused the batch ({len(chunk)} report(s)): {e}"
                break
            except _RETRYABLE as e:
                error = (
                    f"no acknowledgement from JetStream for a batch of {len(chunk)} after {attempt + 1} attempt(s) "
                    f"({type(e).__name__}); it is safe to publish the same reports again"
                )
                continue
            except NatsError as e:
                error = f"the batch of {len(chunk)} report(s) failed: {e}"
                break
            finally:
                if not commit.done():
                    commit.cancel()
                for s in subjects:
                    self._denied.pop(s, None)
            first_seq = ack.last_seq - ack.count + 1
            for offset, (i, span) in enumerate(zip(indexes, spans, strict=True)):
                seq = first_seq + offset
                self._tracing.end(span, attributes={"messaging.nats.stream_sequence": seq})
                done(Sent(i, ack.stream, seq, atomic=True))
            return True
        for i, span in zip(indexes, spans, strict=True):
            self._tracing.end(span, error=error)
            done(Sent(i, None, None, error))
        return True
