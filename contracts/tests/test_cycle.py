"""The reporting cycle's contracts: reviews, closes, what ingest admits of them, publications and restatements."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from contracts.cycle import (
    AdmittedClose,
    AdmittedReview,
    CloseEvent,
    Published,
    Restated,
    ReviewEvent,
    RollupDocument,
    canonical_json,
    document_sha256,
)
from contracts.streams import (
    ACCEPTED_STREAM,
    PUBLICATIONS_STREAM,
    STATUS_STREAM,
    STREAMS,
    closed_subject,
    parse_quarter_subject,
    parse_status_subject,
    publication_msg_id,
    publication_subject,
    reviewed_subject,
)

SNAPSHOTS = Path(__file__).resolve().parents[1] / "schemas"
STATUSES = ("delayed", "at_risk", "suspended", "not_started", "on_track", "completed", "unreported")


def _review(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "review_id": "5f0c8a1e-2b7d-4c1a-9e3f-7a6b5c4d3e21",
        "event_id": "0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11",
        "decision": "accepted",
        "reviewed_at": "2025-01-20T10:00:00+09:00",
        "reviewer": "重点計画事務局 山田",
    }
    base.update(overrides)
    return base


def _close(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "close_id": "9a3e7c55-0d1f-4b2a-8c6e-1f2e3d4c5b6a",
        "fiscal_year": 2024,
        "quarter": 3,
        "closed_at": "2025-02-03T09:00:00+09:00",
        "closed_by": "重点計画事務局",
    }
    base.update(overrides)
    return base


def _tally(total: int, title: str | None = None) -> dict[str, Any]:
    by_status = dict.fromkeys(STATUSES, 0)
    by_status["on_track"] = total
    tally: dict[str, Any] = {
        "measures_total": total,
        "reported": total,
        "coverage": 1.0 if total else 0.0,
        "on_time": total,
        "on_time_rate": 1.0 if total else 0.0,
        "by_status": by_status,
    }
    if title is not None:
        tally["title"] = title
    return tally


def _document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        **_tally(3),
        "fiscal_year": 2024,
        "quarter": 3,
        "label": "FY2024Q3",
        "period_start": "2024-10-01",
        "period_end": "2024-12-31",
        "on_time_deadline": "2025-01-31T00:00:00+09:00",
        "by_agency": {"mof": _tally(2), "digital": _tally(1)},
        "by_section": {"1": _tally(3, "デジタル化の基本戦略")},
        "review": {"pending": 1, "accepted": 1, "returned": 1},
        "closed": True,
        "revision": 1,
        "published_at": "2025-02-03T00:00:01Z",
        "restated_at": None,
    }
    doc.update(overrides)
    return doc


def test_a_returned_review_says_why() -> None:
    assert ReviewEvent.model_validate(_review()).comment is None
    returned = ReviewEvent.model_validate(_review(decision="returned", comment="KPIの時点が違います"))
    assert returned.decision == "returned"
    for comment in (None, "", "   "):
        with pytest.raises(ValidationError, match="comment is required when returned"):
            ReviewEvent.model_validate(_review(decision="returned", comment=comment))


@pytest.mark.parametrize(
    "overrides",
    [
        {"unexpected": 1},
        {"decision": "rejected"},
        {"comment": "x" * 4001},
        {"reviewed_at": "2025-01-20T10:00:00"},
        {"reviewer": ""},
        {"event_id": "not-a-uuid"},
    ],
)
def test_review_violations(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ReviewEvent.model_validate(_review(**overrides))


@pytest.mark.parametrize(
    "overrides", [{"quarter": 5}, {"fiscal_year": 99999}, {"closed_at": "2025-02-03"}, {"note": "x" * 4001}, {"x": 1}]
)
def test_close_violations(overrides: dict[str, Any]) -> None:
    assert CloseEvent.model_validate(_close()).note is None
    with pytest.raises(ValidationError):
        CloseEvent.model_validate(_close(**overrides))


def test_admitted_wrappers_carry_the_principal_and_the_reviewed_report() -> None:
    review = AdmittedReview.model_validate(
        {
            "review": _review(),
            "report": {"agency": "mof", "measure_id": "1-25", "fiscal_year": 2024, "quarter": 3},
            "principal": "secretariat-yamada",
            "admitted_at": "2025-01-20T01:00:00Z",
            "received_at": "2025-01-20T00:59:59Z",
            "subject": "review.mof.1-25",
        }
    )
    assert review.report.agency == "mof"
    close = AdmittedClose.model_validate(
        {
            "close": _close(),
            "principal": "secretariat-yamada",
            "admitted_at": "2025-02-03T00:00:01Z",
            "received_at": "2025-02-03T00:00:00Z",
            "subject": "close.2024.3",
        }
    )
    assert close.close.quarter == 3


def test_the_digest_is_over_canonical_json() -> None:
    document = RollupDocument.model_validate(_document())
    data = canonical_json(document)
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "デジタル化の基本戦略".encode() in data  # UTF-8, not \\u escapes
    assert document_sha256(document) == hashlib.sha256(data).hexdigest()
    # The same figures parsed back give the same bytes (what a reader verifying a publication does).
    assert canonical_json(RollupDocument.model_validate_json(data)) == data


def test_published_and_restated_validate_against_their_snapshots() -> None:
    document = RollupDocument.model_validate(_document())
    published = Published(
        fiscal_year=2024,
        quarter=3,
        published_at=document.published_at,
        sha256=document_sha256(document),
        rollup=document,
    )
    restated_doc = RollupDocument.model_validate(
        _document(revision=2, restated_at="2025-03-01T00:00:00Z", review={"pending": 2, "accepted": 1, "returned": 0})
    )
    before = dict.fromkeys(STATUSES, 0) | {"on_track": 3}
    after = dict.fromkeys(STATUSES, 0) | {"on_track": 2, "delayed": 1}
    restated = Restated.model_validate(
        {
            "fiscal_year": 2024,
            "quarter": 3,
            "revision": 2,
            "previous_revision": 1,
            "restated_at": "2025-03-01T00:00:00Z",
            "sha256": document_sha256(restated_doc),
            "rollup": restated_doc.model_dump(mode="json"),
            "changes": [
                {
                    "measure_id": "1-25",
                    "agency": "mof",
                    "before": {"status": "on_track", "on_time": True, "review": "returned"},
                    "after": {"status": "delayed", "on_time": False, "review": "pending"},
                    "event_ids": ["0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a12"],
                }
            ],
            "by_status_before": before,
            "by_status_after": after,
        }
    )
    for name, event in (("published.v1", published), ("restated.v1", restated)):
        schema = json.loads((SNAPSHOTS / f"{name}.schema.json").read_text("utf-8"))
        jsonschema.validate(json.loads(event.model_dump_json()), schema)
    with pytest.raises(ValidationError):
        Published.model_validate({**published.model_dump(), "revision": 2})
    with pytest.raises(ValidationError):  # a digest is 64 lowercase hex digits
        Published.model_validate({**published.model_dump(), "sha256": "ABC"})


def test_cycle_subjects() -> None:
    assert reviewed_subject("mof", "1-25") == "reviewed.mof.1-25"
    assert closed_subject(2024, 3) == "closed.2024.3"
    assert publication_subject(2024, 3, 1) == "published.2024.3"
    assert publication_subject(2024, 3, 2) == "restated.2024.3"
    assert publication_msg_id(2024, 3, 1) == "published.2024.3.1"
    assert publication_msg_id(2024, 3, 7) == "restated.2024.3.7"
    with pytest.raises(ValueError, match="revisions start at 1"):
        publication_subject(2024, 3, 0)
    parts = parse_quarter_subject("close.2024.3")
    assert parts is not None
    assert (parts.fiscal_year, parts.quarter) == (2024, 3)
    assert parse_quarter_subject("closed.2024.3", prefix="closed") is not None
    for bad in ("close.2024.5", "close.24.3", "close.2024", "close.2024.3.1", "closed.2024.3", "close.abcd.1"):
        assert parse_quarter_subject(bad) is None, bad
    review = parse_status_subject("review.mof.1-25", prefix="review")
    assert review is not None
    assert review.agency == "mof"
    assert parse_status_subject("review.mof.1-25") is None


def test_streams_keep_their_first_subject_and_add_the_cycle() -> None:
    """Subjects are added at the end: consumers of the first contract filter on `subjects[0]`."""
    assert STATUS_STREAM.subjects == ("status.>", "review.>", "close.>", "backfill.>")
    assert ACCEPTED_STREAM.subjects == ("accepted.>", "reviewed.>", "closed.>")
    assert PUBLICATIONS_STREAM.subjects == ("published.>", "restated.>")
    assert PUBLICATIONS_STREAM in STREAMS
    every = [s for spec in STREAMS for s in spec.subjects]
    assert len(every) == len(set(every)), "no subject in two streams"
