"""One STATUS message on its way through a batch, what became of it, and why it may have to wait."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from nats.aio.msg import Msg

from contracts.commands import Sender, claim_owner
from ingest.domain import Decision, Read
from ingest.repository import StoredDecision
from ingest.tracing import MessageSpan


class FaultKind(StrEnum):
    """What was unavailable (a metric label and a word in logs and dead letters)."""

    database = "database"
    nats = "nats"
    catalog = "catalog"
    #: The token issuer's keys (a command's sender cannot be verified now).
    auth = "auth"
    #: Other replicas kept storing parts of the batch first.
    conflict = "conflict"
    #: The report a review names may be an earlier STATUS message not settled yet (held by another replica).
    earlier_report = "report"
    #: An unexpected error while processing the message alone.
    error = "error"


@dataclass(frozen=True, slots=True)
class Fault:
    """Something that is not the message's own doing kept it from being settled now: it is retried later."""

    kind: FaultKind
    detail: str


#: What a message ends as: decided in this batch, or decided before (a redelivery answered from the store).
Outcome = Decision | StoredDecision


@dataclass(slots=True, eq=False)
class Delivery:
    """One STATUS message as delivered, with its reading, its outcome and its fault as the batch goes on."""

    msg: Msg
    seq: int
    delivered: int
    subject: str
    #: Whose idempotency claims the message makes: the agency of the subject of a report or a backfilled report
    #: (the one NATS authenticated, for a report), `secretariat` for a review or a close, `unknown` for an alien
    #: subject.
    agency: str
    data: bytes
    received_at: datetime
    span: MessageSpan
    read: Read | None = None
    outcome: Outcome | None = None
    fault: Fault | None = None
    #: Its decision is committed in the store: from then on it is the outbox's to publish, never dead-lettered.
    stored: bool = False
    #: A command's sender, once its bearer token was verified (never the token itself).
    sender: Sender | None = None

    @property
    def rejection_id(self) -> str:
        return f"STATUS-{self.seq}"

    @property
    def trace_id(self) -> str | None:
        return self.span.trace_id

    def fail(self, fault: Fault) -> None:
        """Mark the message to be retried later (the first fault is the one it is retried for)."""
        if self.fault is None:
            self.fault = fault

    def forget(self) -> None:
        """Back to as delivered, to be processed again."""
        self.read = self.outcome = self.fault = self.sender = None
        self.stored = False


def delivery_info(msg: Msg) -> tuple[int, int, datetime]:
    """(stream sequence, deliveries so far, time stored) of a JetStream message, from its reply subject.

    The same fields as `msg.metadata`, read without building its two frozen dataclasses (a few µs a
    message). The reply is `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`
    or, with a domain and account hash, the 12-token form; anything else goes to nats-py, which raises.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[4]), datetime.fromtimestamp(int(tokens[7]) / 1e9, UTC)
    meta = msg.metadata
    return meta.sequence.stream, meta.num_delivered, meta.timestamp


#: The owner of a message's claims, by its subject (`Delivery.agency`).
subject_agency = claim_owner
