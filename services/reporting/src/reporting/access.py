"""Who may call each route of reporting and what each principal sees (DESIGN.md "Principals and access").

Declared here and nowhere else; the routes take these gates and call these narrowing functions:

| route | public | agency | secretariat | operator |
|---|---|---|---|---|
| rollups, measure lists, history, year, dashboard of a **closed** quarter | ✓ without notes and `reporter` | ✓ | ✓ | ✓ without notes and `reporter` |
| the same for an **open** quarter, or `as_of` an earlier moment | 401 | ✓ | ✓ | 403 |
| `GET /alerts`, `/dashboard/alerts` | 401 | its own (another's: 403) | all | 403 |
| `GET /metrics` | 401 | 403 | 403 | ✓ (`shinchoku_runtime.service`) |
| `POST /dashboard/review` (the measure page's review form) | 401 | 403 | ✓ | 403 |
| `GET /healthz`, `GET /livez`, the dashboard's static files | ✓ | ✓ | ✓ | ✓ |

An open quarter's figures are live and unreviewed; a note may say anything and `reporter` is a person's name,
personal information that the platform never publishes. `as_of` asks for a quarter as it stood before it
was closed, i.e. unpublished figures, so it is for those who may read open quarters. The history of a measure
keeps, for the public, the closed quarters only.

Every figure the public reads is as of the closed quarters: a closed quarter's documents carry figures that
span quarters (a measure's latest status and quarter, the targets' observations, ratings and overdue counts,
the plan-wide target summary, the history's progress), so for those who do not read live figures the routes
ask `RollupQueries` for the public's view (`public_view`), computed from the closed quarters' reports only and
cached apart. What the public reads of a closed quarter does not change when an agency reports on an open one.

Whether a quarter is closed is the reporting cycle's (`RollupQueries.is_closed`); until a store knows of
closes, every quarter counts as open, which shows the public nothing rather than too much.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Protocol

from fastapi import Depends

from contracts.periods import FiscalQuarter
from reporting.schemas import HistoryItemOut, HistoryOut, LeadOut, MeasureItemOut, YearOut
from shinchoku_runtime.auth import Principal, Role, ensure, own_agency_filter, public, require

#: Those who read open quarters, notes and reporter names.
LIVE_READERS = frozenset({Role.agency, Role.secretariat})

READERS = public(
    note="closed quarters: anyone, notes and reporter names for agency and secretariat only; "
    "open quarters and as_of: agency, secretariat",
)
ALERT_READERS = require(Role.agency, Role.secretariat, note="agency: its own alerts only")
#: Readiness, liveness and the dashboard's CSS and JavaScript: anyone.
OPEN = public(note="no data of any agency")
#: The dashboard's pages: anyone; what they show is what the API shows the signed-in principal.
DASHBOARD = public(note="the API's rules, for the principal of the session")
#: The measure page's review form (`POST /dashboard/review`): the secretariat only, with the form's CSRF token;
#: ingest then admits the review by the secretariat's own bearer token, which the route passes on.
REVIEWERS = require(Role.secretariat, note="the dashboard's review form; CSRF-checked; published with the token")

Reader = Annotated[Principal, Depends(READERS)]
AlertReader = Annotated[Principal, Depends(ALERT_READERS)]
DashboardReader = Annotated[Principal, Depends(DASHBOARD)]


class QuarterClosure(Protocol):
    """Knows which quarters the secretariat has closed (`RollupQueries` of the reporting cycle)."""

    def is_closed(self, fiscal_year: int, quarter: int) -> bool: ...


def is_closed(store: object, quarter: FiscalQuarter) -> bool:
    """Whether `quarter` is closed, for a store that knows (else open: nothing is shown that should not be)."""
    check = getattr(store, "is_closed", None)
    return bool(check(quarter.fiscal_year, quarter.quarter)) if callable(check) else False


def sees_live(principal: Principal) -> bool:
    """Whether `principal` reads open quarters, notes and reporter names."""
    return principal.role in LIVE_READERS


def public_view(principal: Principal) -> bool:
    """Whether `principal` reads the public's view: figures computed from the closed quarters' reports only."""
    return not sees_live(principal)


def ensure_quarter(principal: Principal, store: object, quarter: FiscalQuarter, *, as_of: object = None) -> None:
    """401/403 unless `principal` may read `quarter` (as of `as_of`, when given)."""
    if sees_live(principal):
        return
    if as_of is not None:
        ensure(principal, LIVE_READERS, "a quarter as it stood at an earlier moment (as_of)")
    if not is_closed(store, quarter):
        ensure(principal, LIVE_READERS, f"{quarter.label} (a quarter not yet closed: live, unreviewed figures)")


def _lead(lead: LeadOut) -> LeadOut:
    """A lead without its free text: the note, the reporter's name, the secretariat's comment on a return."""
    comment = getattr(lead, "review_comment", None)
    if not (lead.note or lead.reporter or comment):
        return lead
    cleared: dict[str, None] = {"note": None, "reporter": None}
    if comment:
        cleared["review_comment"] = None
    return lead.model_copy(update=cleared)


def measure_items(principal: Principal, items: Iterable[MeasureItemOut]) -> list[MeasureItemOut]:
    """The items as `principal` may read them: without notes and reporter names unless it sees them."""
    if sees_live(principal):
        return list(items)
    return [item.model_copy(update={"leads": [_lead(x) for x in item.leads]}) for item in items]


def history(principal: Principal, store: object, doc: HistoryOut) -> HistoryOut:
    """A measure's history as `principal` may read it: all of it, or the closed quarters without names."""
    if sees_live(principal):
        return doc
    # `doc` is the public's view (`public_view`): its progress and targets count closed quarters only; an item
    # of an open quarter cannot be in it, and is dropped here too should one ever be.
    kept: list[HistoryItemOut] = [
        item.model_copy(update={"leads": [_lead(x) for x in item.leads]})
        for item in doc.items
        if is_closed(store, FiscalQuarter(item.fiscal_year, item.quarter))
    ]
    return doc.model_copy(update={"items": kept, "total": len(kept)})


def year(principal: Principal, store: object, doc: YearOut, *, as_of: object = None) -> YearOut:
    """A fiscal year as `principal` may read it: all four quarters, or the closed ones."""
    if sees_live(principal):
        return doc
    if as_of is not None:
        ensure(principal, LIVE_READERS, "a year as it stood at an earlier moment (as_of)")
    kept = [q for q in doc.quarters if is_closed(store, FiscalQuarter(q.fiscal_year, q.quarter))]
    return doc.model_copy(update={"quarters": kept})


def alerts_owner(principal: Principal, requested: str | None) -> str | None:
    """The `agency` filter of `/alerts` for `principal`: an agency reads its own only (naming another: 403)."""
    return own_agency_filter(principal, requested, "alerts")
