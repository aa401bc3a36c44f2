"""`shinchoku close FY Q`: the secretariat closes a fiscal quarter after its on-time deadline.

    shinchoku close 2024 3 --wait

Published on `close.{fy}.{q}` as the secretariat, with its token. Ingest admits it once per quarter, and only
when it arrives after the quarter's on-time deadline (30 days after the quarter's end, Asia/Tokyo); reporting
then publishes the quarter's figures. Reports admitted later restate them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape

from contracts.cycle import CloseEvent
from contracts.periods import TOKYO, FiscalQuarter
from shinchoku.commands.secretariat import err, fail, invalid, publish, secretariat, show_decision
from shinchoku.issuer import default_subject


def close(
    fy: Annotated[int, typer.Argument(help="Fiscal year (April start), e.g. 2024", show_default=False)],
    quarter: Annotated[int, typer.Argument(help="Quarter 1–4", min=1, max=4, show_default=False)],
    note: Annotated[str | None, typer.Option(help="A note kept with the close (≤ 4000 characters)")] = None,
    closed_by: Annotated[str | None, typer.Option(help="Who closes, as recorded (default: your user name)")] = None,
    close_id: Annotated[
        str | None, typer.Option(help="Idempotency key (UUID): reuse it to resend the same close")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for ingest's decision and print it")] = False,
    token: Annotated[str | None, typer.Option(help="The secretariat's bearer token (default: minted locally)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
) -> None:
    """Close fiscal quarter FY Q as the secretariat (after its on-time deadline)."""
    try:
        period = FiscalQuarter(fy, quarter)
        event = CloseEvent(
            close_id=uuid.UUID(close_id) if close_id else uuid.uuid4(),
            fiscal_year=fy,
            quarter=quarter,
            closed_at=datetime.now(UTC),
            closed_by=closed_by or default_subject(),
            note=note,
        )
    except ValidationError as e:
        raise invalid(e, "close") from None
    except ValueError as e:
        raise fail(f"[red]{escape(str(e))}[/]", 2) from None
    sender = secretariat(data_dir, None, token)
    ack = publish(sender, lambda p: p.publish_close(event, token=sender.token))
    print(event.close_id)  # noqa: T201 - alone on stdout, for scripts
    deadline = period.on_time_deadline.astimezone(TOKYO).isoformat(timespec="minutes")
    err.print(
        f"close of {period.label} published on close.{fy}.{quarter}: {ack.stream} seq {ack.seq}"
        f"{' (duplicate)' if ack.duplicate else ''}; ingest admits it only after {deadline} (Asia/Tokyo), once"
    )
    if wait:
        show_decision(sender, str(event.close_id))


def register(app: typer.Typer) -> None:
    app.command("close")(close)
