"""One evaluation: the conditions that hold now against the alerts raised, as one unit of work.

The conditions come from the store's effective reports, the kept reviews and the catalog (`conditions`); the
transitions between what was raised and what holds are a pure diff (`transitions`); the alert rows and their
outbox entries are written in one transaction, each change guarded so that two replicas evaluating at once
cannot both raise or both resolve one occurrence (the loser rolls back and evaluates again).

Every condition belongs to one measure (`conditions`), so an evaluation may look at the measures a change touched
only (`only`): their reports, their alerts, the same rules. It answers what a full evaluation would for those
measures, provided the moment and the first quarter looked at are the same: `report_due`/`report_missing` look
from `since`, or, unset, from where all the reports start (`conditions.Start`), which a touched measure's report
can move earlier; then the evaluation says so (`widened`) and the caller evaluates everything.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from contracts.alerts import AlertState
from contracts.catalog import Measure
from contracts.periods import FiscalQuarter
from reporting import repository
from reporting.alerts import store
from reporting.alerts.conditions import AlertInputs, Condition, Start, conditions
from reporting.alerts.store import AlertRow, Conflict
from reporting.tables import to_micros

RAISED = AlertState.raised.value
RESOLVED = AlertState.resolved.value


@dataclass(frozen=True, slots=True)
class Change:
    before: AlertRow | None
    after: AlertRow


def raised_row(condition: Condition, *, occurrence: int, at_us: int) -> AlertRow:
    return AlertRow(
        alert_id=condition.alert_id,
        kind=condition.kind.value,
        agency=condition.agency,
        measure_id=condition.measure_id,
        fiscal_year=condition.fiscal_year,
        quarter=condition.quarter,
        target_index=condition.target_index,
        state=RAISED,
        occurrence=occurrence,
        raised_at_us=at_us,
        resolved_at_us=None,
        message_ja=condition.message_ja,
        message_en=condition.message_en,
        refs=json.dumps(list(condition.refs)),
    )


def transitions(existing: Mapping[str, AlertRow], holding: Mapping[str, Condition], *, at_us: int) -> list[Change]:
    """Raise what holds and is not raised (a new alert, or the next occurrence of a resolved one); resolve what
    is raised and no longer holds. Ordered by alert id, so every replica writes in one order."""
    changes = []
    for alert_id in sorted(holding.keys() | existing.keys()):
        row, condition = existing.get(alert_id), holding.get(alert_id)
        if condition is not None and row is None:
            changes.append(Change(None, raised_row(condition, occurrence=1, at_us=at_us)))
        elif condition is not None and row is not None and row.state == RESOLVED:
            changes.append(Change(row, raised_row(condition, occurrence=row.occurrence + 1, at_us=at_us)))
        elif condition is None and row is not None and row.state == RAISED:
            changes.append(Change(row, replace(row, state=RESOLVED, resolved_at_us=at_us)))
    return changes


@dataclass(frozen=True, slots=True)
class Evaluated:
    changes: Sequence[Change]
    conflict: bool = False
    #: Where all the reports start, as a full evaluation found (report_due/missing follow it when `since` is unset).
    start: Start | None = None
    #: A touched measure's reports move the first quarter looked at: evaluate every measure (nothing was written).
    widened: bool = False


def evaluate(
    engine: Engine,
    *,
    measures: Sequence[Measure],
    now: datetime,
    since: FiscalQuarter | None,
    due_days: int,
    only: Collection[str] | None = None,
    start: Start | None = None,
) -> Evaluated:
    """Evaluate the conditions at `now` and commit the raises and resolves with their outbox entries.

    `only`: the ids of the measures to look at (None: every measure, and every alert raised); `start`: where all
    the reports started at the last full evaluation (`Evaluated.start`), needed with `only` when `since` is unset.
    """
    wanted = None if only is None else sorted(set(only))
    with engine.connect() as conn:
        if wanted is None:
            reports = repository.all_effective(conn)
        else:
            reports = repository.effective_of_measures(conn, measure_ids=wanted)
        reviews = store.latest_reviews(conn)
    found = Start.of(reports)
    if wanted is None:
        start = found
    else:
        merged = found if start is None else start.merged(found)
        if since is None and (start is None or merged.first_quarter() != start.first_quarter()):
            return Evaluated((), start=start, widened=True)
        start = merged
        chosen = set(wanted)
        measures = [m for m in measures if m.id in chosen]
    holding = conditions(AlertInputs(measures, reports, reviews, now, since, due_days, start=start))
    try:
        with engine.begin() as conn:
            raised = store.all_alerts(conn) if wanted is None else store.alerts_for_measures(conn, wanted)
            changes = transitions(raised, holding, at_us=to_micros(now))
            store.insert_alerts(conn, [c.after for c in changes if c.before is None])
            for change in changes:
                if change.before is not None:
                    store.change_alert(conn, change.before, change.after)
            store.add_to_outbox(conn, [c.after for c in changes])
    except (Conflict, IntegrityError):
        return Evaluated((), conflict=True, start=start)
    return Evaluated(changes, start=start)
