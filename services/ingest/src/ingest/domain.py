"""Ingest's admission rules: contract v1's, written once in `contracts.admission` and re-exported here."""

from __future__ import annotations

from typing import NamedTuple

from contracts.admission import (
    CLOCK_SKEW_ALLOWANCE,
    MAX_PAYLOAD_BYTES,
    Admit,
    Decision,
    Duplicate,
    PriorRecord,
    Reject,
    Report,
    admit,
    admitted_json,
    claims_event_id,
    clean,
    content_hash,
    decide,
    describe_validation_errors,
    hash_and_json,
    read_report,
    readable_event_id,
)

__all__ = [
    "CLOCK_SKEW_ALLOWANCE",
    "MAX_PAYLOAD_BYTES",
    "Admit",
    "Decision",
    "Duplicate",
    "LateAdmission",
    "NewClaim",
    "PriorRecord",
    "Reject",
    "Report",
    "admit",
    "admitted_json",
    "claims_event_id",
    "clean",
    "content_hash",
    "decide",
    "describe_validation_errors",
    "hash_and_json",
    "read_report",
    "readable_event_id",
]


class NewClaim(NamedTuple):
    """A new idempotency record: an event_id bound to the content it first carried (a row of `event_id_claim`)."""

    event_id: str
    content_hash: str
    agency: str
    first_seq: int
    admitted_seq: int | None


class LateAdmission(NamedTuple):
    """An event_id claimed by an earlier rejected message, now admitted by an identical resend."""

    event_id: str
    admitted_seq: int
