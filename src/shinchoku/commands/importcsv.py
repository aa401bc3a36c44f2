"""`shinchoku import FILE.csv --agency A [--dry-run] [--backfill]`: bulk status reports from a spreadsheet export.

Accepted as ministries export them: UTF-8 (with or without BOM) or Shift_JIS/CP932; Japanese or English
column headers (施策番号/measure_id, 年度/fiscal_year, 四半期/quarter, 状況/status, 進捗率/progress,
備考/note, 報告日時/reported_at, 報告者/reporter, KPI/kpis, event_id); Japanese status labels (順調, 遅延,
完了 …); full-width digits and the like (matched after NFKC). A row without an event_id gets one derived
from its content (uuid5), so importing the same file again sends the same ids and nothing twice.

Every row is checked against contract v1 before anything is sent; `--dry-run` also judges each row with
ingest's own admission rules (`contracts.admission`) against the catalog (read via its HTTP API), so that
a row fails exactly when ingest would reject it, and sends nothing. The exit code is 1 when any row failed.

`--backfill` migrates an agency's history: the same rows are sent by the secretariat (its NATS user and its
bearer token) on `backfill.{agency}.{measure_id}`; ingest admits them under the same rules, marked
`backfilled` wherever they appear.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.admission import Reject, judge_event
from contracts.agencies import Agency, agency_from_japanese
from contracts.catalog import Measure
from contracts.events import KpiObservation, Status, StatusEvent
from contracts.periods import TOKYO
from shinchoku.commands.agencyarg import require_agency

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

#: Namespace of event ids derived from a CSV row: uuid5(namespace, canonical content of the report).
IMPORT_NAMESPACE = uuid.UUID("6f1c2b4e-8a53-5d0e-9b57-5f3e0c6a9d21")
#: Reports in flight at once while importing.
WINDOW = 64
#: A backfill's locally minted token lasts the whole import (ingest judges it when each row arrives).
BACKFILL_TOKEN_TTL = timedelta(hours=1)

# Column headers, matched after NFKC, case folding and removing spaces, brackets and underscores.
_HEADERS: dict[str, tuple[str, ...]] = {
    "event_id": ("event_id", "eventid", "イベントid", "報告id", "id"),
    "measure_id": ("measure_id", "measure", "measureid", "施策番号", "施策id", "施策no", "施策", "no", "番号"),
    "agency": ("agency", "省庁", "主担当省庁", "報告省庁", "府省庁"),
    "fiscal_year": ("fiscal_year", "fiscalyear", "fy", "年度"),
    "quarter": ("quarter", "q", "四半期"),
    "status": ("status", "状況", "進捗状況", "ステータス", "状態"),
    "progress": ("progress", "進捗率", "進捗", "進捗(%)", "進捗率(%)", "達成率"),
    "note": ("note", "備考", "コメント", "メモ", "特記事項"),
    "reported_at": ("reported_at", "reportedat", "報告日時", "報告日", "報告時刻"),
    "reporter": ("reporter", "報告者", "担当者", "担当"),
    "kpis": ("kpis", "kpi", "指標", "kpi実績"),
}
#: Japanese status labels (after NFKC) and the contract's codes.
STATUS_LABELS: dict[str, Status] = {
    "順調": Status.on_track,
    "概ね順調": Status.on_track,
    "予定通り": Status.on_track,
    "遅延": Status.delayed,
    "遅れ": Status.delayed,
    "遅延あり": Status.delayed,
    "完了": Status.completed,
    "達成": Status.completed,
    "終了": Status.completed,
    "未着手": Status.not_started,
    "着手前": Status.not_started,
    "要注意": Status.at_risk,
    "懸念あり": Status.at_risk,
    "リスクあり": Status.at_risk,
    "課題あり": Status.at_risk,
    "中断": Status.suspended,
    "休止": Status.suspended,
    "停止": Status.suspended,
}
_ERAS = {"令和": 2018, "平成": 1988, "r": 2018, "h": 1988}


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


def _header_key(text: str) -> str:
    key = nfkc(text).casefold()
    return re.sub(r"[\s_\[\]【】・]", "", key)


_HEADER_INDEX = {_header_key(alias): name for name, aliases in _HEADERS.items() for alias in aliases}


# --- reading the file ----------------------------------------------------------------------------------------


class ImportFileError(Exception):
    """The file as a whole cannot be read (encoding, no header, no measure column)."""


def decode(data: bytes) -> tuple[str, str]:
    """The text of an export and its encoding: UTF-8 (BOM or not), else Shift_JIS/CP932."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "UTF-8 (BOM)"
    try:
        return data.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp932"), "Shift_JIS (CP932)"
    except UnicodeDecodeError as e:
        raise ImportFileError(
            f"the file is neither UTF-8 nor Shift_JIS/CP932 (undecodable byte at offset {e.start}); "
            "save it from Excel as 'CSV UTF-8'"
        ) from None


@dataclass(frozen=True)
class Column:
    field: str
    header: str  # as written in the file


@dataclass
class Sheet:
    columns: list[Column]
    rows: list[tuple[int, dict[str, str]]]  # (line number in the file, field → raw text)
    ignored_headers: list[str] = field(default_factory=list)


def read_sheet(text: str) -> Sheet:
    """Map the header row to contract fields; keep each data row with its line number (the header is line 1)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("the file is empty: expected a header row and one report per row") from None
    columns: list[Column | None] = []
    ignored: list[str] = []
    seen: set[str] = set()
    for raw in header:
        name = _HEADER_INDEX.get(_header_key(raw))
        if name is None or name in seen:
            columns.append(None)
            if raw.strip():
                ignored.append(raw.strip())
            continue
        seen.add(name)
        columns.append(Column(name, raw.strip()))
    if "measure_id" not in seen:
        raise ImportFileError(f"no measure column among the headers {header!r}: name one 施策番号 or measure_id")
    rows: list[tuple[int, dict[str, str]]] = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        row = {c.field: v for c, v in zip(columns, values, strict=False) if c is not None}
        rows.append((line, row))
    return Sheet(columns=[c for c in columns if c is not None], rows=rows, ignored_headers=ignored)


# --- one row → one report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowError:
    line: int
    field: str
    message: str


class CellError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_measure_id(text: str) -> str:
    value = nfkc(text).replace("―", "-").replace("‐", "-").replace("ー", "-")
    match = re.fullmatch(r"(?:\[?No\.?\s*)?([1-6])\s*-\s*0*(\d{1,3})\]?", value, flags=re.IGNORECASE)
    if not match:
        raise CellError("measure_id", f"{text!r} is not a measure number like 1-25")
    return f"{match.group(1)}-{int(match.group(2))}"


def parse_fiscal_year(text: str) -> int:
    value = nfkc(text).casefold().replace(" ", "")
    match = re.fullmatch(r"(?:fy)?(\d{4})(?:年度?)?", value)
    if match:
        return int(match.group(1))
    match = re.fullmatch(r"(令和|平成|r|h)(\d{1,2}|元)(?:年度?)?", value)
    if match:
        year = 1 if match.group(2) == "元" else int(match.group(2))
        return _ERAS[match.group(1)] + year
    raise CellError("fiscal_year", f"{text!r} is not a fiscal year like 2024, 2024年度 or 令和6年度")


def parse_quarter(text: str) -> int:
    value = nfkc(text).casefold().replace(" ", "")
    match = re.fullmatch(r"(?:q|第)?([1-4])(?:q|四半期)?", value)
    if not match:
        raise CellError("quarter", f"{text!r} is not a quarter 1–4 (also Q3, 第3四半期)")
    return int(match.group(1))


def parse_status(text: str) -> Status:
    value = nfkc(text)
    if value.casefold() in Status.__members__:
        return Status(value.casefold())
    label = STATUS_LABELS.get(value.replace(" ", ""))
    if label is None:
        allowed = ", ".join(s.value for s in Status) + "; 順調, 遅延, 完了, 未着手, 要注意, 中断"
        raise CellError("status", f"{text!r} is not a status; use one of {allowed}")
    return label


def parse_progress(text: str) -> float:
    value = nfkc(text).rstrip("%").strip()
    try:
        return float(value)
    except ValueError:
        raise CellError("progress", f"{text!r} is not a percentage 0–100") from None


def parse_reported_at(text: str) -> datetime:
    """RFC 3339; a time without an offset is Japan time (as clerks write it); a bare date is 00:00 JST."""
    value = nfkc(text).replace("/", "-")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise CellError(
                "reported_at", f"{text!r} is not a time like 2024-12-20T17:00:00+09:00 or 2024/12/20 17:00"
            ) from None
        moment = datetime(day.year, day.month, day.day)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=TOKYO)


def parse_kpi(text: str) -> KpiObservation:
    """`TARGET=VALUE@DATE`, e.g. `0=62.5@2025-03-31` (target = the measure's target index, 0-based)."""
    value = nfkc(text)
    match = re.fullmatch(r"(\d+)\s*=\s*([-+0-9.eE]+)\s*%?\s*@\s*(\d{4}-\d{2}-\d{2})", value.replace("/", "-"))
    if not match:
        raise CellError("kpis", f"{text!r} is not TARGET=VALUE@DATE (for example 0=62.5@2025-03-31)")
    try:
        return KpiObservation(target=int(match.group(1)), value=float(match.group(2)), as_of=match.group(3))
    except ValidationError as e:
        raise CellError("kpis", f"{text!r}: {e.errors()[0]['msg']}") from None


def parse_kpis(text: str) -> list[KpiObservation]:
    return [parse_kpi(part) for part in re.split(r"[;；\n]", text) if part.strip()]


def derived_event_id(event: StatusEvent) -> uuid.UUID:
    """The same report (same content) always gets the same id: re-importing a file sends nothing twice."""
    canonical = event.model_dump_json(exclude={"event_id"})
    return uuid.uuid5(IMPORT_NAMESPACE, canonical)


def build_event(
    row: dict[str, str], *, agency: Agency, default_reported_at: datetime | None, columns: dict[str, str]
) -> StatusEvent:
    """A StatusEvent from one row, or CellError naming the column at fault (as headed in the file)."""

    def cell(name: str) -> str | None:
        raw = row.get(name)
        return raw if raw is not None and raw.strip() else None

    def required(name: str) -> str:
        raw = cell(name)
        if raw is None:
            raise CellError(name, "is empty" if name in columns else "no such column in the file")
        return raw

    if (raw_agency := cell("agency")) is not None:
        value = nfkc(raw_agency)
        try:
            named = Agency(value.casefold()) if value.casefold() in Agency.__members__ else agency_from_japanese(value)
        except KeyError:
            raise CellError("agency", f"{raw_agency!r} is not an agency code or name") from None
        if named != agency:
            raise CellError("agency", f"{raw_agency!r} is not {agency.value}: import one agency's reports at a time")
    values: dict[str, Any] = {
        "measure_id": parse_measure_id(required("measure_id")),
        "agency": agency,
        "fiscal_year": parse_fiscal_year(required("fiscal_year")),
        "quarter": parse_quarter(required("quarter")),
        "status": parse_status(required("status")),
    }
    if (raw := cell("reported_at")) is not None:
        values["reported_at"] = parse_reported_at(raw)
    elif default_reported_at is not None:
        values["reported_at"] = default_reported_at
    else:
        raise CellError("reported_at", "is empty (or pass --reported-at for rows without one)")
    if (raw := cell("progress")) is not None:
        values["progress"] = parse_progress(raw)
    if (raw := cell("note")) is not None:
        values["note"] = raw.strip()
    if (raw := cell("reporter")) is not None:
        values["reporter"] = raw.strip()
    if (raw := cell("kpis")) is not None:
        values["kpis"] = parse_kpis(raw)
    raw_id = cell("event_id")
    try:
        values["event_id"] = uuid.UUID(nfkc(raw_id)) if raw_id else uuid.UUID(int=0)
    except ValueError:
        raise CellError("event_id", f"{raw_id!r} is not a UUID (or leave it empty to derive one)") from None
    try:
        event = StatusEvent.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "row"
        raise CellError(name, f"{first['msg']} (got {first.get('input')!r})") from None
    if raw_id is None:
        event = event.model_copy(update={"event_id": derived_event_id(event)})
    return event


# --- the command ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    events: list[tuple[int, StatusEvent]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, same as line)


def validate_rows(sheet: Sheet, *, agency: Agency, default_reported_at: datetime | None) -> Outcome:
    """Every row against contract v1: the reports, and an error per failing row naming its column."""
    outcome = Outcome()
    headers = {c.field: c.header for c in sheet.columns}
    first_line: dict[uuid.UUID, int] = {}
    for line, row in sheet.rows:
        try:
            event = build_event(row, agency=agency, default_reported_at=default_reported_at, columns=headers)
        except CellError as e:
            shown = f"{headers[e.field]} ({e.field})" if e.field in headers and headers[e.field] != e.field else e.field
            outcome.errors.append(RowError(line, shown, e.message))
            continue
        if event.event_id in first_line:
            outcome.duplicates.append((line, first_line[event.event_id]))
            continue
        first_line[event.event_id] = line
        outcome.events.append((line, event))
    return outcome


def _field_label(sheet: Sheet, name: str) -> str:
    headers = {c.field: c.header for c in sheet.columns}
    return f"{headers[name]} ({name})" if name in headers and headers[name] != name else name


def check_catalog(sheet: Sheet, outcome: Outcome, measures: dict[str, Measure | None]) -> None:
    """Judge each report as ingest would if it were sent now (given the catalog): keep those it would admit."""
    now = datetime.now(UTC)
    kept: list[tuple[int, StatusEvent]] = []
    for line, event in outcome.events:
        decision = judge_event(event, now=now, measure=measures.get(event.measure_id))
        if isinstance(decision, Reject):
            column = decision.field.split(".")[0] if decision.field else "(row)"
            outcome.errors.append(RowError(line, _field_label(sheet, column), decision.message))
        else:
            kept.append((line, event))
    outcome.events = kept


def fetch_measures(data_dir: Path | None, ids: Sequence[str]) -> dict[str, Measure | None]:
    """Each measure from the catalog's HTTP API (None when it answers 404)."""
    from shinchoku.stackhttp import detail, get, load_stack

    stack = load_stack(data_dir)
    out: dict[str, Measure | None] = {}
    for measure_id in sorted(set(ids)):
        response = get(stack, "catalog", f"/measures/{measure_id}")
        if response.status_code == 404:
            out[measure_id] = None
        elif response.status_code == 200:
            out[measure_id] = Measure.model_validate(response.json())
        else:
            from shinchoku.stackhttp import StackUnavailable

            raise StackUnavailable(f"catalog answered {response.status_code} for {measure_id}: {detail(response)}")
    return out


def print_errors(outcome: Outcome, file: Path) -> None:
    table = Table(title=f"{file.name}: rows that failed", title_justify="left")
    table.add_column("row", justify="right")
    table.add_column("column")
    table.add_column("problem")
    for e in sorted(outcome.errors, key=lambda e: e.line):
        table.add_row(str(e.line), escape(e.field), escape(e.message))
    err.print(table)


async def publish_all(
    url: str,
    agency: Agency,
    password: str | None,
    events: list[tuple[int, StatusEvent]],
    outcome: Outcome,
    *,
    backfill_token: str | None = None,
) -> int:
    """Publish every report (a window at a time) with a progress bar; failures become row errors. With
    `backfill_token`, as the secretariat's backfill of the agency's history (`password`: the secretariat's)."""
    from shinchoku.client import AgencyPublisher, PublishError, SecretariatPublisher

    window = asyncio.Semaphore(WINDOW)
    published = 0
    with Progress(
        TextColumn("[bold]publishing[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task("publish", total=len(events))
        publisher = (
            SecretariatPublisher(url, password=password)
            if backfill_token is not None
            else AgencyPublisher(url, agency=agency, password=password)
        )
        async with publisher:

            async def one(line: int, event: StatusEvent) -> None:
                nonlocal published
                async with window:
                    try:
                        if isinstance(publisher, SecretariatPublisher):
                            assert backfill_token is not None
                            await publisher.publish_backfill(event, token=backfill_token)
                        else:
                            await publisher.publish(event)
                        published += 1
                    except PublishError as e:
                        outcome.errors.append(RowError(line, "(publish)", str(e)))
                    progress.advance(task)

            await asyncio.gather(*(one(line, event) for line, event in events))
    return published


def import_csv(
    file: Annotated[Path, typer.Argument(help="CSV export: UTF-8 (BOM or not) or Shift_JIS/CP932", exists=True)],
    agency: Annotated[str, typer.Option(help="Agency code the reports are sent as, e.g. mof")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every row against the contract and the catalog; send nothing")
    ] = False,
    reported_at: Annotated[
        str | None, typer.Option(help="reported_at for rows without one (RFC 3339; no offset = Japan time)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the stack (default ./var)")] = None,
    nats_url: Annotated[
        str | None, typer.Option(help="NATS URL (nats://AGENCY:PASSWORD@host:port) instead of the stack's")
    ] = None,
    backfill: Annotated[
        bool,
        typer.Option("--backfill", help="Migrate AGENCY's history: sent by the secretariat, marked backfilled"),
    ] = False,
    token: Annotated[
        str | None, typer.Option(help="--backfill: the secretariat's bearer token (default: minted locally)")
    ] = None,
) -> None:
    """Send one status report per CSV row as AGENCY (Japanese headers and labels accepted); errors per row.
    With --backfill, the secretariat sends them as AGENCY's past reports."""
    from shinchoku.stackhttp import StackUnavailable

    code = require_agency(agency)
    try:
        default_at = parse_reported_at(reported_at) if reported_at else None
        text, encoding = decode(file.read_bytes())
        sheet = read_sheet(text)
    except (ImportFileError, CellError) as e:
        err.print(f"[red]{escape(str(e.args[0] if isinstance(e, CellError) else e))}[/]")
        raise typer.Exit(2) from None
    err.print(
        f"{file.name}: {encoding}, {len(sheet.rows)} row(s); columns: "
        + ", ".join(f"{c.header}→{c.field}" for c in sheet.columns)
    )
    if sheet.ignored_headers:
        err.print(f"[yellow]ignored columns:[/] {', '.join(sheet.ignored_headers)}")
    outcome = validate_rows(sheet, agency=code, default_reported_at=default_at)
    for line, same in outcome.duplicates:
        err.print(f"[dim]row {line} is the same report as row {same}: sent once[/]")

    if dry_run:
        try:
            measures = fetch_measures(data_dir, [e.measure_id for _, e in outcome.events])
        except StackUnavailable as e:
            if outcome.errors:
                print_errors(outcome, file)
            err.print(f"[red]cannot check against the catalog: {escape(str(e))}[/]")
            raise typer.Exit(1) from None
        check_catalog(sheet, outcome, measures)
        if outcome.errors:
            print_errors(outcome, file)
        console.print(
            f"dry run: {len(outcome.events)} row(s) would be admitted, {len({e.line for e in outcome.errors})} "
            "row(s) have errors; nothing was sent"
        )
        raise typer.Exit(1 if outcome.errors else 0)

    from shinchoku.stack import Stack, StackNotFound

    password: str | None = None
    url = nats_url
    backfill_token: str | None = None
    if backfill:
        from shinchoku.commands.secretariat import secretariat

        sender = secretariat(data_dir, nats_url, token, ttl=BACKFILL_TOKEN_TTL)
        url, password, backfill_token = sender.url, sender.password, sender.token
    elif url is None:
        try:
            stack = Stack.load(data_dir)
            url, password = stack.nats_plain_url, stack.password(code.value)
        except StackNotFound as e:
            err.print(f"[red]{escape(str(e))}[/]")
            raise typer.Exit(1) from None
    published = (
        asyncio.run(publish_all(url, code, password, outcome.events, outcome, backfill_token=backfill_token))
        if outcome.events
        else 0
    )
    if outcome.errors:
        print_errors(outcome, file)
    failed_rows = len({e.line for e in outcome.errors})
    sent_as = f"backfilled report(s) of {code.value} as the secretariat" if backfill else f"report(s) as {code.value}"
    console.print(
        f"published {published} {sent_as}; {failed_rows} row(s) failed. Ingest decides each one: "
        f"rejections are listed at GET /rejections?agency={code.value} on the ingest service"
    )
    raise typer.Exit(1 if outcome.errors else 0)


def register(app: typer.Typer) -> None:
    app.command("import")(import_csv)
