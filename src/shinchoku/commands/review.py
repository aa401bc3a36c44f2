"""`shinchoku review EVENT_ID --accept | --return --comment TEXT`: the secretariat reviews an admitted report.

    shinchoku review 0b6f8a52-3d0e-4a8e-9d55-8f0c0b0b7a11 --return --comment "KPIの時点が異なります" --wait

The report's agency and measure come from ingest (`GET /events/{id}`, `--agency` when several agencies used
the id); the review is published on `review.{agency}.{measure_id}` as the secretariat, with its token.
Ingest admits it (the report's review state becomes `accepted` or `returned`) or rejects it with a reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from contracts.agencies import Agency
from contracts.cycle import ReviewDecision, ReviewEvent
from shinchoku.commands.agencyarg import require_agency
from shinchoku.commands.secretariat import err, fail, ingest_get, invalid, publish, secretariat, show_decision
from shinchoku.issuer import default_subject
from shinchoku.stackhttp import detail


def reviewed_report(sender: Any, event_id: uuid.UUID, agency: Agency | None) -> tuple[str, str]:
    """(agency, measure_id) of the admitted report `event_id`, as ingest knows it; exits saying why not."""
    whose = f" of {agency.value}" if agency is not None else ""
    response = ingest_get(sender, f"/events/{event_id}", {"agency": agency.value if agency else None})
    if response.status_code == 404:
        raise fail(
            f"[red]ingest knows no report {event_id}{whose}:[/] check the id (`shinchoku trace {event_id}`); a review "
            "names an admitted report"
        )
    if response.status_code == 409:
        agencies = ", ".join(response.json().get("agencies", []))
        raise fail(f"[red]event {event_id} was used by several agencies ({agencies}):[/] say whose with --agency", 2)
    if response.status_code != 200:
        raise fail(f"[red]ingest answered {response.status_code}:[/] {escape(detail(response))}")
    body = response.json()
    if body.get("kind", "report") not in ("report", "backfill"):
        raise fail(f"[red]{event_id} is a {body['kind']} of the secretariat, not a report:[/] nothing to review", 2)
    if body["outcome"] != "admitted":
        raise fail(
            f"[red]report {event_id} of {body['agency']} was rejected ({body['reason']}), not admitted:[/] there is "
            "nothing to review"
        )
    return str(body["agency"]), str(body["measure_id"])


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise fail(f"[red]{what} is not a UUID:[/] {escape(text)}", 2) from None


def review(
    event_id: Annotated[str, typer.Argument(help="The reviewed report's event_id", show_default=False)],
    accept: Annotated[bool, typer.Option("--accept", help="Accept the report")] = False,
    send_back: Annotated[
        bool, typer.Option("--return", help="Return it to its agency (差戻し); needs --comment")
    ] = False,
    comment: Annotated[str | None, typer.Option(help="Why (shown to the agency; ≤ 4000 characters)")] = None,
    agency: Annotated[str | None, typer.Option(help="Whose report, when several agencies used the id")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Who reviews, as recorded (default: your user name)")] = None,
    review_id: Annotated[
        str | None, typer.Option(help="Idempotency key (UUID): reuse it to resend the same review safely")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for ingest's decision and print it")] = False,
    token: Annotated[str | None, typer.Option(help="The secretariat's bearer token (default: minted locally)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
) -> None:
    """Review an admitted report as the secretariat: --accept, or --return --comment TEXT (差戻し)."""
    if accept == send_back:
        raise fail("[red]say what the review decides:[/] --accept or --return (one of them)", 2)
    if send_back and not (comment and comment.strip()):
        raise fail("[red]--comment is required with --return:[/] it tells the agency what to correct", 2)
    reviewed = _uuid(event_id, "EVENT_ID")
    key = _uuid(review_id, "--review-id") if review_id else uuid.uuid4()
    whose = require_agency(agency) if agency is not None else None
    try:
        event = ReviewEvent(
            review_id=key,
            event_id=reviewed,
            decision=ReviewDecision.returned if send_back else ReviewDecision.accepted,
            comment=comment,
            reviewed_at=datetime.now(UTC),
            reviewer=reviewer or default_subject(),
        )
    except ValidationError as e:
        raise invalid(e, "review") from None
    sender = secretariat(data_dir, None, token)
    report_agency, measure_id = reviewed_report(sender, reviewed, whose)
    ack = publish(
        sender, lambda p: p.publish_review(event, agency=report_agency, measure_id=measure_id, token=sender.token)
    )
    print(event.review_id)  # noqa: T201 - alone on stdout, for scripts
    err.print(
        f"review ({event.decision.value}) of {report_agency}'s report on {measure_id} published on "
        f"review.{report_agency}.{measure_id}: {ack.stream} seq {ack.seq}{' (duplicate)' if ack.duplicate else ''}"
    )
    if wait:
        show_decision(sender, str(event.review_id))


def register(app: typer.Typer) -> None:
    app.command("review")(review)
