"""NATS subjects, streams, consumers and buckets shared by every service (binding).

This is the one definition of each stream. Services declare streams only from here, so that no
service silently rewrites another's stream settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.agencies import Agency

STATUS_SUBJECT_PREFIX = "status"
STATUS_STREAM_NAME = "STATUS"
ACCEPTED_SUBJECT_PREFIX = "accepted"
REJECTED_SUBJECT_PREFIX = "rejected"

# The reporting cycle (contracts.cycle). The secretariat's commands, on STATUS with the reports (one order):
REVIEW_SUBJECT_PREFIX = "review"
CLOSE_SUBJECT_PREFIX = "close"
BACKFILL_SUBJECT_PREFIX = "backfill"
# What ingest admitted of them, on ACCEPTED with the admitted reports (admitted backfills are on `accepted.`):
REVIEWED_SUBJECT_PREFIX = "reviewed"
CLOSED_SUBJECT_PREFIX = "closed"
# What reporting publishes, on PUBLICATIONS:
PUBLISHED_SUBJECT_PREFIX = "published"
RESTATED_SUBJECT_PREFIX = "restated"
# What reporting raises and resolves, on ALERTS (`alert.{agency}.{kind}`, contracts.alerts):
ALERT_SUBJECT_PREFIX = "alert"

#: Request-reply subject the catalog answers with one measure (payload: the measure id).
CATALOG_MEASURE_GET = "catalog.measure.get"
#: The catalog publishes a CatalogChanged event here whenever the registry changes.
CATALOG_CHANGED = "catalog.changed"
#: Key-value bucket mirroring the registry: key = measure id, value = Measure JSON.
CATALOG_BUCKET = "CATALOG"

INGEST_DURABLE = "ingest"
REPORTING_DURABLE = "reporting"

#: Header carrying the duplicate-suppression id on ACCEPTED and REJECTED.
MSG_ID_HEADER = "Nats-Msg-Id"


def status_subject(agency: Agency | str, measure_id: str) -> str:
    return f"{STATUS_SUBJECT_PREFIX}.{agency}.{measure_id}"


def accepted_subject(agency: Agency | str, measure_id: str) -> str:
    return f"{ACCEPTED_SUBJECT_PREFIX}.{agency}.{measure_id}"


def rejected_subject(agency: Agency | str) -> str:
    return f"{REJECTED_SUBJECT_PREFIX}.{agency}"


def accepted_msg_id(agency: Agency | str, event_id: str) -> str:
    """ACCEPTED's `Nats-Msg-Id` of an admission: agency-qualified, since an event_id is only unique per agency
    (another agency's use of the same id must not make the broker drop this admission as a duplicate)."""
    return f"{agency}:{event_id}"


def command_msg_id(kind: str, command_id: str) -> str:
    """ACCEPTED's `Nats-Msg-Id` of an admitted command: `review:{review_id}` or `close:{close_id}` (the command's
    kind, then its id: the secretariat's ids never collide with an agency's `{agency}:{event_id}`)."""
    return f"{kind}:{command_id}"


def review_subject(agency: Agency | str, measure_id: str) -> str:
    """Where the secretariat publishes a review of a report (the report's agency and measure)."""
    return f"{REVIEW_SUBJECT_PREFIX}.{agency}.{measure_id}"


def close_subject(fiscal_year: int, quarter: int) -> str:
    return f"{CLOSE_SUBJECT_PREFIX}.{fiscal_year}.{quarter}"


def backfill_subject(agency: Agency | str, measure_id: str) -> str:
    return f"{BACKFILL_SUBJECT_PREFIX}.{agency}.{measure_id}"


def reviewed_subject(agency: Agency | str, measure_id: str) -> str:
    """Where ingest publishes an admitted review (AdmittedReview) on ACCEPTED."""
    return f"{REVIEWED_SUBJECT_PREFIX}.{agency}.{measure_id}"


def closed_subject(fiscal_year: int, quarter: int) -> str:
    """Where ingest publishes an admitted close (AdmittedClose) on ACCEPTED."""
    return f"{CLOSED_SUBJECT_PREFIX}.{fiscal_year}.{quarter}"


def published_subject(fiscal_year: int, quarter: int) -> str:
    return f"{PUBLISHED_SUBJECT_PREFIX}.{fiscal_year}.{quarter}"


def restated_subject(fiscal_year: int, quarter: int) -> str:
    return f"{RESTATED_SUBJECT_PREFIX}.{fiscal_year}.{quarter}"


def publication_subject(fiscal_year: int, quarter: int, revision: int) -> str:
    """Revision 1 of a quarter is its publication; every later revision a restatement."""
    if revision < 1:
        raise ValueError(f"revisions start at 1, not {revision}")
    return published_subject(fiscal_year, quarter) if revision == 1 else restated_subject(fiscal_year, quarter)


def publication_msg_id(fiscal_year: int, quarter: int, revision: int) -> str:
    """The Nats-Msg-Id of a quarter's revision on PUBLICATIONS (`published.2024.3.1`, `restated.2024.3.2`): every
    replica and every restart publishing the same revision sends the same id."""
    return f"{publication_subject(fiscal_year, quarter, revision)}.{revision}"


def agency_inbox_prefix(agency: Agency | str) -> str:
    """The inbox prefix an agency's client must use to receive JetStream acks."""
    return f"_INBOX_{agency}"


@dataclass(frozen=True, slots=True)
class SubjectParts:
    agency: str
    measure_id: str


def parse_status_subject(subject: str, *, prefix: str = STATUS_SUBJECT_PREFIX) -> SubjectParts | None:
    """Split `status.{agency}.{measure_id}` (or `{prefix}.{agency}.{measure_id}`: `review`, `backfill`, `accepted`,
    `reviewed`); None when the subject has another shape.

    The agency part is returned as written (the broker's permissions decide who may publish it).
    """
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or not parts[2]:
        return None
    return SubjectParts(agency=parts[1], measure_id=parts[2])


@dataclass(frozen=True, slots=True)
class QuarterParts:
    fiscal_year: int
    quarter: int


def parse_quarter_subject(subject: str, *, prefix: str = CLOSE_SUBJECT_PREFIX) -> QuarterParts | None:
    """Split `close.{fy}.{q}` (or `{prefix}.{fy}.{q}`: `closed`, `published`, `restated`); None when the subject has
    another shape (the year is not four digits, the quarter not 1–4)."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != prefix:
        return None
    year, quarter = parts[1], parts[2]
    if len(year) != 4 or not year.isdigit() or quarter not in ("1", "2", "3", "4"):
        return None
    return QuarterParts(fiscal_year=int(year), quarter=int(quarter))


#: The largest status event (or command) ingest decides: anything longer is `malformed`
#: (`contracts.admission.MAX_PAYLOAD_BYTES` is this).
MAX_STATUS_PAYLOAD_BYTES = 64 * 1024
#: What a STATUS message's headers may add (a traceparent, a tracestate, a batch's headers): the broker counts
#: headers and payload together against `max_msg_size`.
HEADER_SLACK_BYTES = 4 * 1024
#: Per (agency, measure) subject, an agency's STATUS stream (below) keeps at most this many messages and refuses the
#: next one (discard new per subject): a ministry reports a measure a few times a quarter, so 2,000 is centuries
#: of honest use, while a runaway client filling one subject stops at 2,000 x 68 KiB = 136 MiB.
STATUS_MAX_MSGS_PER_SUBJECT = 2_000
#: What the broker adds to a message it copies from an agency's stream into STATUS: a `Nats-Stream-Source` header
#: naming the origin stream, its sequence and the subject (a subject is at most 4 KiB, nats-server's control line).
#: STATUS takes that much more than an agency's stream, so a copy is never refused (a refused copy would stall the
#: agency's source for good).
SOURCE_HEADER_SLACK_BYTES = 8 * 1024

# --- Each agency's share of STATUS (issue #15: one agency cannot fill the disk or starve the others) -----------
#
# NATS bounds storage per stream and per subject, never per publisher inside one stream, and an agency may
# publish on any `status.{agency}.{token}` (ingest rejects an unknown measure, but the broker stores it first).
# So each agency's reports land in a stream of its own, `STATUS_{agency}` (subjects `status.{agency}.>`), bounded
# in bytes and messages with discard new: once over its share the agency's next publish is refused with a
# JetStream error (503 "maximum bytes exceeded" / "maximum messages exceeded"), at once, nothing stored, while
# every other agency goes on. STATUS *sources* the 17 agency streams: it still holds every
# `status.{agency}.{measure_id}` message, with the secretariat's commands, in one order, and ingest still reads
# STATUS alone. The receipt time that decides timeliness is STATUS's own timestamp of the copy (DESIGN.md
# "Rollup semantics"): milliseconds after the agency's PubAck; when STATUS cannot take writes the copy waits in the
# agency's stream and is received when STATUS is back, the moment a publish refused by STATUS alone would have
# been resent. Why not the alternatives (deploy/OPERATIONS.md "Bounded input" has the figures): publish rights
# narrowed to the measures an agency leads leave a 15 GiB worst case for `digital` (114 measures x 136 MiB) and
# refuse an unknown measure with a permissions violation, which a JetStream publisher sees only as a timeout;
# one NATS account per agency needs cross-account imports for every stream, consumer and inbox.

#: Default share of one agency (the administrator's `streams apply` may set others: `AgencyQuota`). Honest use
#: is small: `digital` leads 114 measures; at a few reports of ~2-4 KiB per measure and quarter that is well under
#: 10 MiB and 2,000 messages a year, so 256 MiB / 100,000 messages is decades of reporting, and a runaway client
#: stops there. JetStream reserves a stream's `max_bytes` on each node that holds it: the 17 shares take
#: 17 x 256 MiB = 4.25 GiB of every node's JetStream storage up front (a stream that does not fit is refused with
#: "insufficient storage"), which also means no other stream can take an agency's share from it.
AGENCY_STATUS_MAX_BYTES = 256 * 1024 * 1024
AGENCY_STATUS_MAX_MSGS = 100_000


def agency_status_stream(agency: Agency | str) -> str:
    """The stream that takes an agency's reports (`status.{agency}.>`) before STATUS sources them: the stream its
    PubAcks name."""
    return f"{STATUS_STREAM_NAME}_{agency}"


def publish_stream(subject: str) -> str:
    """The stream a publish on `subject` is stored in first (what a client expects in its PubAck): an agency's
    own stream for `status.{agency}.…`, STATUS for the secretariat's commands."""
    parts = subject.split(".")
    if len(parts) >= 3 and parts[0] == STATUS_SUBJECT_PREFIX and parts[1]:
        return agency_status_stream(parts[1])
    return STATUS_STREAM_NAME


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream as the administrator declares it and every service checks it (file storage, limits
    retention). Only the administrative identity creates or changes a stream (`shinchoku streams apply`); a service
    that finds a live stream different from this refuses to start."""

    name: str
    subjects: tuple[str, ...]
    duplicate_window_seconds: float
    description: str
    max_msg_size: int = 1024 * 1024 + 64 * 1024
    #: Atomic batch publishing (nats-server 2.12+): a batch is stored all-or-nothing with one write, which is
    #: what makes `sync_interval: always` affordable (one fsync per batch instead of one per message).
    allow_atomic: bool = True
    #: -1: no bound per subject. With a bound, the subject's next message is refused (discard new per subject).
    max_msgs_per_subject: int = -1
    #: The logs are append-only: no message is deleted, no stream purged, by anybody (the administrator included).
    deny_delete: bool = True
    deny_purge: bool = True
    #: The subjects the stream listens on, when not all of `subjects` (what it holds): STATUS holds
    #: `status.>` but takes it from the agencies' streams it sources, not from publishers.
    listens: tuple[str, ...] | None = None
    #: Streams whose messages this one copies in (JetStream sources), in this order.
    sources: tuple[str, ...] = ()
    #: -1: no bound. With a bound the stream refuses the next message (discard new), it never drops an old one.
    max_bytes: int = -1
    max_msgs: int = -1

    @property
    def listened(self) -> tuple[str, ...]:
        return self.subjects if self.listens is None else self.listens


def agency_status_spec(
    agency: Agency | str, *, max_bytes: int = AGENCY_STATUS_MAX_BYTES, max_msgs: int = AGENCY_STATUS_MAX_MSGS
) -> StreamSpec:
    """An agency's own STATUS stream: its share, refused beyond (see "Each agency's share of STATUS" above)."""
    return StreamSpec(
        name=agency_status_stream(agency),
        subjects=(f"{STATUS_SUBJECT_PREFIX}.{agency}.>",),
        duplicate_window_seconds=1.0,
        description=f"Status events of {agency} as published, bounded, sourced into STATUS (its share of STATUS)",
        max_msg_size=MAX_STATUS_PAYLOAD_BYTES + HEADER_SLACK_BYTES,
        max_msgs_per_subject=STATUS_MAX_MSGS_PER_SUBJECT,
        max_bytes=max_bytes,
        max_msgs=max_msgs,
    )


AGENCY_STATUS_STREAMS: tuple[StreamSpec, ...] = tuple(agency_status_spec(a) for a in Agency)

#: STATUS keeps the broker's minimum duplicate window: de-duplication there is ingest's job, by
#: event_id, for ever, so that a conflicting resend is always seen and rejected.
#: Subjects are added at the end only: `subjects[0]` is what consumers of the first contract filter on.
#: It listens only to the secretariat's commands; the ministries' reports come from their own streams (sources),
#: so its limits stay above theirs: a copy it refused would stall that agency's source. Per subject it takes twice
#: an agency stream's bound (a subject's messages stored before the agency streams existed, then the agency
#: stream's own 2,000).
STATUS_STREAM = StreamSpec(
    name=STATUS_STREAM_NAME,
    subjects=(
        f"{STATUS_SUBJECT_PREFIX}.>",
        f"{REVIEW_SUBJECT_PREFIX}.>",
        f"{CLOSE_SUBJECT_PREFIX}.>",
        f"{BACKFILL_SUBJECT_PREFIX}.>",
    ),
    listens=(f"{REVIEW_SUBJECT_PREFIX}.>", f"{CLOSE_SUBJECT_PREFIX}.>", f"{BACKFILL_SUBJECT_PREFIX}.>"),
    sources=tuple(spec.name for spec in AGENCY_STATUS_STREAMS),
    duplicate_window_seconds=1.0,
    description="Status events as ministries publish them, and the secretariat's commands, in one order",
    max_msg_size=MAX_STATUS_PAYLOAD_BYTES + HEADER_SLACK_BYTES + SOURCE_HEADER_SLACK_BYTES,
    max_msgs_per_subject=2 * STATUS_MAX_MSGS_PER_SUBJECT,
)
#: ACCEPTED's and REJECTED's duplicate window: longer than ingest's retry horizon with its default settings
#: (~44 min: `ingest.config.retry_horizon`), so that the broker drops every copy ingest's own retries publish.
#: Ingest refuses to start with settings, or a live stream, that break this.
PUBLISHED_DUPLICATE_WINDOW = 60 * 60.0

ACCEPTED_STREAM = StreamSpec(
    name="ACCEPTED",
    subjects=(f"{ACCEPTED_SUBJECT_PREFIX}.>", f"{REVIEWED_SUBJECT_PREFIX}.>", f"{CLOSED_SUBJECT_PREFIX}.>"),
    duplicate_window_seconds=PUBLISHED_DUPLICATE_WINDOW,
    description=(
        "Admitted status events, reviews and closes: the canonical log, in one order. Nats-Msg-Id = "
        "{agency}:{event_id} for reports, review:{review_id} and close:{close_id} for the secretariat's commands. "
        "Every message carries its "
        "id and readers count by it: a copy republished after the duplicate window (an outage healed by "
        "ingest's outbox) is the same admission, never a second one"
    ),
)
REJECTED_STREAM = StreamSpec(
    name="REJECTED",
    subjects=(f"{REJECTED_SUBJECT_PREFIX}.>",),
    duplicate_window_seconds=PUBLISHED_DUPLICATE_WINDOW,
    description=(
        "Rejected messages with the original bytes and a reason code. Nats-Msg-Id = rejection_id (STATUS-{seq}): "
        "readers count by rejection_id"
    ),
    # A rejection carries the original bytes (at most STATUS's largest message) base64-encoded, plus its reason.
    max_msg_size=128 * 1024,
)

#: Written by reporting only; agencies and the public read it. A long duplicate window: publications are few, and a
#: replica or a restart publishing a revision again within it is dropped by the broker (reporting also checks
#: the stream's last publication of the quarter before it publishes).
PUBLICATIONS_STREAM = StreamSpec(
    name="PUBLICATIONS",
    subjects=(f"{PUBLISHED_SUBJECT_PREFIX}.>", f"{RESTATED_SUBJECT_PREFIX}.>"),
    duplicate_window_seconds=24 * 3600.0,
    description="Closed quarters' rollups as published and restated (Nats-Msg-Id = published|restated.fy.q.revision)",
)

#: Written by reporting only (DESIGN.md "Alerts"); an agency reads `alert.{agency}.>`, the secretariat `alert.>`.
#: Nats-Msg-Id = `contracts.alerts.alert_msg_id` (alert id, state, occurrence): a raise or resolve that a replica,
#: a restart or a rebuild publishes again within the window is dropped by the broker (reporting's outbox also
#: marks what it published).
ALERTS_STREAM = StreamSpec(
    name="ALERTS",
    subjects=(f"{ALERT_SUBJECT_PREFIX}.>",),
    duplicate_window_seconds=24 * 3600.0,
    description="Alerts raised and resolved (alert.{agency}.{kind}; Nats-Msg-Id = {alert_id}:{state}:{occurrence})",
)

#: The shared streams (the binding names). `ALL_STREAMS` adds the agencies' own STATUS streams, which come first
#: (STATUS sources them).
STREAMS: tuple[StreamSpec, ...] = (
    STATUS_STREAM,
    ACCEPTED_STREAM,
    REJECTED_STREAM,
    PUBLICATIONS_STREAM,
    ALERTS_STREAM,
)

#: The broker's word that it gave up on a STATUS message: `max_deliver` deliveries to ingest and no ack (each
#: replica holding it stopped or hung). Ingest records it as an `undeliverable` rejection.
ALL_STREAMS: tuple[StreamSpec, ...] = (*AGENCY_STATUS_STREAMS, *STREAMS)

INGEST_MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STATUS_STREAM.name}.{INGEST_DURABLE}"
