"""Ingest's admission rules: contract v1's, written once in `contracts.admission` and re-exported here."""

from __future__ import annotations

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
