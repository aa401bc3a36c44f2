"""One evaluation: the conditions that hold now against the alerts raised, as one unit of work.

The conditions come from the store's effective reports, the kept reviews and the catalog (`conditions`); the
transitions between what was raised and what holds are a pure diff (`transitions`); the alert rows and their
outbox entries are written in one transaction, each change guarded so that two replicas evaluating at once
cannot both raise or both resolve one occurrence (the loser rolls back and evaluates again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from contracts.alerts import AlertState
from contracts.catalog import Measure
from contracts.periods import FiscalQuarter
from reporting import repository
from reporting.alerts import store
from reporting.alerts.conditions import AlertInputs, Condition, conditions
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


def evaluate(
    engine: Engine,
    *,
    measures: Sequence[Measure],
    now: datetime,
    since: FiscalQuarter | None,
    due_days: int,
) -> Evaluated:
    """Evaluate the conditions at `now` and commit the raises and resolves with their outbox entries."""
    with engine.connect() as conn:
        reports = repository.all_effective(conn)
        reviews = store.latest_reviews(conn)
    holding = conditions(AlertInputs(measures, reports, reviews, now, since, due_days))
    try:
        with engine.begin() as conn:
            changes = transitions(store.all_alerts(conn), holding, at_us=to_micros(now))
            for change in changes:
                if change.before is None:
                    store.insert_alert(conn, change.after)
                else:
                    store.change_alert(conn, change.before, change.after)
                store.add_to_outbox(conn, change.after)
    except (Conflict, IntegrityError):
        return Evaluated((), conflict=True)
    return Evaluated(changes)
