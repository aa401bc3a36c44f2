"""Who may call each route of ingest and what each principal sees (DESIGN.md "Principals and access").

Declared here and nowhere else; the routes take these gates and call these narrowing functions:

| route | public | agency | secretariat | operator |
|---|---|---|---|---|
| `GET /events/{id}` | 401 | its own ids (another agency's: 404) | all | outcome and trace id, no message |
| `GET /rejections` | 401 | its own (another's: 403) | all | no payload, no message |
| `GET /metrics` | 401 | 403 | 403 | ✓ (`shinchoku_runtime.service`) |
| `GET /healthz`, `GET /livez` | ✓ | ✓ | ✓ | ✓ |

A rejection's `message` may quote the payload (a field's value), and a command's `principal` is a person's
name: the operator, who runs the platform but reads no agency's reports, sees neither.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from shinchoku_runtime.auth import Principal, Role, own_agency_filter, public, require

EVENT_READERS = require(
    Role.agency,
    Role.secretariat,
    Role.operator,
    note="agency: its own ids, another's answer 404; operator: outcome and trace id, no message or sender",
)
REJECTION_READERS = require(
    Role.agency,
    Role.secretariat,
    Role.operator,
    note="agency: its own only; operator: no payload and no message",
)
#: Readiness, for orchestrators and load balancers (they carry no token); it names no agency.
HEALTH = public(note="readiness, for orchestrators")

EventReader = Annotated[Principal, Depends(EVENT_READERS)]
RejectionReader = Annotated[Principal, Depends(REJECTION_READERS)]


def event_owner(principal: Principal, requested: str | None) -> tuple[bool, str | None]:
    """Whether `principal` may look the id up at all, and for which owner: the requested one (None: any), the
    agency's own code for an agency; an agency naming another owner may not (404, as for an unknown id)."""
    if principal.role is Role.agency:
        own = str(principal.agency)
        return requested in (None, own), own
    return True, requested


def rejections_owner(principal: Principal, requested: str | None) -> str | None:
    """The `agency` filter of `/rejections` for `principal`: an agency reads its own only (naming another: 403)."""
    return own_agency_filter(principal, requested, "rejections")


def sees_contents(principal: Principal) -> bool:
    """Whether `principal` may read what a message said (payload, messages quoting it, a command's sender)."""
    return principal.role in (Role.agency, Role.secretariat)
