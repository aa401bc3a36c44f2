"""What deciding the secretariat's commands needs from the world, gathered for one batch.

- **Who sent each command.** Every review, close and backfill carries its sender's bearer token in the NATS
  header `Authorization: Bearer …`. It is verified with `shinchoku_runtime.auth` against the issuer's keys
  (the same JWKS as HTTP), its lifetime judged at the broker's receipt time of the message (a command that
  waited in STATUS through an outage was sent with a valid token all the same). The result is a `Sender`:
  the role and `sub`, or why the token names nobody. The token itself goes nowhere: not in the store, not in
  a log, not on ACCEPTED or REJECTED (only the message's body is ever copied). Keys that cannot be fetched
  at all are a fault of the platform: the message is retried later, not rejected.
- **The reports reviews name.** A review names an agency's admitted report: ingest's claims say which STATUS
  message admitted it, and that message says its quarter (reports admitted earlier in the same batch are the
  batch decision's own business).
- **The closed quarters**, when the batch holds a close.
- **Whether a review may be judged yet.** Replicas share one durable consumer: the report a review names may be
  in another replica's hands (fetched, not yet decided) when this one gets the review. A review naming a report
  ingest has no record of is judged only once every STATUS message before the batch is settled (the consumer's
  ack floor has reached it); until then it waits like any message whose facts cannot be had now, so that a
  report sent before its review is never missed (`unknown_event` is then the truth).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from nats.js import JetStreamContext

from contracts.commands import COMMAND_PREFIXES, NO_TOKEN, Sender, reviewed_report
from contracts.cycle import ReviewedReport
from contracts.streams import INGEST_DURABLE, STATUS_STREAM
from ingest import repository
from ingest.delivery import Delivery, Fault, FaultKind
from ingest.domain import ClaimKey, QuarterKey, Reject, Report, clean, closes_named, read_message, reports_named
from shinchoku_runtime.auth import InvalidToken, KeysUnavailable, NoPrincipal, TokenVerifier
from shinchoku_runtime.db import in_thread

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"


@dataclass(slots=True)
class CommandFacts:
    """What the batch decision is handed for the batch's commands."""

    senders: dict[int, Sender] = field(default_factory=dict)
    reports: dict[ClaimKey, ReviewedReport] = field(default_factory=dict)
    closed: dict[QuarterKey, str] = field(default_factory=dict)


def is_command(d: Delivery) -> bool:
    """A well-formed review, close or backfill (a malformed one is rejected before anyone asks who sent it)."""
    return d.read is not None and not isinstance(d.read, Reject) and d.subject.partition(".")[0] in COMMAND_PREFIXES


def bearer_token(headers: dict[str, str] | None) -> str | Sender | None:
    """The bearer token in a message's headers; None when there is none; a `Sender` saying what is wrong with
    an Authorization header that holds no bearer token."""
    value = next((v for k, v in (headers or {}).items() if k.lower() == AUTHORIZATION), None)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Sender(problem="its Authorization header is not `Bearer <token>`")
    return token.strip()


def verifier_at(verifier: TokenVerifier, moment: datetime) -> TokenVerifier:
    """`verifier`, judging a token's times (exp, nbf, iat) as of `moment` (its keys shared, not fetched again)."""
    at = int(moment.timestamp())
    return TokenVerifier(
        issuer=verifier.issuer,
        keys=verifier.keys,
        audience=verifier.audience,
        algorithms=verifier.algorithms,
        leeway=verifier.leeway,
        mapping=verifier.mapping,
        now=lambda: at,
    )


class CommandWorld:
    """Gathers `CommandFacts` for a batch: senders verified, reports looked up, closed quarters read."""

    def __init__(self, *, engine: sa.Engine, js: JetStreamContext, verifier: TokenVerifier | None) -> None:
        self._engine = engine
        self._js = js
        self._verifier = verifier

    async def gather(self, deliveries: Sequence[Delivery]) -> CommandFacts:
        """The facts for these deliveries' commands; a delivery whose facts cannot be had now is failed (retried
        later). A store error is raised (the batch is then retried as a whole, like any store error)."""
        facts = CommandFacts()
        commands = [d for d in deliveries if d.fault is None and is_command(d)]
        if not commands:
            return facts
        for d in commands:
            if d.sender is None:
                await self._identify(d)
            if d.sender is not None:
                facts.senders[d.seq] = d.sender
        reviews = [d for d in commands if d.fault is None]
        keys = reports_named(d.read for d in reviews)
        if keys:
            facts.reports = await self._admitted_reports(keys, reviews)
            await self._wait_for_earlier(deliveries, reviews, facts.reports)
        if closes_named(d.read for d in commands):
            facts.closed = await in_thread(repository.load_closed, self._engine)
        return facts

    async def _identify(self, d: Delivery) -> None:
        token = bearer_token(d.msg.headers)
        if token is None:
            d.sender = NO_TOKEN
            return
        if isinstance(token, Sender):
            d.sender = token
            return
        if self._verifier is None:
            d.fail(Fault(FaultKind.auth, "no token verifier is configured (SHINCHOKU_AUTH_*)"))
            return
        try:
            principal = await verifier_at(self._verifier, d.received_at).verify(token)
        except InvalidToken as e:
            d.sender = Sender(problem=f"its token is not valid: {e}")
        except NoPrincipal as e:
            d.sender = Sender(problem=f"its token names no principal of Shinchoku: {e}")
        except KeysUnavailable as e:
            d.fail(Fault(FaultKind.auth, clean(str(e), 300)))
        else:
            agency = principal.agency.value if principal.agency is not None else None
            d.sender = Sender(role=principal.role.value, subject=principal.subject, agency=agency)

    async def _wait_for_earlier(
        self, deliveries: Sequence[Delivery], reviews: list[Delivery], found: dict[ClaimKey, ReviewedReport]
    ) -> None:
        """Put back the reviews naming a report nobody has admitted while a message before the batch is unsettled."""
        in_batch = set(reports_named(d.read for d in deliveries if isinstance(d.read, Report)))
        unknown = [
            d for d in reviews if d.fault is None and not set(reports_named([d.read])) <= (found.keys() | in_batch)
        ]
        if not unknown:
            return
        first = min(d.seq for d in deliveries)
        try:
            floor = (await self._js.consumer_info(STATUS_STREAM.name, INGEST_DURABLE)).ack_floor
            settled = floor.stream_seq if floor is not None and floor.stream_seq is not None else 0
        except Exception as e:  # cannot tell: wait rather than judge on half the facts
            detail = f"could not read the consumer's progress to judge a review: {e}"
            settled = -1
        else:
            detail = (
                f"STATUS-{settled + 1}…STATUS-{first - 1} are not settled yet: one of them may be the report the "
                "review names (another replica holds it)"
            )
        if settled >= first - 1:
            return
        for d in unknown:
            d.fail(Fault(FaultKind.earlier_report, clean(detail, 300)))

    async def _admitted_reports(self, keys: list[ClaimKey], reviews: list[Delivery]) -> dict[ClaimKey, ReviewedReport]:
        """The admitted reports these (agency, event_id) name, with their quarter read from their STATUS message."""
        stored = await in_thread(repository.load_admitted_reports, self._engine, keys=keys)
        found: dict[ClaimKey, ReviewedReport] = {}
        for key, admission in stored.items():
            try:
                raw = await self._js.get_msg(STATUS_STREAM.name, admission.admitted_seq)
                read = read_message(raw.subject or "", raw.data or b"")
                if not isinstance(read, Report) or (read.subject_agency, read.event_id) != key:
                    raise ValueError("it holds another message than the admitted report (was STATUS reset?)")
            except Exception as e:
                detail = f"STATUS-{admission.admitted_seq}, the report a review names, cannot be read: {e}"
                log.warning("%s", clean(detail, 300))
                for d in reviews:
                    if key in reports_named([d.read]):
                        d.fail(Fault(FaultKind.nats, clean(detail, 300)))
                continue
            found[key] = reviewed_report(read)
        return found
